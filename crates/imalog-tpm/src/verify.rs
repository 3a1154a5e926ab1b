//! Quote verification in pure Rust: the signature of a `TPMS_ATTEST` by an
//! attestation key, and the key's name in the attest. The crate root
//! re-exports these items.
//!
//! The signature covers the hash of the marshalled attest, computed with the
//! hash algorithm the signature names. ECDSA signs that digest directly, and
//! RSASSA is PKCS#1 v1.5. RSAPSS is accepted with a salt as long as the
//! digest, which swtpm 0.7.1 and TPMs in FIPS mode use. It is also accepted
//! with the longest salt that fits the modulus, which older TPMs outside
//! FIPS mode use.

use imalog_core::{Digest, HashAlgorithm};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};

use crate::algorithm::{SignatureScheme, SigningScheme};
use crate::marshal::MarshalError;
use crate::public::{AkPublic, VerifyingKey};
use crate::signature::{SignatureValue, TpmSignature};
use crate::{AttestError, QuoteInfo};

/// A quote that failed verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuoteError {
    /// The attestation key is not a well-formed `TPM2B_PUBLIC` or
    /// `TPMT_PUBLIC` of a restricted signing key.
    #[error("invalid attestation key: {0}")]
    MalformedKey(#[source] MarshalError),
    /// The signature is not a well-formed `TPMT_SIGNATURE`, or its size does
    /// not fit the key.
    #[error("invalid quote signature: {0}")]
    MalformedSignature(#[source] MarshalError),
    /// The attest is not a well-formed quote `TPMS_ATTEST`.
    #[error("invalid quote attest: {0}")]
    MalformedAttest(#[from] AttestError),
    /// The key or signature uses an algorithm, curve or key size that this
    /// verifier does not implement.
    #[error("{structure} byte {offset}: {field} {value:#06x} is not supported; expected {supported}")]
    UnsupportedAlgorithm {
        /// The structure, `TPMT_PUBLIC` or `TPMT_SIGNATURE`.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// Offset of the field in the input.
        offset: usize,
        /// The value found: a TPM_ALG_ID, TPM_ECC_CURVE or key size.
        value: u32,
        /// The values this verifier accepts.
        supported: &'static str,
    },
    /// The signature's scheme or hash is not one the key signs with.
    #[error("the signature is {signature}, but the attestation key signs with {key}")]
    SchemeMismatch {
        /// The key's type and, unless it is `TPM_ALG_NULL`, its scheme.
        key: String,
        /// The signature's scheme and hash.
        signature: String,
    },
    /// The signature is not a signature of the attest by this key: the
    /// attest, the signature or the key was changed, or another key signed.
    #[error("the signature does not verify: the attest was not signed by this attestation key")]
    SignatureMismatch,
    /// The attest's `qualifiedSigner` names another key.
    #[error(
        "the attest's qualifiedSigner {} is neither the attestation key's Name {} nor its qualified name as a \
         primary key",
        hex(.qualified_signer),
        hex(.name)
    )]
    NameMismatch {
        /// The key's Name.
        name: Vec<u8>,
        /// The attest's `qualifiedSigner`.
        qualified_signer: Vec<u8>,
    },
}

/// Verifies a quote: parses the attestation key (`TPM2B_PUBLIC` or bare
/// `TPMT_PUBLIC`), the `TPMT_SIGNATURE` and the `TPMS_ATTEST`, checks the
/// signature over the attest and checks that the attest's
/// `qualifiedSigner`, when not empty, names the key (see
/// [`AkPublic::is_signer`]). Returns the attest's fields, which the caller
/// still compares with its nonce and PCR values.
pub fn verify_quote(ak_public: &[u8], attest: &[u8], signature: &[u8]) -> Result<QuoteInfo, QuoteError> {
    AkPublic::parse(ak_public)?.verify_quote(attest, signature)
}

/// Computes a quote's `pcrDigest`: the hash of the concatenated PCR values
/// in the order of the attest's selection (banks in selection order, each
/// bank's PCRs in ascending order), with the signature's hash algorithm.
pub fn pcr_digest(hash: HashAlgorithm, values: &[&Digest]) -> Digest {
    let parts: Vec<&[u8]> = values.iter().map(|value| value.as_bytes()).collect();
    hash.digest_parts(&parts)
}

