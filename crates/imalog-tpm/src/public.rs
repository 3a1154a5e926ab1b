//! The public area of an attestation key: parsing a marshalled
//! `TPM2B_PUBLIC` or `TPMT_PUBLIC` into a verifying key, and the key's Name
//! and qualified names, which the swtpm tests check against swtpm 0.7.1.

use imalog_core::HashAlgorithm;

use crate::algorithm::{signature_hash, KeyType, SignatureScheme, SigningScheme, SUPPORTED_SIGNATURE_HASHES};
use crate::marshal::{
    MarshalError, Reader, Writer, TPM_ALG_ECC, TPM_ALG_ECDSA, TPM_ALG_NULL, TPM_ALG_RSA, TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA, TPM_ECC_NIST_P256, TPM_ECC_NIST_P384,
};
use crate::verify::QuoteError;
use crate::AkAlgorithm;

/// `TPMA_OBJECT` bits of an attestation key.
pub mod attributes {
    /// `fixedTPM`: the key cannot be duplicated.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// `fixedParent`: the key cannot be moved to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// `sensitiveDataOrigin`: the TPM generated the private key.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// `userWithAuth`: the password authorizes use of the key.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// `restricted`: the key signs only digests of data the TPM made or
    /// checked, so it cannot sign a forged `TPMS_ATTEST`.
    pub const RESTRICTED: u32 = 1 << 16;
    /// `decrypt`.
    pub const DECRYPT: u32 = 1 << 17;
    /// `sign`.
    pub const SIGN: u32 = 1 << 18;
    /// The attributes that [`crate::SoftTpm`] and `TssTpm` give their
    /// attestation keys: `fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign`.
    pub const ATTESTATION_KEY: u32 =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
}

/// Exponent of RSA keys whose `exponent` field is 0, the TPM's default.
const DEFAULT_RSA_EXPONENT: u32 = 65_537;

/// A hierarchy that primary keys are created in, whose handle is the
/// qualified name that a primary key's qualified name derives from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hierarchy {
    /// `TPM_RH_OWNER`, the storage hierarchy.
    Owner,
    /// `TPM_RH_ENDORSEMENT`.
    Endorsement,
    /// `TPM_RH_PLATFORM`.
    Platform,
    /// `TPM_RH_NULL`, whose keys do not survive a TPM reset.
    Null,
}

impl Hierarchy {
    /// Every hierarchy.
    pub const ALL: [Hierarchy; 4] = [Hierarchy::Owner, Hierarchy::Endorsement, Hierarchy::Platform, Hierarchy::Null];

    /// Returns the permanent handle of the hierarchy (`TPM_RH_*`).
    pub const fn handle(self) -> u32 {
        match self {
            Hierarchy::Owner => 0x4000_0001,
            Hierarchy::Null => 0x4000_0007,
            Hierarchy::Endorsement => 0x4000_000b,
            Hierarchy::Platform => 0x4000_000c,
        }
    }
}

/// The public key that verifies signatures.
#[derive(Clone, Debug)]
pub(crate) enum VerifyingKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

/// The parsed public area of an attestation key.
#[derive(Clone, Debug)]
pub struct AkPublic {
    /// The marshalled `TPMT_PUBLIC`, which the Name is computed over.
    public_area: Vec<u8>,
    name_algorithm: HashAlgorithm,
    object_attributes: u32,
    key_type: KeyType,
    /// `None` when the key's scheme is `TPM_ALG_NULL`, so that each
    /// signature chooses its scheme.
    scheme: Option<SigningScheme>,
    pub(crate) key: VerifyingKey,
    name: Vec<u8>,
}

