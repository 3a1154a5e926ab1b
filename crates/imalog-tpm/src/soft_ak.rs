//! The software attestation key of [`crate::SoftTpm`]: derived from a seed,
//! with the public area a TPM gives an attestation key, and signing in the
//! TPM's signature formats.
//!
//! NOTE: this key exists for emulation and tests. Its private key lives in
//! ordinary memory, and the README of rsa 0.9.10 states that its private-key
//! operations are open to the Marvin timing attack (RUSTSEC-2023-0071). It
//! must not stand in for a TPM's key.

use std::fmt;
use std::io::Read;

use p256::ecdsa::signature::hazmat::PrehashSigner;
use rsa::rand_core::{CryptoRng, RngCore};
use rsa::traits::PublicKeyParts;
use sha2::Digest as _;

use crate::algorithm::{KeyType, SignatureScheme, SigningScheme};
use crate::public::{marshal_ak_public_area, AkPublic, Hierarchy};
use crate::signature::TpmSignature;
use crate::verify::{pkcs1v15, pss};
use crate::{AkAlgorithm, TpmError};

/// Bytes of the random seed of a key made without a caller's seed.
const RANDOM_SEED_SIZE: usize = 32;

/// An attestation key with its private part.
pub(crate) struct SoftAk {
    algorithm: AkAlgorithm,
    private: PrivateKey,
    public: AkPublic,
    /// The qualified name of the key as a primary key of the endorsement
    /// hierarchy, where TssTpm creates its attestation key too.
    qualified_name: Vec<u8>,
    /// Key of the generator of RSAPSS salts, derived from the seed.
    salt_key: [u8; 32],
    /// The `unique` field of the public area: the RSA modulus, or the ECC x
    /// and y coordinates. Only tests read it, to build other public areas.
    #[cfg_attr(not(test), allow(dead_code))]
    unique: Vec<Vec<u8>>,
}

enum PrivateKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl SoftAk {
    /// Derives the key of `algorithm` from `seed`. The same seed gives the
    /// same key with the same versions of the p256, p384 and rsa crates.
    pub(crate) fn derive(algorithm: AkAlgorithm, seed: &[u8]) -> Result<Self, TpmError> {
        let label = format!("imalog SoftTpm attestation key {algorithm:?}");
        let key_seed: [u8; 32] =
            sha2::Sha256::new().chain_update(label.as_bytes()).chain_update(seed).finalize().into();
        let salt_key: [u8; 32] =
            sha2::Sha256::new().chain_update(b"RSAPSS salt").chain_update(key_seed).finalize().into();
        let mut rng = SeededRng::new(key_seed);

        let private = match algorithm.key_type() {
            KeyType::EccP256 => {
                PrivateKey::P256(derive_ecc(&mut rng, 32, |bytes| p256::ecdsa::SigningKey::from_slice(bytes).ok()))
            }
            KeyType::EccP384 => {
                PrivateKey::P384(derive_ecc(&mut rng, 48, |bytes| p384::ecdsa::SigningKey::from_slice(bytes).ok()))
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 => {
                let bits = if algorithm.key_type() == KeyType::Rsa2048 { 2048 } else { 3072 };
                let key = rsa::RsaPrivateKey::new(&mut rng, bits).map_err(|error| {
                    TpmError::Device(format!("generating the {algorithm} attestation key: {error}"))
                })?;
                PrivateKey::Rsa(Box::new(key))
            }
        };

        // Uncompressed SEC1 points are 0x04, then x and y.
        let unique = match &private {
            PrivateKey::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                vec![point.as_bytes()[1..33].to_vec(), point.as_bytes()[33..65].to_vec()]
            }
            PrivateKey::P384(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                vec![point.as_bytes()[1..49].to_vec(), point.as_bytes()[49..97].to_vec()]
            }
            PrivateKey::Rsa(key) => vec![key.n().to_bytes_be()],
        };
        let unique_parts: Vec<&[u8]> = unique.iter().map(Vec::as_slice).collect();
        let public_area = marshal_ak_public_area(algorithm, &unique_parts);
        let public = AkPublic::parse(&public_area)
            .map_err(|error| TpmError::Device(format!("the {algorithm} attestation key is invalid: {error}")))?;
        let qualified_name = public.primary_qualified_name(Hierarchy::Endorsement);
        Ok(SoftAk { algorithm, private, public, qualified_name, salt_key, unique })
    }

