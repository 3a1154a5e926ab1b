//! Attestation key algorithms: the key types and signature schemes that
//! quotes are signed with, and the choices that [`AkAlgorithm`] offers for
//! creating an attestation key.

use std::fmt;

use imalog_core::HashAlgorithm;

use crate::marshal::{TPM_ALG_ECDSA, TPM_ALG_RSAPSS, TPM_ALG_RSASSA};

/// The attestation key algorithm: key type and size, signature scheme and
/// hash, and the key's name algorithm.
///
/// Keys of 2048-bit RSA and P-256 use SHA-256 throughout, and keys of
/// 3072-bit RSA and P-384 use SHA-384, both for signing and as the name
/// algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AkAlgorithm {
    /// ECC NIST P-256 with ECDSA over SHA-256.
    #[default]
    EccP256,
    /// RSA 2048 with RSASSA-PKCS1-v1_5 over SHA-256.
    Rsa2048,
    /// ECC NIST P-384 with ECDSA over SHA-384.
    EccP384,
    /// RSA 2048 with RSASSA-PSS over SHA-256.
    Rsa2048Pss,
    /// RSA 3072 with RSASSA-PKCS1-v1_5 over SHA-384.
    Rsa3072,
    /// RSA 3072 with RSASSA-PSS over SHA-384.
    Rsa3072Pss,
}

impl AkAlgorithm {
    /// Every algorithm.
    pub const ALL: [AkAlgorithm; 6] = [
        AkAlgorithm::EccP256,
        AkAlgorithm::Rsa2048,
        AkAlgorithm::EccP384,
        AkAlgorithm::Rsa2048Pss,
        AkAlgorithm::Rsa3072,
        AkAlgorithm::Rsa3072Pss,
    ];

    /// Returns the key type and size.
    pub const fn key_type(self) -> KeyType {
        match self {
            AkAlgorithm::EccP256 => KeyType::EccP256,
            AkAlgorithm::EccP384 => KeyType::EccP384,
            AkAlgorithm::Rsa2048 | AkAlgorithm::Rsa2048Pss => KeyType::Rsa2048,
            AkAlgorithm::Rsa3072 | AkAlgorithm::Rsa3072Pss => KeyType::Rsa3072,
        }
    }

    /// Returns the signature scheme and its hash.
    pub const fn signing_scheme(self) -> SigningScheme {
        let hash = self.name_algorithm();
        let scheme = match self {
            AkAlgorithm::EccP256 | AkAlgorithm::EccP384 => SignatureScheme::Ecdsa,
            AkAlgorithm::Rsa2048 | AkAlgorithm::Rsa3072 => SignatureScheme::Rsassa,
            AkAlgorithm::Rsa2048Pss | AkAlgorithm::Rsa3072Pss => SignatureScheme::Rsapss,
        };
        SigningScheme { scheme, hash }
    }

    /// Returns the name algorithm of the key (`nameAlg` of its
    /// `TPMT_PUBLIC`).
    pub const fn name_algorithm(self) -> HashAlgorithm {
        match self {
            AkAlgorithm::EccP256 | AkAlgorithm::Rsa2048 | AkAlgorithm::Rsa2048Pss => HashAlgorithm::Sha256,
            AkAlgorithm::EccP384 | AkAlgorithm::Rsa3072 | AkAlgorithm::Rsa3072Pss => HashAlgorithm::Sha384,
        }
    }

    /// Finds the algorithm with this key type and signing scheme.
    pub fn from_parts(key_type: KeyType, scheme: SigningScheme) -> Option<Self> {
        Self::ALL.into_iter().find(|algorithm| algorithm.key_type() == key_type && algorithm.signing_scheme() == scheme)
    }
}

impl fmt::Display for AkAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key_type(), self.signing_scheme())
    }
}

/// The type and size of an attestation key that quote verification
/// implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// ECC on NIST P-256 (`TPM_ECC_NIST_P256`).
    EccP256,
    /// ECC on NIST P-384 (`TPM_ECC_NIST_P384`).
    EccP384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
}

impl KeyType {
    /// True for RSA keys, false for ECC keys.
    pub const fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EccP256 => "ECC NIST P-256",
            KeyType::EccP384 => "ECC NIST P-384",
            KeyType::Rsa2048 => "RSA 2048",
            KeyType::Rsa3072 => "RSA 3072",
        })
    }
}

/// A signature scheme that quote verification implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// RSASSA-PKCS1-v1_5 (`TPM_ALG_RSASSA`).
    Rsassa,
    /// RSASSA-PSS (`TPM_ALG_RSAPSS`).
    Rsapss,
    /// ECDSA (`TPM_ALG_ECDSA`).
    Ecdsa,
}

impl SignatureScheme {
    /// Returns the TPM_ALG_ID of the scheme.
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            SignatureScheme::Rsassa => TPM_ALG_RSASSA,
            SignatureScheme::Rsapss => TPM_ALG_RSAPSS,
            SignatureScheme::Ecdsa => TPM_ALG_ECDSA,
        }
    }

    /// True when keys of `key_type` can make signatures of this scheme.
    pub const fn fits(self, key_type: KeyType) -> bool {
        match self {
            SignatureScheme::Rsassa | SignatureScheme::Rsapss => key_type.is_rsa(),
            SignatureScheme::Ecdsa => !key_type.is_rsa(),
        }
    }
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureScheme::Rsassa => "RSASSA",
            SignatureScheme::Rsapss => "RSAPSS",
            SignatureScheme::Ecdsa => "ECDSA",
        })
    }
}

/// A signature scheme with the hash algorithm it signs digests of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SigningScheme {
    /// The signature scheme.
    pub scheme: SignatureScheme,
    /// The hash of the signed data.
    pub hash: HashAlgorithm,
}

impl fmt::Display for SigningScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.scheme, self.hash.tpm2_tools_name().to_ascii_uppercase())
    }
}

/// Looks up a hash algorithm that signatures may use by its TPM_ALG_ID.
pub(crate) fn signature_hash(id: u16) -> Option<HashAlgorithm> {
    match HashAlgorithm::from_tpm_alg_id(id)? {
        hash @ (HashAlgorithm::Sha256 | HashAlgorithm::Sha384 | HashAlgorithm::Sha512) => Some(hash),
        _ => None,
    }
}

/// The names of the hashes that [`signature_hash`] accepts, for errors.
pub(crate) const SUPPORTED_SIGNATURE_HASHES: &str = "TPM_ALG_SHA256, TPM_ALG_SHA384 or TPM_ALG_SHA512";
