//! One record of a measurement list, and its template digest.
//!
//! A record keeps its template data exactly as logged: the fields' bytes in
//! one buffer plus where each field ends. Everything else (binary and ASCII
//! encodings, template digests in any bank, typed field views) is derived
//! from those bytes.

use std::sync::Arc;

use crate::bank::Bank;
use crate::byte_order::ByteOrder;
use crate::field::{self, FieldError, FieldValue, LEGACY_NAME_BUFFER};
use crate::hash::{Digest, HashAlgorithm};
use crate::template::{FieldId, Template, MAX_FIELDS};

/// The data of a template's fields, stored as a little-endian kernel writes
/// them in a binary list: for each field a u32 little-endian length, then
/// the data. For every template but `ima` these bytes are also exactly the
/// template digest input of a little-endian kernel, so decoding can hand its
/// buffer over and hashing needs one call.
#[derive(Clone, Debug, Default)]
pub struct TemplateData {
    bytes: Vec<u8>,
    /// `ends[i]` is the end offset of field `i`'s data in `bytes`; only the
    /// first `count` entries are meaningful.
    ends: [u32; MAX_FIELDS],
    count: u8,
    /// Offset of the length word of a field being written with
    /// `start_field` and `finish_field`.
    open: Option<u32>,
}

/// The template data would exceed 15 fields or 4 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template data is full: at most 15 fields and 4 GiB")]
pub struct TemplateDataFull;

/// Equal when the fields are: `ends` past `count` may hold stale offsets
/// from a longer record that a decoder wrote into the same buffers.
impl PartialEq for TemplateData {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count
            && self.bytes == other.bytes
            && self.ends[..self.len()] == other.ends[..other.len()]
            && self.open == other.open
    }
}

impl Eq for TemplateData {}

impl TemplateData {
    /// Empty template data.
    pub fn new() -> Self {
        TemplateData::default()
    }

    /// Builds template data from field slices.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, TemplateDataFull> {
        let mut data = TemplateData::new();
        for field in fields {
            data.push(field)?;
        }
        Ok(data)
    }

    /// Removes every field, keeping the allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
        self.open = None;
    }

    /// Appends a field.
    pub fn push(&mut self, field: &[u8]) -> Result<(), TemplateDataFull> {
        self.start_field()?;
        self.bytes.extend_from_slice(field);
        self.finish_field()
    }

    /// Starts a field whose data the caller appends to [`Self::buffer_mut`]
    /// before calling `finish_field`.
    pub(crate) fn start_field(&mut self) -> Result<(), TemplateDataFull> {
        if self.count as usize >= MAX_FIELDS {
            return Err(TemplateDataFull);
        }
        let at = u32::try_from(self.bytes.len()).map_err(|_| TemplateDataFull)?;
        self.bytes.extend_from_slice(&[0; 4]);
        self.open = Some(at);
        Ok(())
    }

    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub(crate) fn finish_field(&mut self) -> Result<(), TemplateDataFull> {
        let at = self.open.take().ok_or(TemplateDataFull)? as usize;
        let end = u32::try_from(self.bytes.len()).map_err(|_| TemplateDataFull)?;
        let len = end as usize - at - 4;
        self.bytes[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.ends[self.count as usize] = end;
        self.count += 1;
        Ok(())
    }

    /// Takes a template data section that the caller has split into fields:
    /// `section` holds little-endian length words and data, and `ends` the
    /// end of each field's data. The previous buffer is returned in
    /// `section` for reuse.
    pub(crate) fn replace_section(&mut self, section: &mut Vec<u8>, ends: &[u32]) {
        std::mem::swap(&mut self.bytes, section);
        let count = ends.len().min(MAX_FIELDS);
        self.ends[..count].copy_from_slice(&ends[..count]);
        self.count = count as u8;
        self.open = None;
    }

    fn range(&self, index: usize) -> Option<std::ops::Range<usize>> {
        if index >= self.len() {
            return None;
        }
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize } + 4;
        Some(start..self.ends[index] as usize)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The data of field `index`.
    pub fn field(&self, index: usize) -> Option<&[u8]> {
        self.bytes.get(self.range(index)?)
    }

    /// Mutable data of field `index`.
    pub(crate) fn field_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        let range = self.range(index)?;
        self.bytes.get_mut(range)
    }

    /// Every field's data, in order.
    pub fn fields(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).filter_map(move |i| self.field(i))
    }

    /// The fields as a little-endian kernel lays them out in a binary list:
    /// each u32 length, then the data.
    pub fn le_section(&self) -> &[u8] {
        &self.bytes
    }

    /// `template_data_len` as the kernel counts it: each field's length
    /// plus its 4-byte length word.
    pub fn template_data_len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// One measurement list record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// PCR the record was extended into.
    pub pcr: u32,
    /// The template descriptor.
    pub template: Arc<Template>,
    /// The field data.
    pub data: TemplateData,
    /// The template digest as logged, in the bank of the list the record
    /// came from; all zero for a violation.
    pub digest: Digest,
    /// Byte order of the list the record came from; it decides the length
    /// words in the digest input and the integer fields' encoding.
    pub byte_order: ByteOrder,
}