impl QuoteInfo {
    /// Reports whether `values`, the PCR values in selection order, are the
    /// quoted ones: one value per selected PCR, whose [`pcr_digest`] with
    /// `hash` (the signature's hash algorithm) equals `pcrDigest`.
    pub fn check_pcr_values(&self, hash: HashAlgorithm, values: &[&Digest]) -> bool {
        let selected: usize = self.pcr_selection.iter().map(|(_, pcrs)| pcrs.len()).sum();
        selected == values.len() && pcr_digest(hash, values).as_bytes() == self.pcr_digest.as_slice()
    }
}

impl AkPublic {
    /// Verifies a quote signed by this key, as [`verify_quote`] does.
    pub fn verify_quote(&self, attest: &[u8], signature: &[u8]) -> Result<QuoteInfo, QuoteError> {
        let info = self.verify_quote_signature(attest, signature)?;
        if !info.qualified_signer.is_empty() && !self.is_signer(&info.qualified_signer) {
            return Err(QuoteError::NameMismatch {
                name: self.name().to_vec(),
                qualified_signer: info.qualified_signer,
            });
        }
        Ok(info)
    }

    /// Verifies the signature of a quote without checking its
    /// `qualifiedSigner`, for keys below another key, whose qualified name
    /// the caller checks with [`AkPublic::qualified_name`].
    pub fn verify_quote_signature(&self, attest: &[u8], signature: &[u8]) -> Result<QuoteInfo, QuoteError> {
        let signature = TpmSignature::parse(signature)?;
        let info = QuoteInfo::parse(attest)?;
        self.verify_signature(attest, &signature)?;
        Ok(info)
    }

    /// Verifies that `signature` signs `message` with this key.
    pub fn verify_signature(&self, message: &[u8], signature: &TpmSignature) -> Result<(), QuoteError> {
        let scheme = signature.signing_scheme();
        let key_allows = match self.signing_scheme() {
            Some(key_scheme) => key_scheme == scheme,
            None => scheme.scheme.fits(self.key_type()),
        };
        if !key_allows {
            let key = match self.signing_scheme() {
                Some(key_scheme) => format!("{} {key_scheme}", self.key_type()),
                None => format!("{} with any scheme of its type", self.key_type()),
            };
            return Err(QuoteError::SchemeMismatch { key, signature: scheme.to_string() });
        }

        let digest = scheme.hash.digest(message);
        let verified = match (&self.key, &signature.value) {
            (VerifyingKey::P256(key), SignatureValue::Ecdsa { r, r_offset, s, s_offset }) => {
                let bytes = ecdsa_signature_bytes(r, *r_offset, s, *s_offset, 32)?;
                p256::ecdsa::Signature::from_slice(&bytes)
                    .is_ok_and(|parsed| key.verify_prehash(digest.as_bytes(), &parsed).is_ok())
            }
            (VerifyingKey::P384(key), SignatureValue::Ecdsa { r, r_offset, s, s_offset }) => {
                let bytes = ecdsa_signature_bytes(r, *r_offset, s, *s_offset, 48)?;
                p384::ecdsa::Signature::from_slice(&bytes)
                    .is_ok_and(|parsed| key.verify_prehash(digest.as_bytes(), &parsed).is_ok())
            }
            (VerifyingKey::Rsa(key), SignatureValue::Rsa { signature: bytes, offset }) => {
                let modulus_size = rsa::traits::PublicKeyParts::size(key);
                if bytes.len() != modulus_size {
                    return Err(QuoteError::MalformedSignature(MarshalError::InvalidValue {
                        structure: "TPMT_SIGNATURE",
                        field: "signature.rsa.sig.size",
                        offset: *offset,
                        value: bytes.len() as u64,
                        reason: "an RSA signature has as many bytes as the key's modulus",
                    }));
                }
                verify_rsa(key, scheme, digest.as_bytes(), bytes)
            }
            // `fits` matched the signature's scheme to the key type above.
            _ => false,
        };
        if verified {
            Ok(())
        } else {
            Err(QuoteError::SignatureMismatch)
        }
    }
}

