//! Quotes in the TPM's own encoding, and a parser for the `TPMS_ATTEST` that
//! TPM2_Quote signs. These types carry plain bytes, so that collectors and
//! verifiers need neither tss-esapi nor a TPM.

use imalog_core::{Bank, HashAlgorithm};

/// `TPM_GENERATED_VALUE`, the magic that starts every structure the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`, the attest type of TPM2_Quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// Maximum number of banks in a `TPML_PCR_SELECTION`, as tpm2-tss sizes it
/// (`TPM2_NUM_PCR_BANKS`).
const MAX_SELECTION_BANKS: u32 = 16;
/// Maximum bytes of PCR bitmap per bank (`TPM2_PCR_SELECT_MAX` of tpm2-tss,
/// for 32 PCRs).
const MAX_SIZE_OF_SELECT: u8 = 4;

/// A signed quote, as TPM2_Quote returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    /// The marshalled `TPMS_ATTEST` that the signature covers: the body of
    /// the `quoted` TPM2B, without its size.
    pub attest: Vec<u8>,
    /// The marshalled `TPMT_SIGNATURE` over `attest`.
    pub signature: Vec<u8>,
    /// The attestation key as a marshalled `TPM2B_PUBLIC`: a big-endian
    /// 16-bit size, then the `TPMT_PUBLIC`. tpm2-tools reads this format
    /// (`tpm2_checkquote -u`).
    pub ak_public: Vec<u8>,
}

impl Quote {
    /// Parses `attest` as the `TPMS_ATTEST` of a quote.
    pub fn info(&self) -> Result<QuoteInfo, AttestError> {
        QuoteInfo::parse(&self.attest)
    }
}

/// The fields of a quote's `TPMS_ATTEST`. Parsing checks the magic and the
/// attest type but not the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    /// Qualified name of the key that signed (`qualifiedSigner`).
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data, normally a nonce (`extraData`).
    pub extra_data: Vec<u8>,
    /// Milliseconds the TPM has been powered since its clock was last set.
    pub clock: u64,
    /// Number of TPM resets (`TPM2_Startup(CLEAR)` after power loss or
    /// reboot) since the TPM was cleared.
    pub reset_count: u32,
    /// Number of TPM restarts and resumes since the last reset.
    pub restart_count: u32,
    /// True when `clock` has not gone back since it was last reported.
    pub safe: bool,
    /// Vendor-defined firmware version.
    pub firmware_version: u64,
    /// The quoted PCRs: each bank with its PCR indices in ascending order, in
    /// the order of the `TPML_PCR_SELECTION`.
    pub pcr_selection: Vec<(Bank, Vec<u32>)>,
    /// Hash of the concatenated PCR values in selection order, computed with
    /// the signing scheme's hash algorithm (`pcrDigest`).
    pub pcr_digest: Vec<u8>,
}

/// An attest that is not a well-formed quote `TPMS_ATTEST`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The bytes end inside a field.
    #[error("TPMS_ATTEST is truncated: it ends at byte {offset}, inside {field}")]
    Truncated {
        /// Offset of the first missing byte.
        offset: usize,
        /// The field being read.
        field: &'static str,
    },
    /// The magic is not `TPM_GENERATED_VALUE`, so the TPM did not make it.
    #[error("TPMS_ATTEST magic is {found:#010x}, expected {TPM_GENERATED_VALUE:#010x} (TPM_GENERATED_VALUE)")]
    Magic {
        /// The magic found at byte 0.
        found: u32,
    },
    /// The attest is of another type than a quote.
    #[error("TPMS_ATTEST type at byte 4 is {found:#06x}, expected {TPM_ST_ATTEST_QUOTE:#06x} (TPM_ST_ATTEST_QUOTE)")]
    NotQuote {
        /// The type found.
        found: u16,
    },
    /// A field contains a value that its type does not allow.
    #[error("TPMS_ATTEST byte {offset}: invalid {field} {value}")]
    InvalidValue {
        /// Offset of the field.
        offset: usize,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// The PCR selection names a hash algorithm that imalog does not know.
    #[error("TPMS_ATTEST byte {offset}: PCR selection of unknown hash algorithm {id:#06x}")]
    UnknownAlgorithm {
        /// Offset of the algorithm identifier.
        offset: usize,
        /// The TPM_ALG_ID found.
        id: u16,
    },
    /// Bytes follow the end of the structure.
    #[error("TPMS_ATTEST ends at byte {offset}, but {count} more bytes follow")]
    TrailingBytes {
        /// Offset where the structure ends.
        offset: usize,
        /// Number of extra bytes.
        count: usize,
    },
}