/// A record whose fields do not fit its template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Field count differs from the template's.
    #[error("template '{template}' has {expected} fields, but the template data holds {found}")]
    FieldCount {
        /// Template name.
        template: String,
        /// Fields the template defines.
        expected: usize,
        /// Fields present.
        found: usize,
    },
    /// A field is malformed.
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl Record {
    /// Builds a record and checks its fields against the template.
    pub fn new(pcr: u32, template: Arc<Template>, data: TemplateData, digest: Digest) -> Result<Self, RecordError> {
        let record = Record { pcr, template, data, digest, byte_order: ByteOrder::Little };
        record.validate()?;
        Ok(record)
    }

    /// Checks field count and each field's structure.
    pub fn validate(&self) -> Result<(), RecordError> {
        let fields = self.template.fields();
        if fields.len() != self.data.len() {
            return Err(RecordError::FieldCount {
                template: self.template.name().to_string(),
                expected: fields.len(),
                found: self.data.len(),
            });
        }
        let legacy = self.template.is_legacy_ima();
        for (id, data) in fields.iter().zip(self.data.fields()) {
            field::validate(*id, data, legacy)?;
        }
        Ok(())
    }

    /// True when the logged template digest is all zero, which marks a
    /// violation: the PCR was extended with the bank's 0xFF pattern.
    pub fn is_violation(&self) -> bool {
        self.digest.is_all_zero()
    }

    /// Iterates over (field id, field data).
    pub fn fields(&self) -> impl Iterator<Item = (FieldId, &[u8])> + '_ {
        self.template.fields().iter().copied().zip(self.data.fields())
    }

    /// The data of the first field with this id.
    pub fn field(&self, id: FieldId) -> Option<&[u8]> {
        self.fields().find(|(field, _)| *field == id).map(|(_, data)| data)
    }

    /// The event name (`n-ng` or `n`) without its NUL.
    pub fn event_name(&self) -> Option<&[u8]> {
        let data = self.field(FieldId::NNg).or_else(|| self.field(FieldId::N))?;
        Some(data.strip_suffix(&[0]).unwrap_or(data))
    }

    /// The typed view of every field.
    pub fn field_values(&self) -> impl Iterator<Item = (FieldId, Result<FieldValue<'_>, FieldError>)> + '_ {
        let order = self.byte_order;
        self.fields().map(move |(id, data)| (id, FieldValue::decode(id, data, order)))
    }

    /// Computes the template digest with one hash algorithm (`ima_calc_field_array_hash_tfm`).
    ///
    /// For every template but `ima` the input is each field's u32 length (in
    /// the record's byte order) followed by its bytes, which is exactly the
    /// template data part of a binary record. The `ima` template hashes the
    /// 20-byte digest, then the name in a zero-filled 256-byte buffer.
    pub fn template_digest(&self, algorithm: HashAlgorithm) -> Digest {
        if !self.template.is_legacy_ima() && self.byte_order == ByteOrder::Little {
            return algorithm.digest(self.data.le_section());
        }
        let mut hasher = algorithm.hasher();
        if self.template.is_legacy_ima() {
            for (id, data) in self.fields() {
                if id == FieldId::N && data.len() <= LEGACY_NAME_BUFFER {
                    let mut buffer = [0u8; LEGACY_NAME_BUFFER];
                    buffer[..data.len()].copy_from_slice(data);
                    hasher.update(&buffer);
                } else {
                    hasher.update(data);
                }
            }
        } else {
            for data in self.data.fields() {
                hasher.update(&self.byte_order.u32_bytes(data.len() as u32));
                hasher.update(data);
            }
        }
        hasher.finish()
    }

    /// Computes the template digest the kernel stores in a bank's slot: the
    /// bank's own hash, or padded SHA-1 when the kernel cannot hash with it.
    /// Violations are all zero in every bank.
    pub fn bank_digest(&self, bank: &Bank) -> Digest {
        if self.is_violation() {
            return Digest::zero(bank.digest_size());
        }
        self.computed_bank_digest(bank)
    }

    /// Like [`bank_digest`](Self::bank_digest), but always hashes the
    /// template data, even for a violation.
    pub fn computed_bank_digest(&self, bank: &Bank) -> Digest {
        match bank.template_algorithm() {
            Some(algorithm) => self.template_digest(algorithm),
            None => bank.pad_sha1(&self.template_digest(HashAlgorithm::Sha1)),
        }
    }

    /// The value the kernel extends into `bank` for this record.
    pub fn extend_value(&self, bank: &Bank) -> Digest {
        if self.is_violation() {
            bank.violation_digest()
        } else {
            self.computed_bank_digest(bank)
        }
    }

    /// Rewrites the record as a kernel of the other byte order would have
    /// logged it: the integer fields change encoding, so the logged digest
    /// must be recomputed by the caller.
    pub fn set_byte_order(&mut self, order: ByteOrder) {
        if order == self.byte_order {
            return;
        }
        let ids: Vec<FieldId> = self.template.fields().to_vec();
        for (index, id) in ids.into_iter().enumerate() {
            if let Some(data) = self.data.field_mut(index) {
                field::swap_byte_order(id, data);
            }
        }
        self.byte_order = order;
    }

    /// Serialized size as the kernel's `binary_runtime_size` counters
    /// estimate it: `4 + 20 + 4 + strlen(descriptor name) + 4 +
    /// template_data_len`. Custom templates have an empty descriptor name.
    pub fn kexec_size_estimate(&self) -> u64 {
        let descriptor_name_len = if crate::template::Template::builtin(self.template.name()).is_some() {
            self.template.name().len() as u64
        } else {
            0
        };
        4 + 20 + 4 + descriptor_name_len + 4 + self.data.template_data_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ima_ng(path: &str) -> Record {
        let mut digest_field = b"sha256:\0".to_vec();
        digest_field.extend_from_slice(&[0xab; 32]);
        let mut name = path.as_bytes().to_vec();
        name.push(0);
        let data = TemplateData::from_fields([digest_field.as_slice(), name.as_slice()]).unwrap();
        Record::new(10, Template::builtin("ima-ng").unwrap(), data, Digest::zero(20)).unwrap()
    }

    #[test]
    fn template_data_len_counts_length_words() {
        let record = ima_ng("/usr/bin/ls");
        // The worked example: 4 + 40 + 4 + 12 = 60 bytes.
        assert_eq!(record.data.template_data_len(), 60);
    }

    #[test]
    fn template_digest_hashes_length_words() {
        let record = ima_ng("/usr/bin/ls");
        let mut input = Vec::new();
        for field in record.data.fields() {
            input.extend_from_slice(&(field.len() as u32).to_le_bytes());
            input.extend_from_slice(field);
        }
        assert_eq!(input.len(), 60);
        assert_eq!(record.template_digest(HashAlgorithm::Sha1), HashAlgorithm::Sha1.digest(&input));
    }

    #[test]
    fn big_endian_changes_template_digest() {
        let mut record = ima_ng("/a");
        let little = record.template_digest(HashAlgorithm::Sha256);
        record.byte_order = ByteOrder::Big;
        assert_ne!(record.template_digest(HashAlgorithm::Sha256), little);
    }

    #[test]
    fn legacy_digest_pads_name_to_256() {
        let data = TemplateData::from_fields([&[0x11u8; 20][..], b"/init\0"]).unwrap();
        let record = Record::new(10, Template::builtin("ima").unwrap(), data, Digest::zero(20)).unwrap();
        let mut input = vec![0x11u8; 20];
        let mut name = [0u8; 256];
        name[..5].copy_from_slice(b"/init");
        input.extend_from_slice(&name);
        assert_eq!(record.template_digest(HashAlgorithm::Sha1), HashAlgorithm::Sha1.digest(&input));
    }

    #[test]
    fn template_data_equality_ignores_stale_field_ends() {
        let mut reused = TemplateData::from_fields([&b"a"[..], b"b", b"c"]).unwrap();
        reused.clear();
        reused.push(b"x").unwrap();
        assert_eq!(reused, TemplateData::from_fields([&b"x"[..]]).unwrap());
        assert_ne!(reused, TemplateData::from_fields([&b"y"[..]]).unwrap());
    }

    #[test]
    fn field_count_mismatch_is_rejected() {
        let data = TemplateData::from_fields([&b"\0"[..]]).unwrap();
        let error = Record::new(10, Template::builtin("ima-ng").unwrap(), data, Digest::zero(20)).unwrap_err();
        assert_eq!(error, RecordError::FieldCount { template: "ima-ng".into(), expected: 2, found: 1 });
    }

    #[test]
    fn violation_extends_ff_and_logs_zero() {
        let record = ima_ng("/tmp/x");
        assert!(record.is_violation());
        assert_eq!(record.bank_digest(&Bank::SHA256), Digest::zero(32));
        assert!(record.extend_value(&Bank::SHA256).as_bytes().iter().all(|&b| b == 0xff));
    }
}