impl AkPublic {
    /// Parses an attestation key from a marshalled `TPM2B_PUBLIC`, or from a
    /// bare `TPMT_PUBLIC` when the input starts with `TPM_ALG_RSA` or
    /// `TPM_ALG_ECC` (no `TPM2B_PUBLIC` of a supported key is that short).
    ///
    /// Accepted are ECC keys on NIST P-256 and P-384 with scheme ECDSA or
    /// NULL, and RSA keys of 2048 and 3072 bits with scheme RSASSA, RSAPSS
    /// or NULL, with SHA-256, SHA-384 or SHA-512 as the scheme's hash. The
    /// key must be a restricted signing key, the only kind whose quotes
    /// prove that the TPM made the attest.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut outer = Reader::new(bytes, "TPM2B_PUBLIC");
        let first = outer.u16("size").map_err(QuoteError::MalformedKey)?;
        if first == TPM_ALG_RSA || first == TPM_ALG_ECC {
            return Self::parse_area(bytes, 0);
        }
        outer.take(usize::from(first), "publicArea").map_err(QuoteError::MalformedKey)?;
        outer.finish().map_err(QuoteError::MalformedKey)?;
        // `finish` checked that the area ends the input, so the nested
        // reader stops where the area does.
        Self::parse_area(bytes, 2)
    }

    /// Parses the `TPMT_PUBLIC` in `bytes[start..]`.
    fn parse_area(bytes: &[u8], start: usize) -> Result<Self, QuoteError> {
        let mut reader = Reader::nested(bytes, start, "TPMT_PUBLIC");
        let unsupported = |field: &'static str, offset: usize, value: u32, supported: &'static str| {
            QuoteError::UnsupportedAlgorithm { structure: "TPMT_PUBLIC", field, offset, value, supported }
        };

        let type_offset = reader.offset();
        let public_type = reader.u16("type").map_err(QuoteError::MalformedKey)?;
        if public_type != TPM_ALG_RSA && public_type != TPM_ALG_ECC {
            return Err(unsupported("type", type_offset, public_type.into(), "TPM_ALG_RSA or TPM_ALG_ECC"));
        }

        let name_offset = reader.offset();
        let name_id = reader.u16("nameAlg").map_err(QuoteError::MalformedKey)?;
        let name_algorithm = HashAlgorithm::from_tpm_alg_id(name_id).ok_or_else(|| {
            unsupported("nameAlg", name_offset, name_id.into(), "a hash algorithm that imalog implements")
        })?;

        let attributes_offset = reader.offset();
        let object_attributes = reader.u32("objectAttributes").map_err(QuoteError::MalformedKey)?;
        check_attributes(&reader, attributes_offset, object_attributes).map_err(QuoteError::MalformedKey)?;
        reader.sized("authPolicy").map_err(QuoteError::MalformedKey)?;

        let symmetric_offset = reader.offset();
        let symmetric = reader.u16("parameters.symmetric.algorithm").map_err(QuoteError::MalformedKey)?;
        if symmetric != TPM_ALG_NULL {
            let reason = "a signing key has no symmetric algorithm (TPM_ALG_NULL)";
            let field = "parameters.symmetric.algorithm";
            return Err(QuoteError::MalformedKey(reader.invalid(field, symmetric_offset, symmetric.into(), reason)));
        }
        let scheme = read_key_scheme(&mut reader, public_type == TPM_ALG_RSA)?;

        let (key_type, key) =
            if public_type == TPM_ALG_RSA { read_rsa_key(&mut reader)? } else { read_ecc_key(&mut reader)? };
        reader.finish().map_err(QuoteError::MalformedKey)?;

        let public_area = bytes[start..].to_vec();
        let name = compute_name(name_algorithm, &public_area);
        Ok(AkPublic { public_area, name_algorithm, object_attributes, key_type, scheme, key, name })
    }

    /// Returns the key's Name: its name algorithm's TPM_ALG_ID, then the hash
    /// of the marshalled `TPMT_PUBLIC` with that algorithm.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Returns the marshalled `TPMT_PUBLIC`.
    pub fn public_area(&self) -> &[u8] {
        &self.public_area
    }

    /// Marshals the key as `TPM2B_PUBLIC`.
    pub fn to_tpm2b(&self) -> Vec<u8> {
        let mut writer = Writer::default();
        writer.sized(&self.public_area);
        writer.bytes
    }

    /// Returns the name algorithm (`nameAlg`).
    pub fn name_algorithm(&self) -> HashAlgorithm {
        self.name_algorithm
    }

    /// Returns the `TPMA_OBJECT` attributes, whose bits [`attributes`] names.
    pub fn object_attributes(&self) -> u32 {
        self.object_attributes
    }

    /// Returns the key type and size.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Returns the signing scheme the key is bound to, or `None` for a key
    /// whose scheme is `TPM_ALG_NULL`, which signs with the scheme each
    /// signature names.
    pub fn signing_scheme(&self) -> Option<SigningScheme> {
        self.scheme
    }

    /// Returns the [`AkAlgorithm`] of the key, or `None` when no variant
    /// describes its key type, scheme and name algorithm, as for a key whose
    /// scheme is `TPM_ALG_NULL`.
    pub fn algorithm(&self) -> Option<AkAlgorithm> {
        let algorithm = AkAlgorithm::from_parts(self.key_type, self.scheme?)?;
        (algorithm.name_algorithm() == self.name_algorithm).then_some(algorithm)
    }

    /// Computes the key's qualified name under a parent whose qualified name
    /// is `parent_qualified_name`: nameAlg || H_nameAlg(parent QN || Name).
    /// The `qualifiedSigner` of an attest is the signing key's qualified
    /// name, as the swtpm tests check.
    pub fn qualified_name(&self, parent_qualified_name: &[u8]) -> Vec<u8> {
        let digest = self.name_algorithm.digest_parts(&[parent_qualified_name, &self.name]);
        let mut qualified = self.name_algorithm.tpm_alg_id().to_be_bytes().to_vec();
        qualified.extend_from_slice(digest.as_bytes());
        qualified
    }

    /// Computes the qualified name of the key as a primary key of
    /// `hierarchy`, whose own qualified name is its handle.
    pub fn primary_qualified_name(&self, hierarchy: Hierarchy) -> Vec<u8> {
        self.qualified_name(&hierarchy.handle().to_be_bytes())
    }

    /// Reports whether `qualified_signer`, the `qualifiedSigner` of an
    /// attest, names this key: its Name, or its qualified name as a primary
    /// key of any hierarchy. The qualified name of a key below another key
    /// depends on that parent, so check it with [`AkPublic::qualified_name`].
    pub fn is_signer(&self, qualified_signer: &[u8]) -> bool {
        qualified_signer == self.name.as_slice()
            || Hierarchy::ALL.iter().any(|&hierarchy| self.primary_qualified_name(hierarchy) == qualified_signer)
    }
}