impl QuoteInfo {
    /// Parses a marshalled quote `TPMS_ATTEST`: magic, type, qualifiedSigner,
    /// extraData, clockInfo, firmwareVersion, then the `TPMS_QUOTE_INFO`
    /// (pcrSelect and pcrDigest). The bytes must end where the structure ends.
    pub fn parse(attest: &[u8]) -> Result<Self, AttestError> {
        let mut reader = Reader { bytes: attest, offset: 0 };

        let magic = reader.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(AttestError::Magic { found: magic });
        }
        let attest_type = reader.u16("type")?;
        if attest_type != TPM_ST_ATTEST_QUOTE {
            return Err(AttestError::NotQuote { found: attest_type });
        }
        let qualified_signer = reader.sized("qualifiedSigner")?.to_vec();
        let extra_data = reader.sized("extraData")?.to_vec();

        let clock = reader.u64("clockInfo.clock")?;
        let reset_count = reader.u32("clockInfo.resetCount")?;
        let restart_count = reader.u32("clockInfo.restartCount")?;
        let safe_offset = reader.offset;
        let safe = match reader.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            other => {
                return Err(AttestError::InvalidValue {
                    offset: safe_offset,
                    field: "clockInfo.safe",
                    value: u32::from(other),
                })
            }
        };
        let firmware_version = reader.u64("firmwareVersion")?;

        let pcr_selection = reader.pcr_selection()?;
        let pcr_digest = reader.sized("pcrDigest")?.to_vec();

        if reader.offset != attest.len() {
            return Err(AttestError::TrailingBytes { offset: reader.offset, count: attest.len() - reader.offset });
        }
        Ok(QuoteInfo {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_selection,
            pcr_digest,
        })
    }
}

