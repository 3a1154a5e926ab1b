//! `TPMT_SIGNATURE` of the schemes that quote verification implements:
//! RSASSA, RSAPSS and ECDSA.

use crate::algorithm::{signature_hash, SignatureScheme, SigningScheme, SUPPORTED_SIGNATURE_HASHES};
use crate::marshal::{Reader, Writer, TPM_ALG_ECDSA, TPM_ALG_RSAPSS, TPM_ALG_RSASSA};
use crate::verify::QuoteError;

/// A parsed `TPMT_SIGNATURE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmSignature {
    scheme: SigningScheme,
    pub(crate) value: SignatureValue,
}

/// The signature bytes, with the offset of each buffer's size field in the
/// marshalled input for errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SignatureValue {
    /// An RSASSA or RSAPSS signature, as big-endian bytes.
    Rsa { signature: Vec<u8>, offset: usize },
    /// An ECDSA signature: r and s as big-endian bytes.
    Ecdsa { r: Vec<u8>, r_offset: usize, s: Vec<u8>, s_offset: usize },
}

impl TpmSignature {
    /// Parses a marshalled `TPMT_SIGNATURE` whose hash is SHA-256, SHA-384 or
    /// SHA-512. The bytes must end where the structure ends.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        let mut reader = Reader::new(bytes, "TPMT_SIGNATURE");
        let malformed = QuoteError::MalformedSignature;

        let algorithm_offset = reader.offset();
        let algorithm = reader.u16("sigAlg").map_err(malformed)?;
        let (scheme, hash_field) = match algorithm {
            TPM_ALG_RSASSA => (SignatureScheme::Rsassa, "signature.rsassa.hash"),
            TPM_ALG_RSAPSS => (SignatureScheme::Rsapss, "signature.rsapss.hash"),
            TPM_ALG_ECDSA => (SignatureScheme::Ecdsa, "signature.ecdsa.hash"),
            other => {
                return Err(QuoteError::UnsupportedAlgorithm {
                    structure: "TPMT_SIGNATURE",
                    field: "sigAlg",
                    offset: algorithm_offset,
                    value: other.into(),
                    supported: "TPM_ALG_RSASSA, TPM_ALG_RSAPSS or TPM_ALG_ECDSA",
                })
            }
        };

        let hash_offset = reader.offset();
        let hash_id = reader.u16(hash_field).map_err(malformed)?;
        let hash = signature_hash(hash_id).ok_or(QuoteError::UnsupportedAlgorithm {
            structure: "TPMT_SIGNATURE",
            field: hash_field,
            offset: hash_offset,
            value: hash_id.into(),
            supported: SUPPORTED_SIGNATURE_HASHES,
        })?;

        let value = match scheme {
            SignatureScheme::Rsassa | SignatureScheme::Rsapss => {
                let offset = reader.offset();
                let signature = reader.sized("signature.rsa.sig").map_err(malformed)?.to_vec();
                SignatureValue::Rsa { signature, offset }
            }
            SignatureScheme::Ecdsa => {
                let r_offset = reader.offset();
                let r = reader.sized("signature.ecdsa.signatureR").map_err(malformed)?.to_vec();
                let s_offset = reader.offset();
                let s = reader.sized("signature.ecdsa.signatureS").map_err(malformed)?.to_vec();
                SignatureValue::Ecdsa { r, r_offset, s, s_offset }
            }
        };
        reader.finish().map_err(malformed)?;
        Ok(TpmSignature { scheme: SigningScheme { scheme, hash }, value })
    }

    /// Returns the signature scheme and hash.
    pub fn signing_scheme(&self) -> SigningScheme {
        self.scheme
    }

    /// Builds an RSASSA or RSAPSS signature.
    pub(crate) fn rsa(scheme: SigningScheme, signature: Vec<u8>) -> Self {
        TpmSignature { scheme, value: SignatureValue::Rsa { signature, offset: 4 } }
    }

    /// Builds an ECDSA signature.
    pub(crate) fn ecdsa(scheme: SigningScheme, r: Vec<u8>, s: Vec<u8>) -> Self {
        let s_offset = 6 + r.len();
        TpmSignature { scheme, value: SignatureValue::Ecdsa { r, r_offset: 4, s, s_offset } }
    }

    /// Marshals the signature as `TPMT_SIGNATURE`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::default();
        writer.u16(self.scheme.scheme.tpm_alg_id()).u16(self.scheme.hash.tpm_alg_id());
        match &self.value {
            SignatureValue::Rsa { signature, .. } => {
                writer.sized(signature);
            }
            SignatureValue::Ecdsa { r, s, .. } => {
                writer.sized(r).sized(s);
            }
        }
        writer.bytes
    }
}