/// Pads r and s on the left to the curve's size and concatenates them, or
/// fails when one is longer than the curve's size.
fn ecdsa_signature_bytes(
    r: &[u8],
    r_offset: usize,
    s: &[u8],
    s_offset: usize,
    size: usize,
) -> Result<Vec<u8>, QuoteError> {
    let mut bytes = Vec::with_capacity(2 * size);
    for (value, offset, field) in
        [(r, r_offset, "signature.ecdsa.signatureR"), (s, s_offset, "signature.ecdsa.signatureS")]
    {
        if value.len() > size {
            return Err(QuoteError::MalformedSignature(MarshalError::InvalidValue {
                structure: "TPMT_SIGNATURE",
                field,
                offset,
                value: value.len() as u64,
                reason: "an ECDSA signature value has at most the curve's size in bytes",
            }));
        }
        bytes.resize(bytes.len() + size - value.len(), 0);
        bytes.extend_from_slice(value);
    }
    Ok(bytes)
}

/// Verifies an RSASSA or RSAPSS signature of `digest`.
fn verify_rsa(key: &RsaPublicKey, scheme: SigningScheme, digest: &[u8], signature: &[u8]) -> bool {
    match scheme.scheme {
        SignatureScheme::Rsassa => key.verify(pkcs1v15(scheme.hash), digest, signature).is_ok(),
        SignatureScheme::Rsapss => {
            let digest_size = scheme.hash.digest_size();
            let salt_sizes = [digest_size, max_pss_salt_size(key, digest_size)];
            salt_sizes.into_iter().any(|salt_size| key.verify(pss(scheme.hash, salt_size), digest, signature).is_ok())
        }
        SignatureScheme::Ecdsa => false,
    }
}

/// Computes the largest PSS salt for the key and digest size:
/// emLen - hLen - 2, where emLen = ceil((modBits - 1) / 8) (PKCS #1 v2.2).
pub(crate) fn max_pss_salt_size(key: &RsaPublicKey, digest_size: usize) -> usize {
    let modulus_bits = rsa::traits::PublicKeyParts::n(key).bits();
    let encoded_size = modulus_bits.saturating_sub(1).div_ceil(8);
    encoded_size.saturating_sub(digest_size + 2)
}

/// PKCS#1 v1.5 signature padding for `hash`, one of the hashes that
/// [`crate::algorithm::signature_hash`] accepts.
pub(crate) fn pkcs1v15(hash: HashAlgorithm) -> Pkcs1v15Sign {
    match hash {
        HashAlgorithm::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
        HashAlgorithm::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        _ => Pkcs1v15Sign::new::<sha2::Sha256>(),
    }
}

/// PSS padding for `hash` with MGF1 of the same hash and `salt_size` bytes
/// of salt.
pub(crate) fn pss(hash: HashAlgorithm, salt_size: usize) -> Pss {
    match hash {
        HashAlgorithm::Sha384 => Pss::new_with_salt::<sha2::Sha384>(salt_size),
        HashAlgorithm::Sha512 => Pss::new_with_salt::<sha2::Sha512>(salt_size),
        _ => Pss::new_with_salt::<sha2::Sha256>(salt_size),
    }
}

