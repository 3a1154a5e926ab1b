//! Big-endian TPM 2.0 marshalling of the structures around a quote: the
//! algorithm identifiers (TPM_ALG_ID) of the TPM 2.0 Library specification,
//! a reader whose errors name structure, field and byte offset, and a
//! writer.

/// `TPM_ALG_RSA`.
pub(crate) const TPM_ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_NULL`.
pub(crate) const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA`, RSASSA-PKCS1-v1_5.
pub(crate) const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`, RSASSA-PSS.
pub(crate) const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub(crate) const TPM_ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_ECC`.
pub(crate) const TPM_ALG_ECC: u16 = 0x0023;
/// `TPM_ECC_NIST_P256`.
pub(crate) const TPM_ECC_NIST_P256: u16 = 0x0003;
/// `TPM_ECC_NIST_P384`.
pub(crate) const TPM_ECC_NIST_P384: u16 = 0x0004;

/// A marshalled TPM structure that cannot be parsed. Offsets count from the
/// first byte of the input, also for structures nested in a TPM2B.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarshalError {
    /// The bytes end inside a field.
    #[error("{structure} is truncated: it ends at byte {offset}, inside {field}")]
    Truncated {
        /// The structure being read, such as `TPMT_PUBLIC`.
        structure: &'static str,
        /// The field being read.
        field: &'static str,
        /// Offset of the first missing byte.
        offset: usize,
    },
    /// A field contains a value that the structure or an attestation key
    /// does not allow.
    #[error("{structure} byte {offset}: invalid {field} {value:#x}: {reason}")]
    InvalidValue {
        /// The structure being read.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// The value found (for a sized buffer, its size).
        value: u64,
        /// The rule that the value violates.
        reason: &'static str,
    },
    /// Bytes follow the end of the structure.
    #[error("{structure} ends at byte {offset}, but {count} more bytes follow")]
    TrailingBytes {
        /// The structure.
        structure: &'static str,
        /// Offset where the structure ends.
        offset: usize,
        /// Number of extra bytes.
        count: usize,
    },
}

/// A cursor over big-endian TPM marshalling that names `structure` in its
/// errors.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], structure: &'static str) -> Self {
        Reader { bytes, offset: 0, structure }
    }

    /// Creates a reader that starts at `offset`, for a structure nested in a
    /// TPM2B, so that offsets stay relative to the whole input.
    pub(crate) fn nested(bytes: &'a [u8], offset: usize, structure: &'static str) -> Self {
        Reader { bytes, offset, structure }
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], MarshalError> {
        let end = self.offset.checked_add(count).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(MarshalError::Truncated { structure: self.structure, field, offset: self.bytes.len() });
        };
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MarshalError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, MarshalError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Reads a TPM2B: a 16-bit size, then that many bytes.
    pub(crate) fn sized(&mut self, field: &'static str) -> Result<&'a [u8], MarshalError> {
        let size = self.u16(field)?;
        self.take(usize::from(size), field)
    }

    pub(crate) fn invalid(&self, field: &'static str, offset: usize, value: u64, reason: &'static str) -> MarshalError {
        MarshalError::InvalidValue { structure: self.structure, field, offset, value, reason }
    }

    /// Fails unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), MarshalError> {
        if self.offset == self.bytes.len() {
            Ok(())
        } else {
            Err(MarshalError::TrailingBytes {
                structure: self.structure,
                offset: self.offset,
                count: self.bytes.len() - self.offset,
            })
        }
    }
}

/// Appends big-endian TPM marshalling to a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, value: u8) -> &mut Self {
        self.bytes.push(value);
        self
    }

    pub(crate) fn u16(&mut self, value: u16) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Appends a TPM2B. Callers pass buffers of at most a few hundred bytes
    /// (digests, nonces, keys and signatures of at most 4096 bits), so the
    /// size fits the 16-bit field.
    pub(crate) fn sized(&mut self, bytes: &[u8]) -> &mut Self {
        let size = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.u16(size);
        self.raw(&bytes[..usize::from(size)])
    }
}