/// Computes a Name: nameAlg || H_nameAlg(public area).
pub(crate) fn compute_name(name_algorithm: HashAlgorithm, public_area: &[u8]) -> Vec<u8> {
    let mut name = name_algorithm.tpm_alg_id().to_be_bytes().to_vec();
    name.extend_from_slice(name_algorithm.digest(public_area).as_bytes());
    name
}

/// Checks that the key is a restricted signing key.
fn check_attributes(reader: &Reader<'_>, offset: usize, value: u32) -> Result<(), MarshalError> {
    use attributes::{DECRYPT, RESTRICTED, SIGN};
    let reason = if value & SIGN == 0 {
        "an attestation key has the sign attribute"
    } else if value & RESTRICTED == 0 {
        "an attestation key has the restricted attribute, without which it could sign a forged attest"
    } else if value & DECRYPT != 0 {
        "a restricted signing key lacks the decrypt attribute"
    } else {
        return Ok(());
    };
    Err(reader.invalid("objectAttributes", offset, value.into(), reason))
}

/// Reads a `TPMT_RSA_SCHEME` or `TPMT_ECC_SCHEME` of a signing key.
fn read_key_scheme(reader: &mut Reader<'_>, rsa: bool) -> Result<Option<SigningScheme>, QuoteError> {
    let offset = reader.offset();
    let id = reader.u16("parameters.scheme.scheme").map_err(QuoteError::MalformedKey)?;
    let scheme = match id {
        TPM_ALG_NULL => return Ok(None),
        TPM_ALG_RSASSA if rsa => SignatureScheme::Rsassa,
        TPM_ALG_RSAPSS if rsa => SignatureScheme::Rsapss,
        TPM_ALG_ECDSA if !rsa => SignatureScheme::Ecdsa,
        _ => {
            let supported =
                if rsa { "TPM_ALG_RSASSA, TPM_ALG_RSAPSS or TPM_ALG_NULL" } else { "TPM_ALG_ECDSA or TPM_ALG_NULL" };
            return Err(QuoteError::UnsupportedAlgorithm {
                structure: "TPMT_PUBLIC",
                field: "parameters.scheme.scheme",
                offset,
                value: id.into(),
                supported,
            });
        }
    };
    let hash_offset = reader.offset();
    let hash_id = reader.u16("parameters.scheme.details.hashAlg").map_err(QuoteError::MalformedKey)?;
    let hash = signature_hash(hash_id).ok_or(QuoteError::UnsupportedAlgorithm {
        structure: "TPMT_PUBLIC",
        field: "parameters.scheme.details.hashAlg",
        offset: hash_offset,
        value: hash_id.into(),
        supported: SUPPORTED_SIGNATURE_HASHES,
    })?;
    Ok(Some(SigningScheme { scheme, hash }))
}

