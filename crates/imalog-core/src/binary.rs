//! The binary list format (`binary_runtime_measurements[_<bank>]`,
//! `ima_measurements_show` in `ima_fs.c`), decoded record by record from any
//! reader and encoded byte for byte as the kernel writes it.
//!
//! Record layout, integers u32 in the list's byte order:
//!
//! ```text
//! non-ima templates                     ima template (legacy)
//! 0      pcr                            0      pcr
//! 4      template digest (D bytes)      4      template digest (D bytes)
//! 4+D    name length L                  4+D    name length (3)
//! 8+D    template name (L bytes)        8+D    "ima"
//! 8+D+L  template data length T         11+D   file digest (20 bytes, no length)
//! 12+D+L T bytes: per field,            31+D   name length (strlen, NUL excluded)
//!        u32 length then data           35+D   name bytes
//! ```
//!
//! D is 20 in the legacy list and the bank's digest size in per-bank lists.

use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;

use crate::byte_order::ByteOrder;
use crate::error::{DecodeError, DecodeErrorKind, Location};
use crate::field::{self, FieldError, LEGACY_DIGEST_SIZE};
use crate::hash::{Digest, MAX_DIGEST_SIZE};
use crate::record::{Record, TemplateData};
use crate::template::{FieldId, Template, MAX_TEMPLATE_NAME_LEN};

/// Largest template data length accepted. The kernel sets no limit in its
/// lists; measured buffers and signatures are kilobytes, so 16 MiB bounds
/// the memory one corrupt length can claim without rejecting real records.
pub const MAX_TEMPLATE_DATA_LEN: u32 = 16 << 20;

/// Largest legacy `n` length: `IMA_EVENT_NAME_LEN_MAX`.
pub const MAX_LEGACY_NAME_LEN: u32 = 255;

/// Largest PCR index IMA accepts in a policy rule: the width in bits of the
/// per-inode `measured_pcrs` mask on 64-bit kernels.
pub const MAX_PCR_INDEX: u32 = 63;

/// The framing of a binary list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryLayout {
    /// Size of the template digest after the PCR index: 20 in the legacy
    /// list, the bank's digest size in a per-bank list.
    pub digest_size: usize,
    /// Byte order of every integer.
    pub byte_order: ByteOrder,
}

/// Decodes a binary list record by record, in memory bounded by the largest
/// record.
///
/// Records that lie whole in the reader's buffer are decoded straight from
/// it. Any other record, and every record with an error, goes through the
/// item-by-item path, which alone reports errors, so both paths fail the
/// same way.
pub struct BinaryDecoder<R> {
    reader: R,
    layout: BinaryLayout,
    offset: u64,
    index: u64,
    record_start: u64,
    template: Option<Arc<Template>>,
    scratch: Vec<u8>,
    finished: bool,
}

impl<R: BufRead> BinaryDecoder<R> {
    /// A decoder for `reader`; `layout` is usually found with
    /// [`crate::format::detect`].
    pub fn new(reader: R, layout: BinaryLayout) -> Self {
        BinaryDecoder {
            reader,
            layout,
            offset: 0,
            index: 0,
            record_start: 0,
            template: None,
            scratch: Vec::new(),
            finished: false,
        }
    }