    /// Derives a key of `algorithm` from a random seed read from
    /// `/dev/urandom`.
    pub(crate) fn random(algorithm: AkAlgorithm) -> Result<Self, TpmError> {
        let mut seed = [0u8; RANDOM_SEED_SIZE];
        std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut seed)).map_err(|error| {
            TpmError::Device(format!("cannot read /dev/urandom for the attestation key seed: {error}"))
        })?;
        Self::derive(algorithm, &seed)
    }

    pub(crate) fn algorithm(&self) -> AkAlgorithm {
        self.algorithm
    }

    pub(crate) fn public(&self) -> &AkPublic {
        &self.public
    }

    pub(crate) fn qualified_name(&self) -> &[u8] {
        &self.qualified_name
    }

    /// Signs `message` with RSAPSS and a salt of `salt_size` bytes.
    #[cfg(test)]
    pub(crate) fn sign_pss_with_salt_size(
        &self,
        hash: imalog_core::HashAlgorithm,
        salt_size: usize,
        message: &[u8],
    ) -> Result<TpmSignature, TpmError> {
        let PrivateKey::Rsa(key) = &self.private else {
            return Err(TpmError::Unsupported("RSAPSS with an ECC key"));
        };
        let digest = hash.digest(message);
        let mut rng = SeededRng::new([7; 32]);
        let signature = key
            .sign_with_rng(&mut rng, pss(hash, salt_size), digest.as_bytes())
            .map_err(|error| TpmError::Device(error.to_string()))?;
        Ok(TpmSignature::rsa(SigningScheme { scheme: SignatureScheme::Rsapss, hash }, signature))
    }

    /// Marshals the key's public area with the fields of `template`, for
    /// tests of keys that differ from an attestation key.
    #[cfg(test)]
    pub(crate) fn public_area_with(&self, template: crate::public::PublicTemplate) -> Vec<u8> {
        let parts: Vec<&[u8]> = self.unique.iter().map(Vec::as_slice).collect();
        template.marshal(&parts)
    }

    /// Signs `message` with the key's scheme.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<TpmSignature, TpmError> {
        self.sign_with(self.algorithm.signing_scheme(), message)
    }

    /// Signs `message` with `scheme`, which must fit the key type; RSAPSS
    /// salts are as long as the digest, as swtpm makes them.
    pub(crate) fn sign_with(&self, scheme: SigningScheme, message: &[u8]) -> Result<TpmSignature, TpmError> {
        let failed = |error: &dyn fmt::Display| {
            TpmError::Device(format!("signing with the {} attestation key: {error}", self.algorithm))
        };
        let digest = scheme.hash.digest(message);
        let digest = digest.as_bytes();
        match (&self.private, scheme.scheme) {
            (PrivateKey::P256(key), SignatureScheme::Ecdsa) => {
                let signature: p256::ecdsa::Signature = key.sign_prehash(digest).map_err(|e| failed(&e))?;
                let (r, s) = signature.split_bytes();
                Ok(TpmSignature::ecdsa(scheme, r.to_vec(), s.to_vec()))
            }
            (PrivateKey::P384(key), SignatureScheme::Ecdsa) => {
                let signature: p384::ecdsa::Signature = key.sign_prehash(digest).map_err(|e| failed(&e))?;
                let (r, s) = signature.split_bytes();
                Ok(TpmSignature::ecdsa(scheme, r.to_vec(), s.to_vec()))
            }
            (PrivateKey::Rsa(key), SignatureScheme::Rsassa) => {
                let signature = key.sign(pkcs1v15(scheme.hash), digest).map_err(|e| failed(&e))?;
                Ok(TpmSignature::rsa(scheme, signature))
            }
            (PrivateKey::Rsa(key), SignatureScheme::Rsapss) => {
                let salt_seed: [u8; 32] =
                    sha2::Sha256::new().chain_update(self.salt_key).chain_update(digest).finalize().into();
                let mut rng = SeededRng::new(salt_seed);
                let padding = pss(scheme.hash, scheme.hash.digest_size());
                let signature = key.sign_with_rng(&mut rng, padding, digest).map_err(|e| failed(&e))?;
                Ok(TpmSignature::rsa(scheme, signature))
            }
            _ => Err(failed(&format_args!("scheme {scheme} does not fit the key"))),
        }
    }
}

impl fmt::Debug for SoftAk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftAk")
            .field("algorithm", &self.algorithm)
            .field("name", &self.public.name().iter().map(|byte| format!("{byte:02x}")).collect::<String>())
            .finish_non_exhaustive()
    }
}

/// Draws candidate private scalars of `size` bytes until `parse` accepts
/// one (a scalar in 1..n), which for P-256 and P-384 fails with a
/// probability below 2^-32 per draw.
fn derive_ecc<K>(rng: &mut SeededRng, size: usize, parse: impl Fn(&[u8]) -> Option<K>) -> K {
    let mut candidate = vec![0u8; size];
    loop {
        rng.fill_bytes(&mut candidate);
        if let Some(key) = parse(&candidate) {
            return key;
        }
    }
}

/// A deterministic generator: SHA-256 of a 32-byte key and a block counter,
/// so that a seed fixes the key and RSAPSS salts.
struct SeededRng {
    key: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRng {
    fn new(key: [u8; 32]) -> Self {
        SeededRng { key, counter: 0, block: [0; 32], used: 32 }
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        for byte in destination {
            if self.used == self.block.len() {
                self.block = sha2::Sha256::new()
                    .chain_update(self.key)
                    .chain_update(self.counter.to_be_bytes())
                    .finalize()
                    .into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, destination: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(destination);
        Ok(())
    }
}

impl CryptoRng for SeededRng {}