/// Reads `keyBits` and `exponent` of `TPMS_RSA_PARMS`, then the modulus in
/// `unique`.
fn read_rsa_key(reader: &mut Reader<'_>) -> Result<(KeyType, VerifyingKey), QuoteError> {
    let bits_offset = reader.offset();
    let bits = reader.u16("parameters.keyBits").map_err(QuoteError::MalformedKey)?;
    let key_type = match bits {
        2048 => KeyType::Rsa2048,
        3072 => KeyType::Rsa3072,
        _ => {
            return Err(QuoteError::UnsupportedAlgorithm {
                structure: "TPMT_PUBLIC",
                field: "parameters.keyBits",
                offset: bits_offset,
                value: bits.into(),
                supported: "2048 or 3072",
            })
        }
    };
    let exponent_offset = reader.offset();
    let exponent = match reader.u32("parameters.exponent").map_err(QuoteError::MalformedKey)? {
        0 => DEFAULT_RSA_EXPONENT,
        other => other,
    };
    let modulus_offset = reader.offset();
    let modulus = reader.sized("unique.rsa").map_err(QuoteError::MalformedKey)?;
    let modulus_value = rsa::BigUint::from_bytes_be(modulus);
    if modulus.len() != usize::from(bits / 8) || modulus_value.bits() != usize::from(bits) {
        let reason = "the modulus has exactly keyBits bits";
        return Err(QuoteError::MalformedKey(reader.invalid(
            "unique.rsa.size",
            modulus_offset,
            modulus.len() as u64,
            reason,
        )));
    }
    let key = rsa::RsaPublicKey::new(modulus_value, exponent.into()).map_err(|_| {
        let reason = "not an RSA public key: the exponent is even or out of range, or the modulus is even";
        QuoteError::MalformedKey(reader.invalid("parameters.exponent", exponent_offset, exponent.into(), reason))
    })?;
    Ok((key_type, VerifyingKey::Rsa(key)))
}

/// Reads `curveID` and `kdf` of `TPMS_ECC_PARMS`, then the point in
/// `unique`.
fn read_ecc_key(reader: &mut Reader<'_>) -> Result<(KeyType, VerifyingKey), QuoteError> {
    let curve_offset = reader.offset();
    let curve = reader.u16("parameters.curveID").map_err(QuoteError::MalformedKey)?;
    let key_type = match curve {
        TPM_ECC_NIST_P256 => KeyType::EccP256,
        TPM_ECC_NIST_P384 => KeyType::EccP384,
        _ => {
            return Err(QuoteError::UnsupportedAlgorithm {
                structure: "TPMT_PUBLIC",
                field: "parameters.curveID",
                offset: curve_offset,
                value: curve.into(),
                supported: "TPM_ECC_NIST_P256 or TPM_ECC_NIST_P384",
            })
        }
    };
    let kdf_offset = reader.offset();
    let kdf = reader.u16("parameters.kdf.scheme").map_err(QuoteError::MalformedKey)?;
    if kdf != TPM_ALG_NULL {
        let reason = "a signing key has no key derivation function (TPM_ALG_NULL)";
        return Err(QuoteError::MalformedKey(reader.invalid("parameters.kdf.scheme", kdf_offset, kdf.into(), reason)));
    }

    let size = if key_type == KeyType::EccP256 { 32 } else { 48 };
    let x_offset = reader.offset();
    let x = read_coordinate(reader, "unique.ecc.x", size)?;
    let y = read_coordinate(reader, "unique.ecc.y", size)?;
    let mut sec1 = Vec::with_capacity(1 + 2 * size);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);

    let not_on_curve = || {
        let reason = "the point (x, y) is not on the curve";
        QuoteError::MalformedKey(reader.invalid("unique.ecc", x_offset, size as u64, reason))
    };
    let key = match key_type {
        KeyType::EccP256 => {
            VerifyingKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| not_on_curve())?)
        }
        _ => VerifyingKey::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| not_on_curve())?),
    };
    Ok((key_type, key))
}