    /// The framing in use.
    pub fn layout(&self) -> BinaryLayout {
        self.layout
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records decoded so far.
    pub fn records_read(&self) -> u64 {
        self.index
    }

    /// Where the record most recently returned starts.
    pub fn last_record_location(&self) -> Location {
        Location::Offset(self.record_start)
    }

    /// Decodes the next record into `record`, reusing its buffers. Returns
    /// `Ok(false)` at the end of the input, and after an error has been
    /// returned once.
    pub fn read_record(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        if self.finished {
            return Ok(false);
        }
        match self.decode(record) {
            Ok(true) => {
                self.index += 1;
                Ok(true)
            }
            Ok(false) => {
                self.finished = true;
                Ok(false)
            }
            Err(error) => {
                self.finished = true;
                Err(error)
            }
        }
    }

    fn error(&self, at: u64, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { location: Location::Offset(at), record: self.index, kind }
    }

    /// Reads until `buffer` is full or the input ends; returns the count.
    fn fill(&mut self, buffer: &mut [u8]) -> Result<usize, DecodeError> {
        let mut filled = 0;
        while filled < buffer.len() {
            match self.reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(self.offset + filled as u64, e.into())),
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    fn read_exact_item(&mut self, buffer: &mut [u8], item: &'static str) -> Result<(), DecodeError> {
        let at = self.offset;
        let found = self.fill(buffer)?;
        if found < buffer.len() {
            return Err(
                self.error(at, DecodeErrorKind::Truncated { item, expected: buffer.len() as u64, found: found as u64 })
            );
        }
        Ok(())
    }

    fn read_u32(&mut self, item: &'static str) -> Result<u32, DecodeError> {
        let mut word = [0u8; 4];
        self.read_exact_item(&mut word, item)?;
        Ok(self.layout.byte_order.u32(word))
    }

    /// Reads `len` bytes into the scratch buffer. Lengths above 64 KiB grow
    /// the buffer only as data arrives, so that a corrupt length cannot
    /// allocate more than the input holds.
    fn read_into_scratch(&mut self, len: u32, item: &'static str) -> Result<(), DecodeError> {
        const DIRECT: u32 = 64 * 1024;
        let at = self.offset;
        self.scratch.clear();
        if len <= DIRECT {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(len as usize, 0);
            let found = self.fill(&mut scratch);
            self.scratch = scratch;
            let found = found?;
            if found < len as usize {
                return Err(
                    self.error(at, DecodeErrorKind::Truncated { item, expected: len as u64, found: found as u64 })
                );
            }
            return Ok(());
        }
        let read = (&mut self.reader).take(len as u64).read_to_end(&mut self.scratch);
        match read {
            Ok(found) => {
                self.offset += found as u64;
                if found < len as usize {
                    return Err(
                        self.error(at, DecodeErrorKind::Truncated { item, expected: len as u64, found: found as u64 })
                    );
                }
                Ok(())
            }
            Err(e) => Err(self.error(at, e.into())),
        }
    }

    fn decode(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        self.record_start = self.offset;
        let buffered = loop {
            match self.reader.fill_buf() {
                Ok(buffer) => break buffer,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(self.offset, e.into())),
            }
        };
        if buffered.is_empty() {
            return Ok(false);
        }
        if let Some(used) = decode_buffered(buffered, self.layout, &mut self.template, &mut self.scratch, record) {
            self.reader.consume(used);
            self.offset += used as u64;
            return Ok(true);
        }
        self.decode_items(record)
    }

    fn decode_items(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        let order = self.layout.byte_order;

        // PCR index, template digest and name length in one read.
        let digest_size = self.layout.digest_size.min(MAX_DIGEST_SIZE);
        let mut header = [0u8; 4 + MAX_DIGEST_SIZE + 4];
        let header = &mut header[..8 + digest_size];
        let found = self.fill(header)?;
        if found == 0 {
            return Ok(false);
        }
        if found < 4 {
            let kind = if self.index == 0 {
                DecodeErrorKind::Truncated { item: "PCR index", expected: 4, found: found as u64 }
            } else {
                DecodeErrorKind::TrailingBytes { count: found as u64 }
            };
            return Err(self.error(self.record_start, kind));
        }
        let word = [header[0], header[1], header[2], header[3]];
        let pcr = order.u32(word);
        if pcr > MAX_PCR_INDEX {
            let other = match order {
                ByteOrder::Little => ByteOrder::Big,
                ByteOrder::Big => ByteOrder::Little,
            };
            let hint = if other.u32(word) <= MAX_PCR_INDEX { "; the list may have the other byte order" } else { "" };
            return Err(self.error(self.record_start, DecodeErrorKind::PcrOutOfRange { pcr: pcr as u64, hint }));
        }
        if found < 4 + digest_size {
            return Err(self.error(
                self.record_start + 4,
                DecodeErrorKind::Truncated {
                    item: "template digest",
                    expected: digest_size as u64,
                    found: (found - 4) as u64,
                },
            ));
        }
        let name_at = self.record_start + 4 + digest_size as u64;
        if found < header.len() {
            return Err(self.error(
                name_at,
                DecodeErrorKind::Truncated {
                    item: "template name length",
                    expected: 4,
                    found: (found - 4 - digest_size) as u64,
                },
            ));
        }
        let digest = &header[4..4 + digest_size];
        let name_len = order.u32([
            header[4 + digest_size],
            header[5 + digest_size],
            header[6 + digest_size],
            header[7 + digest_size],
        ]);
        if name_len as usize > MAX_TEMPLATE_NAME_LEN {
            return Err(self.error(
                name_at,
                DecodeErrorKind::ImpossibleLength {
                    item: "template name length",
                    value: name_len as u64,
                    limit: MAX_TEMPLATE_NAME_LEN as u64,
                },
            ));
        }
        let name_start = self.offset;
        let mut name_buffer = [0u8; MAX_TEMPLATE_NAME_LEN];
        let name = &mut name_buffer[..name_len as usize];
        self.read_exact_item(name, "template name")?;
        let name = &name_buffer[..name_len as usize];
        let template = match &self.template {
            Some(cached) if cached.name().as_bytes() == name => Arc::clone(cached),
            _ => {
                let looked_up = Template::lookup(name).map_err(|e| self.error(name_start, e.into()))?;
                self.template = Some(Arc::clone(&looked_up));
                looked_up
            }
        };

        record.pcr = pcr;
        record.digest = Digest::from_slice(digest).unwrap_or_else(|| Digest::zero(0));
        record.byte_order = order;
        record.data.clear();
        if template.is_legacy_ima() {
            self.decode_legacy_fields(&mut record.data)?;
        } else {
            self.decode_fields(&template, &mut record.data)?;
        }
        record.template = template;
        Ok(true)
    }

    fn decode_legacy_fields(&mut self, data: &mut TemplateData) -> Result<(), DecodeError> {
        let mut file_digest = [0u8; LEGACY_DIGEST_SIZE];
        self.read_exact_item(&mut file_digest, "ima template file digest")?;
        let len_at = self.offset;
        let name_len = self.read_u32("ima template name length")?;
        if name_len > MAX_LEGACY_NAME_LEN {
            return Err(self.error(
                len_at,
                DecodeErrorKind::ImpossibleLength {
                    item: "ima template name length",
                    value: name_len as u64,
                    limit: MAX_LEGACY_NAME_LEN as u64,
                },
            ));
        }
        let name_at = self.offset;
        self.read_into_scratch(name_len, "ima template name")?;
        if let Some(position) = self.scratch.iter().position(|&b| b == 0) {
            return Err(self.error(
                name_at + position as u64,
                DecodeErrorKind::field(1, FieldError::InteriorNul { field: FieldId::N, position }),
            ));
        }
        self.scratch.push(0);
        // Two fields of at most 256 bytes always fit.
        if data.push(&file_digest).is_err() || data.push(&self.scratch).is_err() {
            return Err(self.error(name_at, too_many_fields("ima", 2)));
        }
        Ok(())
    }

    fn decode_fields(&mut self, template: &Template, data: &mut TemplateData) -> Result<(), DecodeError> {
        let len_at = self.offset;
        let total = self.read_u32("template data length")?;
        if total > MAX_TEMPLATE_DATA_LEN {
            return Err(self.error(
                len_at,
                DecodeErrorKind::ImpossibleLength {
                    item: "template data length",
                    value: total as u64,
                    limit: MAX_TEMPLATE_DATA_LEN as u64,
                },
            ));
        }
        let data_at = self.offset;
        self.read_into_scratch(total, "template data")?;

        let order = self.layout.byte_order;
        let fields = template.fields();
        let mut ends = [0u32; crate::template::MAX_FIELDS];
        let mut position = 0usize;
        for (index, id) in fields.iter().enumerate() {
            let field_at = data_at + position as u64;
            let remaining = self.scratch.len() - position;
            if remaining < 4 {
                return Err(self.error(
                    field_at,
                    DecodeErrorKind::FieldCount {
                        template: template.name().to_string(),
                        expected: fields.len(),
                        found: format!("ends before the length of field {index} ({id})"),
                    },
                ));
            }
            let word = [
                self.scratch[position],
                self.scratch[position + 1],
                self.scratch[position + 2],
                self.scratch[position + 3],
            ];
            let len = order.u32(word) as usize;
            if len > remaining - 4 {
                return Err(self.error(
                    field_at,
                    DecodeErrorKind::FieldOverrun { value: len as u64, left: (remaining - 4) as u64 },
                ));
            }
            let bytes = &self.scratch[position + 4..position + 4 + len];
            if let Err(source) = field::validate(*id, bytes, false) {
                return Err(self.error(field_at + 4, DecodeErrorKind::field(index, source)));
            }
            if order == ByteOrder::Big {
                // Keep the section in little-endian layout, as TemplateData stores it.
                self.scratch[position..position + 4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            position += 4 + len;
            // Templates have at most 15 fields and data at most 16 MiB.
            match ends.get_mut(index) {
                Some(end) => *end = position as u32,
                None => return Err(self.error(field_at, too_many_fields(template.name(), fields.len()))),
            }
        }
        if position != self.scratch.len() {
            return Err(self.error(
                data_at + position as u64,
                DecodeErrorKind::FieldCount {
                    template: template.name().to_string(),
                    expected: fields.len(),
                    found: format!("has {} bytes after the last field", self.scratch.len() - position),
                },
            ));
        }
        data.replace_section(&mut self.scratch, &ends[..fields.len()]);
        Ok(())
    }
}

/// Decodes one non-legacy record that lies whole in `buffer` and returns the
/// bytes it used, or `None` when the record is incomplete, legacy, or
/// invalid in any way; the caller then decodes it item by item.
fn decode_buffered(
    buffer: &[u8],
    layout: BinaryLayout,
    cache: &mut Option<Arc<Template>>,
    scratch: &mut Vec<u8>,
    record: &mut Record,
) -> Option<usize> {
    let order = layout.byte_order;
    let size = layout.digest_size;
    let u32_at = |at: usize| -> Option<u32> { Some(order.u32(buffer.get(at..at + 4)?.try_into().ok()?)) };

    let pcr = u32_at(0)?;
    let digest = buffer.get(4..4 + size)?;
    let name_len = u32_at(4 + size)? as usize;
    if pcr > MAX_PCR_INDEX || name_len > MAX_TEMPLATE_NAME_LEN {
        return None;
    }
    let name = buffer.get(8 + size..8 + size + name_len)?;
    let template = match cache.as_ref() {
        Some(cached) if cached.name().as_bytes() == name => Arc::clone(cached),
        _ => {
            let looked_up = Template::lookup(name).ok()?;
            *cache = Some(Arc::clone(&looked_up));
            looked_up
        }
    };
    if template.is_legacy_ima() {
        return None;
    }
    let data_at = 12 + size + name_len;
    let total = u32_at(8 + size + name_len)?;
    if total > MAX_TEMPLATE_DATA_LEN {
        return None;
    }
    let section = buffer.get(data_at..data_at + total as usize)?;

    let fields = template.fields();
    let mut ends = [0u32; crate::template::MAX_FIELDS];
    let mut position = 0usize;
    scratch.clear();
    scratch.extend_from_slice(section);
    for (index, id) in fields.iter().enumerate() {
        let len = order.u32(scratch.get(position..position + 4)?.try_into().ok()?) as usize;
        let bytes = scratch.get(position + 4..position + 4 + len)?;
        field::validate(*id, bytes, false).ok()?;
        if order == ByteOrder::Big {
            scratch[position..position + 4].copy_from_slice(&(len as u32).to_le_bytes());
        }
        position += 4 + len;
        *ends.get_mut(index)? = position as u32;
    }
    if position != scratch.len() {
        return None;
    }

    record.pcr = pcr;
    record.digest = Digest::from_slice(digest)?;
    record.byte_order = order;
    record.data.replace_section(scratch, &ends[..fields.len()]);
    record.template = template;
    Some(data_at + total as usize)
}

fn too_many_fields(template: &str, expected: usize) -> DecodeErrorKind {
    DecodeErrorKind::FieldCount {
        template: template.to_string(),
        expected,
        found: "does not fit in 15 fields".to_string(),
    }
}

impl<R: BufRead> Iterator for BinaryDecoder<R> {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = empty_record();
        match self.read_record(&mut record) {
            Ok(true) => Some(Ok(record)),
            Ok(false) => None,
            Err(error) => Some(Err(error)),
        }
    }
}

/// A placeholder record for decoders to fill.
pub fn empty_record() -> Record {
    Record {
        pcr: 0,
        template: Template::default_template(),
        data: TemplateData::new(),
        digest: Digest::zero(0),
        byte_order: ByteOrder::Little,
    }
}

/// Appends the kernel's binary encoding of `record` to `out`, with
/// `digest` as the template digest. `order` is the list's byte order.
pub fn encode_record(record: &Record, digest: &Digest, order: ByteOrder, out: &mut Vec<u8>) {
    let name = record.template.name().as_bytes();
    out.extend_from_slice(&order.u32_bytes(record.pcr));
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(&order.u32_bytes(name.len() as u32));
    out.extend_from_slice(name);

    if record.template.is_legacy_ima() {
        // 'd' without a length word, 'n' as strlen then the bytes.
        for (id, data) in record.fields() {
            if id == FieldId::N {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                out.extend_from_slice(&order.u32_bytes(end as u32));
                out.extend_from_slice(&data[..end]);
            } else {
                out.extend_from_slice(data);
            }
        }
        return;
    }

    out.extend_from_slice(&order.u32_bytes(record.data.template_data_len() as u32));
    if order == ByteOrder::Little {
        out.extend_from_slice(record.data.le_section());
        return;
    }
    for data in record.data.fields() {
        out.extend_from_slice(&order.u32_bytes(data.len() as u32));
        out.extend_from_slice(data);
    }
}

/// Writes records in the binary format.
pub struct BinaryEncoder<W> {
    writer: W,
    order: ByteOrder,
    buffer: Vec<u8>,
}

impl<W: Write> BinaryEncoder<W> {
    /// An encoder writing in `order`.
    pub fn new(writer: W, order: ByteOrder) -> Self {
        BinaryEncoder { writer, order, buffer: Vec::new() }
    }

    /// Writes one record with `digest` as its template digest.
    pub fn write_record(&mut self, record: &Record, digest: &Digest) -> io::Result<()> {
        self.buffer.clear();
        encode_record(record, digest, self.order, &mut self.buffer);
        self.writer.write_all(&self.buffer)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}