/// A cursor over big-endian TPM marshalling.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], AttestError> {
        let end = self.offset.checked_add(count).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(AttestError::Truncated { offset: self.bytes.len(), field });
        };
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, AttestError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, AttestError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, AttestError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, AttestError> {
        let high = u64::from(self.u32(field)?);
        let low = u64::from(self.u32(field)?);
        Ok(high << 32 | low)
    }

    /// Reads a TPM2B: a 16-bit size, then that many bytes.
    fn sized(&mut self, field: &'static str) -> Result<&'a [u8], AttestError> {
        let size = self.u16(field)?;
        self.take(usize::from(size), field)
    }

    /// Reads a `TPML_PCR_SELECTION`.
    fn pcr_selection(&mut self) -> Result<Vec<(Bank, Vec<u32>)>, AttestError> {
        let count_offset = self.offset;
        let count = self.u32("pcrSelect.count")?;
        if count > MAX_SELECTION_BANKS {
            return Err(AttestError::InvalidValue { offset: count_offset, field: "pcrSelect.count", value: count });
        }
        let mut selection = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let algorithm_offset = self.offset;
            let id = self.u16("pcrSelect.hash")?;
            let algorithm = HashAlgorithm::from_tpm_alg_id(id)
                .ok_or(AttestError::UnknownAlgorithm { offset: algorithm_offset, id })?;
            let size_offset = self.offset;
            let size_of_select = self.u8("pcrSelect.sizeofSelect")?;
            if size_of_select > MAX_SIZE_OF_SELECT {
                return Err(AttestError::InvalidValue {
                    offset: size_offset,
                    field: "pcrSelect.sizeofSelect",
                    value: u32::from(size_of_select),
                });
            }
            let bitmap = self.take(usize::from(size_of_select), "pcrSelect.pcrSelect")?;
            let pcrs = (0..u32::from(size_of_select) * 8)
                .filter(|&pcr| bitmap[(pcr / 8) as usize] & (1 << (pcr % 8)) != 0)
                .collect();
            selection.push((Bank::new(algorithm), pcrs));
        }
        Ok(selection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a quote attest of PCR 10 in sha1 and PCRs 0 and 23 in sha256.
    fn sample_attest() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        bytes.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        bytes.extend_from_slice(&[0, 2, 0xaa, 0xbb]); // qualifiedSigner
        bytes.extend_from_slice(&[0, 3, 1, 2, 3]); // extraData
        bytes.extend_from_slice(&7u64.to_be_bytes()); // clock
        bytes.extend_from_slice(&2u32.to_be_bytes()); // resetCount
        bytes.extend_from_slice(&1u32.to_be_bytes()); // restartCount
        bytes.push(1); // safe
        bytes.extend_from_slice(&0x1234u64.to_be_bytes()); // firmwareVersion
        bytes.extend_from_slice(&2u32.to_be_bytes()); // pcrSelect.count
        bytes.extend_from_slice(&[0x00, 0x04, 3, 0x00, 0x04, 0x00]); // sha1: PCR 10
        bytes.extend_from_slice(&[0x00, 0x0b, 3, 0x01, 0x00, 0x80]); // sha256: PCRs 0, 23
        bytes.extend_from_slice(&[0, 2, 0xde, 0xad]); // pcrDigest
        bytes
    }

    #[test]
    fn quote_info_parses_fields() {
        let info = QuoteInfo::parse(&sample_attest()).unwrap();
        assert_eq!(info.qualified_signer, [0xaa, 0xbb]);
        assert_eq!(info.extra_data, [1, 2, 3]);
        assert_eq!(info.clock, 7);
        assert_eq!(info.reset_count, 2);
        assert_eq!(info.restart_count, 1);
        assert!(info.safe);
        assert_eq!(info.firmware_version, 0x1234);
        assert_eq!(info.pcr_selection, vec![(Bank::SHA1, vec![10]), (Bank::SHA256, vec![0, 23])]);
        assert_eq!(info.pcr_digest, [0xde, 0xad]);
    }

    #[test]
    fn quote_info_rejects_bad_magic_and_type() {
        let mut attest = sample_attest();
        attest[0] = 0;
        assert_eq!(QuoteInfo::parse(&attest), Err(AttestError::Magic { found: 0x0054_4347 }));

        let mut attest = sample_attest();
        attest[5] = 0x17;
        assert_eq!(QuoteInfo::parse(&attest), Err(AttestError::NotQuote { found: 0x8017 }));
    }

    #[test]
    fn quote_info_reports_truncation_offset() {
        let attest = sample_attest();
        for cut in 0..attest.len() {
            let error = QuoteInfo::parse(&attest[..cut]).unwrap_err();
            assert!(matches!(error, AttestError::Truncated { offset, .. } if offset == cut), "cut {cut}: {error}");
        }
    }

    #[test]
    fn quote_info_rejects_trailing_bytes() {
        let mut attest = sample_attest();
        let length = attest.len();
        attest.push(0);
        assert_eq!(QuoteInfo::parse(&attest), Err(AttestError::TrailingBytes { offset: length, count: 1 }));
    }

    #[test]
    fn quote_info_rejects_unknown_algorithm() {
        let mut attest = sample_attest();
        let offset = attest.len() - 4 - 12;
        attest[offset + 1] = 0x99;
        assert_eq!(QuoteInfo::parse(&attest), Err(AttestError::UnknownAlgorithm { offset, id: 0x0099 }));
    }

    #[test]
    fn quote_info_rejects_invalid_safe_flag() {
        let mut attest = sample_attest();
        let offset = 4 + 2 + 4 + 5 + 8 + 4 + 4;
        attest[offset] = 2;
        assert_eq!(
            QuoteInfo::parse(&attest),
            Err(AttestError::InvalidValue { offset, field: "clockInfo.safe", value: 2 })
        );
    }
}