/// Reads an ECC coordinate of at most `size` bytes and pads it on the left
/// to `size` bytes, because the TPM may drop leading zero bytes.
fn read_coordinate(reader: &mut Reader<'_>, field: &'static str, size: usize) -> Result<Vec<u8>, QuoteError> {
    let offset = reader.offset();
    let bytes = reader.sized(field).map_err(QuoteError::MalformedKey)?;
    if bytes.is_empty() || bytes.len() > size {
        let reason = "a coordinate has between 1 and the curve's size in bytes";
        return Err(QuoteError::MalformedKey(reader.invalid(field, offset, bytes.len() as u64, reason)));
    }
    let mut padded = vec![0u8; size - bytes.len()];
    padded.extend_from_slice(bytes);
    Ok(padded)
}

/// Marshals the `TPMT_PUBLIC` of an attestation key with the attributes of
/// [`attributes::ATTESTATION_KEY`], no authorization policy and the scheme
/// and name algorithm of `algorithm`. `unique` is the RSA modulus, or the
/// ECC x and y coordinates.
pub(crate) fn marshal_ak_public_area(algorithm: AkAlgorithm, unique: &[&[u8]]) -> Vec<u8> {
    let template = PublicTemplate {
        key_type: algorithm.key_type(),
        name_algorithm: algorithm.name_algorithm(),
        object_attributes: attributes::ATTESTATION_KEY,
        scheme: Some(algorithm.signing_scheme()),
    };
    template.marshal(unique)
}

/// The fields of a signing key's `TPMT_PUBLIC` other than its public key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PublicTemplate {
    pub(crate) key_type: KeyType,
    pub(crate) name_algorithm: HashAlgorithm,
    pub(crate) object_attributes: u32,
    /// `None` marshals scheme `TPM_ALG_NULL`.
    pub(crate) scheme: Option<SigningScheme>,
}