/// Formats bytes as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marshal::{Writer, TPM_ALG_RSAPSS};
    use crate::public::{attributes, Hierarchy, PublicTemplate};
    use crate::soft_ak::SoftAk;
    use crate::{AkAlgorithm, KeyType, MarshalError, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};

    /// Builds a quote attest of sha256 PCR 10 with `qualified_signer`.
    fn attest(qualified_signer: &[u8]) -> Vec<u8> {
        let mut writer = Writer::default();
        writer
            .u32(TPM_GENERATED_VALUE)
            .u16(TPM_ST_ATTEST_QUOTE)
            .sized(qualified_signer)
            .sized(b"nonce")
            .u64(1)
            .u32(0)
            .u32(0)
            .u8(1)
            .u64(2)
            .u32(1)
            .u16(0x000b)
            .u8(3)
            .raw(&[0, 4, 0])
            .sized(&[0x5a; 32]);
        writer.bytes
    }

    /// Derives a key of `algorithm` and parses its public area with scheme
    /// `TPM_ALG_NULL`.
    fn null_scheme_key(algorithm: AkAlgorithm) -> (SoftAk, AkPublic) {
        let ak = SoftAk::derive(algorithm, b"null scheme").unwrap();
        let template = PublicTemplate {
            key_type: algorithm.key_type(),
            name_algorithm: algorithm.name_algorithm(),
            object_attributes: attributes::ATTESTATION_KEY,
            scheme: None,
        };
        let public = AkPublic::parse(&ak.public_area_with(template)).unwrap();
        (ak, public)
    }

    #[test]
    fn null_scheme_key_accepts_every_hash() {
        for algorithm in [AkAlgorithm::EccP256, AkAlgorithm::EccP384, AkAlgorithm::Rsa2048] {
            let (ak, public) = null_scheme_key(algorithm);
            assert_eq!(public.signing_scheme(), None);
            assert_eq!(public.algorithm(), None);
            let message = attest(public.name());
            let schemes: &[SignatureScheme] = if algorithm.key_type().is_rsa() {
                &[SignatureScheme::Rsassa, SignatureScheme::Rsapss]
            } else {
                &[SignatureScheme::Ecdsa]
            };
            for &scheme in schemes {
                for hash in [HashAlgorithm::Sha256, HashAlgorithm::Sha384, HashAlgorithm::Sha512] {
                    let signing = SigningScheme { scheme, hash };
                    let signature = ak.sign_with(signing, &message).unwrap();
                    let verified = public.verify_quote(&message, &signature.to_bytes());
                    assert!(verified.is_ok(), "{algorithm} {signing}: {verified:?}");
                }
            }
        }
    }

    #[test]
    fn key_scheme_rejects_other_hash_and_scheme() {
        let ak = SoftAk::derive(AkAlgorithm::Rsa2048, b"scheme").unwrap();
        let message = attest(&[]);
        for signing in [
            SigningScheme { scheme: SignatureScheme::Rsassa, hash: HashAlgorithm::Sha512 },
            SigningScheme { scheme: SignatureScheme::Rsapss, hash: HashAlgorithm::Sha256 },
        ] {
            let signature = ak.sign_with(signing, &message).unwrap();
            let error = ak.public().verify_quote(&message, &signature.to_bytes()).unwrap_err();
            assert!(matches!(error, QuoteError::SchemeMismatch { .. }), "{signing}: {error}");
            assert!(error.to_string().contains(&signing.to_string()), "{error}");
        }
    }

    #[test]
    fn ecdsa_signature_rejected_by_rsa_key() {
        let rsa = SoftAk::derive(AkAlgorithm::Rsa2048, b"rsa").unwrap();
        let ecc = SoftAk::derive(AkAlgorithm::EccP256, b"ecc").unwrap();
        let message = attest(&[]);
        let signature = ecc.sign(&message).unwrap().to_bytes();
        let error = rsa.public().verify_quote(&message, &signature).unwrap_err();
        assert!(matches!(error, QuoteError::SchemeMismatch { .. }), "{error}");
    }

    #[test]
    fn pss_accepts_digest_and_max_salt_only() {
        let ak = SoftAk::derive(AkAlgorithm::Rsa2048Pss, b"salt").unwrap();
        let message = attest(ak.qualified_name());
        let VerifyingKey::Rsa(public_key) = &ak.public().key else { panic!("an RSA key") };
        let max_salt = max_pss_salt_size(public_key, 32);
        assert_eq!(max_salt, 256 - 32 - 2);

        for (salt_size, accepted) in [(32, true), (max_salt, true), (20, false), (0, false)] {
            let signature = ak.sign_pss_with_salt_size(HashAlgorithm::Sha256, salt_size, &message).unwrap();
            let result = ak.public().verify_quote(&message, &signature.to_bytes());
            if accepted {
                assert!(result.is_ok(), "salt of {salt_size} bytes: {result:?}");
            } else {
                assert_eq!(result.unwrap_err(), QuoteError::SignatureMismatch, "salt of {salt_size} bytes");
            }
        }
    }

    #[test]
    fn other_qualified_signer_is_name_mismatch() {
        let ak = SoftAk::derive(AkAlgorithm::EccP256, b"signer").unwrap();
        let other = SoftAk::derive(AkAlgorithm::EccP256, b"other signer").unwrap();
        let message = attest(other.qualified_name());
        let signature = ak.sign(&message).unwrap().to_bytes();

        let error = ak.public().verify_quote(&message, &signature).unwrap_err();
        let QuoteError::NameMismatch { name, qualified_signer } = &error else { panic!("{error}") };
        assert_eq!(name, ak.public().name());
        assert_eq!(qualified_signer, other.qualified_name());
        assert!(ak.public().verify_quote_signature(&message, &signature).is_ok());
    }

    #[test]
    fn signer_may_be_name_qualified_name_or_empty() {
        let ak = SoftAk::derive(AkAlgorithm::EccP384, b"names").unwrap();
        let public = ak.public();
        let parent = [0x00, 0x0b, 0x11, 0x22];
        let signers = [
            public.name().to_vec(),
            public.primary_qualified_name(Hierarchy::Owner),
            public.primary_qualified_name(Hierarchy::Endorsement),
            public.primary_qualified_name(Hierarchy::Platform),
            public.primary_qualified_name(Hierarchy::Null),
            Vec::new(),
        ];
        for signer in signers {
            let message = attest(&signer);
            let signature = ak.sign(&message).unwrap().to_bytes();
            assert!(public.verify_quote(&message, &signature).is_ok(), "signer {signer:02x?}");
        }

        let child = public.qualified_name(&parent);
        let message = attest(&child);
        let signature = ak.sign(&message).unwrap().to_bytes();
        assert!(matches!(public.verify_quote(&message, &signature), Err(QuoteError::NameMismatch { .. })));
        assert!(public.verify_quote_signature(&message, &signature).is_ok());
    }

    #[test]
    fn high_s_ecdsa_signature_verifies() {
        use p256::elliptic_curve::PrimeField;

        // TPMs do not normalize s to the lower half of the group order, so
        // the verifier accepts both (r, s) and (r, n - s).
        let ak = SoftAk::derive(AkAlgorithm::EccP256, b"high s").unwrap();
        let message = attest(ak.qualified_name());
        let signature = ak.sign(&message).unwrap();
        let SignatureValue::Ecdsa { r, s, .. } = &signature.value else { panic!("an ECDSA signature") };
        let s = Option::<p256::Scalar>::from(p256::Scalar::from_repr(*p256::FieldBytes::from_slice(s))).unwrap();
        let negated = (-s).to_repr().to_vec();
        let flipped = TpmSignature::ecdsa(signature.signing_scheme(), r.clone(), negated).to_bytes();
        assert!(ak.public().verify_quote(&message, &flipped).is_ok());
    }

    #[test]
    fn ecdsa_signature_values_checked() {
        let ak = SoftAk::derive(AkAlgorithm::EccP256, b"values").unwrap();
        let message = attest(ak.qualified_name());
        let scheme = ak.algorithm().signing_scheme();

        let zero = TpmSignature::ecdsa(scheme, vec![0; 32], vec![1; 32]).to_bytes();
        assert_eq!(ak.public().verify_quote(&message, &zero), Err(QuoteError::SignatureMismatch));

        let long = TpmSignature::ecdsa(scheme, vec![1; 33], vec![1; 32]).to_bytes();
        let error = ak.public().verify_quote(&message, &long).unwrap_err();
        assert_eq!(
            error,
            QuoteError::MalformedSignature(MarshalError::InvalidValue {
                structure: "TPMT_SIGNATURE",
                field: "signature.ecdsa.signatureR",
                offset: 4,
                value: 33,
                reason: "an ECDSA signature value has at most the curve's size in bytes",
            })
        );

        // A TPM may drop leading zero bytes of r and s.
        assert_eq!(ecdsa_signature_bytes(&[1], 4, &[2, 3], 7, 4).unwrap(), [0, 0, 0, 1, 0, 0, 2, 3]);
    }

    #[test]
    fn rsa_signature_size_checked() {
        let ak = SoftAk::derive(AkAlgorithm::Rsa2048, b"size").unwrap();
        let message = attest(ak.qualified_name());
        let signature = ak.sign(&message).unwrap();
        let SignatureValue::Rsa { signature: bytes, .. } = &signature.value else { panic!("an RSA signature") };
        let short = TpmSignature::rsa(signature.signing_scheme(), bytes[1..].to_vec()).to_bytes();
        let error = ak.public().verify_quote(&message, &short).unwrap_err();
        assert!(
            matches!(
                error,
                QuoteError::MalformedSignature(MarshalError::InvalidValue {
                    field: "signature.rsa.sig.size",
                    offset: 4,
                    value: 255,
                    ..
                })
            ),
            "{error}"
        );
    }

    #[test]
    fn signature_parse_errors_name_offsets() {
        let mut bytes = Writer::default();
        bytes.u16(0x0005).u16(0x000b);
        let error = TpmSignature::parse(&bytes.bytes).unwrap_err();
        assert!(
            matches!(
                error,
                QuoteError::UnsupportedAlgorithm {
                    structure: "TPMT_SIGNATURE",
                    field: "sigAlg",
                    offset: 0,
                    value: 5,
                    ..
                }
            ),
            "{error}"
        );

        let mut bytes = Writer::default();
        bytes.u16(TPM_ALG_RSAPSS).u16(0x0004).sized(&[1; 256]);
        let error = TpmSignature::parse(&bytes.bytes).unwrap_err();
        assert!(
            matches!(
                error,
                QuoteError::UnsupportedAlgorithm { field: "signature.rsapss.hash", offset: 2, value: 4, .. }
            ),
            "{error}"
        );

        let mut bytes = Writer::default();
        bytes.u16(TPM_ALG_RSAPSS).u16(0x000b).sized(&[1; 8]).u8(0);
        let error = TpmSignature::parse(&bytes.bytes).unwrap_err();
        assert_eq!(
            error,
            QuoteError::MalformedSignature(MarshalError::TrailingBytes {
                structure: "TPMT_SIGNATURE",
                offset: 14,
                count: 1
            })
        );
        assert!(error.to_string().contains("byte 14"), "{error}");
    }

    #[test]
    fn signature_round_trips() {
        let ak = SoftAk::derive(AkAlgorithm::EccP384, b"round trip").unwrap();
        let signature = ak.sign(b"message").unwrap();
        let bytes = signature.to_bytes();
        assert_eq!(TpmSignature::parse(&bytes).unwrap(), signature);
        assert_eq!(signature.signing_scheme().to_string(), "ECDSA-SHA384");
        assert!(ak.public().verify_signature(b"message", &signature).is_ok());
        assert_eq!(ak.public().verify_signature(b"messagE", &signature), Err(QuoteError::SignatureMismatch));
    }

    #[test]
    fn pcr_digest_hashes_values_in_order() {
        let first = HashAlgorithm::Sha1.digest(b"first");
        let second = HashAlgorithm::Sha256.digest(b"second");
        let expected = HashAlgorithm::Sha384.digest_parts(&[first.as_bytes(), second.as_bytes()]);
        assert_eq!(pcr_digest(HashAlgorithm::Sha384, &[&first, &second]), expected);
        assert_ne!(pcr_digest(HashAlgorithm::Sha384, &[&second, &first]), expected);
    }

    #[test]
    fn check_pcr_values_needs_one_value_per_pcr() {
        let ak = SoftAk::derive(AkAlgorithm::EccP256, b"pcrs").unwrap();
        let value = Digest::zero(32);
        let mut info = QuoteInfo::parse(&attest(ak.qualified_name())).unwrap();
        info.pcr_digest = pcr_digest(HashAlgorithm::Sha256, &[&value]).as_bytes().to_vec();
        assert!(info.check_pcr_values(HashAlgorithm::Sha256, &[&value]));
        assert!(!info.check_pcr_values(HashAlgorithm::Sha384, &[&value]));
        assert!(!info.check_pcr_values(HashAlgorithm::Sha256, &[&value, &value]));
        assert!(!info.check_pcr_values(HashAlgorithm::Sha256, &[&Digest::zero(20)]));
        assert_eq!(KeyType::EccP256.to_string(), "ECC NIST P-256");
    }
}