impl PublicTemplate {
    /// Marshals the `TPMT_PUBLIC` with `unique` as the RSA modulus, or the
    /// ECC x and y coordinates.
    pub(crate) fn marshal(&self, unique: &[&[u8]]) -> Vec<u8> {
        let mut writer = Writer::default();
        writer
            .u16(if self.key_type.is_rsa() { TPM_ALG_RSA } else { TPM_ALG_ECC })
            .u16(self.name_algorithm.tpm_alg_id())
            .u32(self.object_attributes)
            .sized(&[])
            .u16(TPM_ALG_NULL);
        match self.scheme {
            Some(scheme) => writer.u16(scheme.scheme.tpm_alg_id()).u16(scheme.hash.tpm_alg_id()),
            None => writer.u16(TPM_ALG_NULL),
        };
        match self.key_type {
            KeyType::Rsa2048 | KeyType::Rsa3072 => {
                let bits = if self.key_type == KeyType::Rsa2048 { 2048 } else { 3072 };
                // Exponent 0 means 65537, as TPMs marshal it.
                writer.u16(bits).u32(0);
            }
            KeyType::EccP256 | KeyType::EccP384 => {
                let curve = if self.key_type == KeyType::EccP256 { TPM_ECC_NIST_P256 } else { TPM_ECC_NIST_P384 };
                writer.u16(curve).u16(TPM_ALG_NULL);
            }
        }
        for part in unique {
            writer.sized(part);
        }
        writer.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soft_ak::SoftAk;

    /// Offsets in the `TPM2B_PUBLIC` of an attestation key.
    const TYPE: usize = 2;
    const NAME_ALGORITHM: usize = 4;
    const ATTRIBUTES: usize = 6;
    const SYMMETRIC: usize = 12;
    const SCHEME: usize = 14;
    const SCHEME_HASH: usize = 16;
    /// `keyBits` of an RSA key, `curveID` of an ECC key.
    const KEY_BITS_OR_CURVE: usize = 18;
    const KDF: usize = 20;

    fn set_u16(bytes: &mut [u8], offset: usize, value: u16) {
        bytes[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
    }

    fn ak_public(algorithm: AkAlgorithm) -> Vec<u8> {
        SoftAk::derive(algorithm, b"public").unwrap().public().to_tpm2b()
    }

    fn unsupported(bytes: &[u8]) -> (&'static str, usize, u32) {
        match AkPublic::parse(bytes) {
            Err(QuoteError::UnsupportedAlgorithm { field, offset, value, .. }) => (field, offset, value),
            other => panic!("expected an unsupported algorithm, got {other:?}"),
        }
    }

    fn invalid(bytes: &[u8]) -> (&'static str, usize, u64) {
        match AkPublic::parse(bytes) {
            Err(QuoteError::MalformedKey(MarshalError::InvalidValue { field, offset, value, .. })) => {
                (field, offset, value)
            }
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    #[test]
    fn ak_public_parses_tpm2b_and_bare_area() {
        for algorithm in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048Pss] {
            let bytes = ak_public(algorithm);
            let key = AkPublic::parse(&bytes).unwrap();
            assert_eq!(key.algorithm(), Some(algorithm));
            assert_eq!(key.object_attributes(), attributes::ATTESTATION_KEY);
            assert_eq!(key.public_area(), &bytes[2..]);
            assert_eq!(key.to_tpm2b(), bytes);
            assert_eq!(key.name()[..2], algorithm.name_algorithm().tpm_alg_id().to_be_bytes());
            assert_eq!(key.name()[2..], *algorithm.name_algorithm().digest(&bytes[2..]).as_bytes());

            let bare = AkPublic::parse(&bytes[2..]).unwrap();
            assert_eq!(bare.name(), key.name());
            assert_eq!(bare.public_area(), key.public_area());
        }
    }

    #[test]
    fn qualified_name_hashes_parent_and_name() {
        let key = AkPublic::parse(&ak_public(AkAlgorithm::EccP384)).unwrap();
        let handle = 0x4000_000bu32.to_be_bytes();
        let digest = HashAlgorithm::Sha384.digest_parts(&[&handle, key.name()]);
        let qualified = key.primary_qualified_name(Hierarchy::Endorsement);
        assert_eq!(qualified[..2], [0x00, 0x0c]);
        assert_eq!(qualified[2..], *digest.as_bytes());
        assert!(key.is_signer(&qualified));
        assert!(key.is_signer(key.name()));
        assert!(!key.is_signer(&key.qualified_name(&[0, 0x0b, 1])));
    }

    #[test]
    fn unsupported_algorithms_name_field_and_offset() {
        let mut bytes = ak_public(AkAlgorithm::EccP256);
        set_u16(&mut bytes, TYPE, 0x0008);
        // Bytes that start with neither TPM_ALG_RSA nor TPM_ALG_ECC are a
        // TPM2B, so the type is read at byte 2.
        assert_eq!(unsupported(&bytes), ("type", TYPE, 0x0008));

        let mut bytes = ak_public(AkAlgorithm::EccP256);
        set_u16(&mut bytes, NAME_ALGORITHM, 0x0099);
        assert_eq!(unsupported(&bytes), ("nameAlg", NAME_ALGORITHM, 0x0099));

        let mut bytes = ak_public(AkAlgorithm::EccP256);
        set_u16(&mut bytes, SCHEME, 0x001a);
        assert_eq!(unsupported(&bytes), ("parameters.scheme.scheme", SCHEME, 0x001a));

        let mut bytes = ak_public(AkAlgorithm::Rsa2048);
        set_u16(&mut bytes, SCHEME_HASH, 0x0004);
        assert_eq!(unsupported(&bytes), ("parameters.scheme.details.hashAlg", SCHEME_HASH, 0x0004));

        let mut bytes = ak_public(AkAlgorithm::Rsa2048);
        set_u16(&mut bytes, KEY_BITS_OR_CURVE, 1024);
        assert_eq!(unsupported(&bytes), ("parameters.keyBits", KEY_BITS_OR_CURVE, 1024));

        let mut bytes = ak_public(AkAlgorithm::EccP256);
        set_u16(&mut bytes, KEY_BITS_OR_CURVE, 0x0005);
        assert_eq!(unsupported(&bytes), ("parameters.curveID", KEY_BITS_OR_CURVE, 0x0005));
    }

    #[test]
    fn non_attestation_keys_rejected() {
        let original = ak_public(AkAlgorithm::EccP256);
        let attributes_value = u64::from(attributes::ATTESTATION_KEY);
        for (cleared, set) in [(attributes::SIGN, 0), (attributes::RESTRICTED, 0), (0, attributes::DECRYPT)] {
            let mut bytes = original.clone();
            let value = (attributes::ATTESTATION_KEY & !cleared) | set;
            bytes[ATTRIBUTES..ATTRIBUTES + 4].copy_from_slice(&value.to_be_bytes());
            assert_eq!(invalid(&bytes), ("objectAttributes", ATTRIBUTES, u64::from(value)));
        }
        assert_eq!(attributes_value, 0x0005_0072);

        let mut bytes = original.clone();
        set_u16(&mut bytes, SYMMETRIC, 0x0006);
        assert_eq!(invalid(&bytes), ("parameters.symmetric.algorithm", SYMMETRIC, 0x0006));

        let mut bytes = original.clone();
        set_u16(&mut bytes, KDF, 0x0020);
        assert_eq!(invalid(&bytes), ("parameters.kdf.scheme", KDF, 0x0020));
    }

    #[test]
    fn invalid_public_keys_rejected() {
        // The last byte of y: the point leaves the curve.
        let mut bytes = ak_public(AkAlgorithm::EccP256);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(invalid(&bytes), ("unique.ecc", 22, 32));

        // The modulus loses its top bit.
        let mut bytes = ak_public(AkAlgorithm::Rsa2048);
        let modulus = bytes.len() - 256;
        bytes[modulus] = 0x01;
        assert_eq!(invalid(&bytes), ("unique.rsa.size", modulus - 2, 256));

        // An even exponent.
        let mut bytes = ak_public(AkAlgorithm::Rsa2048);
        bytes[20..24].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(invalid(&bytes), ("parameters.exponent", 20, 4));
    }

    #[test]
    fn tpm2b_size_must_match() {
        let mut bytes = ak_public(AkAlgorithm::EccP256);
        let length = bytes.len();
        bytes.push(0);
        assert_eq!(
            AkPublic::parse(&bytes).unwrap_err(),
            QuoteError::MalformedKey(MarshalError::TrailingBytes {
                structure: "TPM2B_PUBLIC",
                offset: length,
                count: 1
            })
        );

        let mut bare = bytes[2..].to_vec();
        let error = AkPublic::parse(&bare).unwrap_err();
        assert_eq!(
            error,
            QuoteError::MalformedKey(MarshalError::TrailingBytes {
                structure: "TPMT_PUBLIC",
                offset: length - 2,
                count: 1
            })
        );
        bare.truncate(9);
        let error = AkPublic::parse(&bare).unwrap_err();
        assert_eq!(
            error,
            QuoteError::MalformedKey(MarshalError::Truncated {
                structure: "TPMT_PUBLIC",
                field: "authPolicy",
                offset: 9
            })
        );
        assert_eq!(
            error.to_string(),
            "invalid attestation key: TPMT_PUBLIC is truncated: it ends at byte 9, inside authPolicy"
        );
    }
}
