//! The ASCII list format (`ascii_runtime_measurements[_<bank>]`,
//! `ima_ascii_measurements_show` in `ima_fs.c`).
//!
//! One line per record:
//!
//! ```text
//! printf("%2d ", pcr)  hex(template digest)  " " template name  { " " field }*  "\n"
//! ```
//!
//! Each field is rendered by its data format (see [`crate::field`]); an
//! empty field renders as nothing, so its separating space remains and, for
//! example, an `ima-sig` line without a signature ends in a space.
//!
//! Parsing splits at single spaces. An event name (`n`, `n-ng`) may itself
//! contain spaces on kernels that did not replace them with `_`, so the
//! fields before the first name are split from the left, those after the
//! last one from the right, and what remains in between is the name.

use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;

use crate::byte_order::ByteOrder;
use crate::error::{DecodeError, DecodeErrorKind, Location};
use crate::field;
use crate::hash::{Digest, MAX_DIGEST_SIZE};
use crate::hex;
use crate::record::Record;
use crate::template::{FieldId, Template};

/// Largest line accepted: a record's template data is at most 16 MiB, which
/// renders as at most 32 MiB of hex, plus the header columns.
pub const MAX_LINE_LEN: usize = (32 << 20) + 1024;

/// Decodes an ASCII list line by line.
pub struct AsciiDecoder<R> {
    reader: R,
    digest_size: Option<usize>,
    byte_order: ByteOrder,
    line: Vec<u8>,
    line_number: u64,
    index: u64,
    offset: u64,
    template: Option<Arc<Template>>,
    short_lines: u64,
    finished: bool,
}

impl<R: BufRead> AsciiDecoder<R> {
    /// A decoder for `reader`. `digest_size` fixes the template digest width
    /// (20 for the legacy list); `None` takes it from the first line.
    /// `byte_order` is the byte order of the kernel that wrote the list,
    /// which the text cannot show but which template digests depend on.
    pub fn new(reader: R, digest_size: Option<usize>, byte_order: ByteOrder) -> Self {
        AsciiDecoder {
            reader,
            digest_size,
            byte_order,
            line: Vec::new(),
            line_number: 0,
            index: 0,
            offset: 0,
            template: None,
            short_lines: 0,
            finished: false,
        }
    }

    /// The template digest width, once known.
    pub fn digest_size(&self) -> Option<usize> {
        self.digest_size
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records decoded so far.
    pub fn records_read(&self) -> u64 {
        self.index
    }

    /// Lines read so far that lacked the separating spaces of empty
    /// trailing fields; the fields were read as empty.
    pub fn short_lines(&self) -> u64 {
        self.short_lines
    }

    /// The line of the record most recently returned.
    pub fn last_record_location(&self) -> Location {
        Location::Line(self.line_number)
    }

    fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { location: Location::Line(self.line_number), record: self.index, kind }
    }

    /// Decodes the next line into `record`. Returns `Ok(false)` at the end
    /// of the input, and after an error has been returned once.
    pub fn read_record(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        if self.finished {
            return Ok(false);
        }
        let result = self.decode(record);
        match result {
            Ok(true) => self.index += 1,
            Ok(false) | Err(_) => self.finished = true,
        }
        result
    }

    fn read_line(&mut self) -> Result<bool, DecodeError> {
        self.line.clear();
        let limit = (MAX_LINE_LEN + 1) as u64;
        let read = Read::take(&mut self.reader, limit).read_until(b'\n', &mut self.line);
        let count = match read {
            Ok(count) => count,
            Err(e) => {
                self.line_number += 1;
                return Err(self.error(e.into()));
            }
        };
        if count == 0 {
            return Ok(false);
        }
        self.line_number += 1;
        self.offset += count as u64;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        } else if count as u64 == limit {
            return Err(self.error(DecodeErrorKind::ImpossibleLength {
                item: "line length",
                value: count as u64,
                limit: MAX_LINE_LEN as u64,
            }));
        }
        Ok(true)
    }

    fn decode(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        if !self.read_line()? {
            return Ok(false);
        }
        let line = std::mem::take(&mut self.line);
        let result = self.parse_line(&line, record);
        self.line = line;
        result.map(|()| true)
    }

    fn parse_line(&mut self, line: &[u8], record: &mut Record) -> Result<(), DecodeError> {
        let bad_line = |message: String| DecodeErrorKind::Line(message);
        if line.is_empty() {
            return Err(
                self.error(bad_line("empty line; expected '<pcr> <template digest> <template name> <fields>'".into()))
            );
        }
        if line.last() == Some(&b'\r') {
            return Err(self.error(bad_line("line ends with CR LF; measurement lists end lines with LF only".into())));
        }

        // Column 1: "%2d", so one-digit PCRs have a leading space.
        let body = line.strip_prefix(b" ").unwrap_or(line);
        let consumed = line.len() - body.len();
        let (pcr_text, rest) = split_space(body);
        let pcr = parse_pcr(pcr_text).ok_or_else(|| {
            self.error(bad_line(format!("expected a PCR index (0 to 63) in column 1, found {:?}", excerpt(pcr_text))))
        })?;
        let rest = rest.ok_or_else(|| self.error(bad_line("line ends after the PCR index".into())))?;
        let digest_column = consumed + pcr_text.len() + 2;

        // Column 2: the template digest.
        let (digest_text, rest) = split_space(rest);
        let digest = self.parse_digest(digest_text, digest_column)?;
        let rest = rest.ok_or_else(|| self.error(bad_line("line ends after the template digest".into())))?;

        // Column 3: the template name.
        let (name, rest) = split_space(rest);
        let template = match &self.template {
            Some(cached) if cached.name().as_bytes() == name => Arc::clone(cached),
            _ => {
                let looked_up = Template::lookup(name).map_err(|e| self.error(e.into()))?;
                self.template = Some(Arc::clone(&looked_up));
                looked_up
            }
        };
        let rest = rest.ok_or_else(|| {
            self.error(bad_line(format!(
                "line ends after the template name; template '{}' has fields",
                template.name()
            )))
        })?;

        record.pcr = pcr;
        record.digest = digest;
        record.byte_order = self.byte_order;
        record.data.clear();
        let (texts, missing) = split_fields_lenient(template.fields(), rest).map_err(|found| {
            self.error(DecodeErrorKind::FieldCount {
                template: template.name().to_string(),
                expected: template.fields().len(),
                found,
            })
        })?;
        if missing > 0 {
            self.short_lines += 1;
        }
        let legacy = template.is_legacy_ima();
        for (position, (id, text)) in template.fields().iter().zip(texts).enumerate() {
            let parsed = record.data.start_field().map_err(|_| DecodeErrorKind::FieldCount {
                template: template.name().to_string(),
                expected: template.fields().len(),
                found: "does not fit in 15 fields".into(),
            });
            let parsed = parsed.and_then(|()| {
                let buffer = record.data.buffer_mut();
                let start = buffer.len();
                field::parse_ascii(*id, text, self.byte_order, buffer)
                    .and_then(|()| field::validate(*id, &buffer[start..], legacy))
                    .map_err(|source| DecodeErrorKind::Field { position, source })
            });
            parsed.map_err(|kind| self.error(kind))?;
            let _ = record.data.finish_field();
        }
        record.template = template;
        Ok(())
    }

    fn parse_digest(&mut self, text: &[u8], column: usize) -> Result<Digest, DecodeError> {
        if let Some(colon) = text.iter().position(|&b| b == b':') {
            return Err(self.error(DecodeErrorKind::Line(format!(
                "template digest column starts with '{}'; upstream kernels print bare hex, so this list \
                 comes from a patched kernel and is not supported",
                excerpt(&text[..=colon])
            ))));
        }
        let bytes = hex::decode(text).map_err(|e| {
            self.error(DecodeErrorKind::BadHex {
                column: "template digest",
                column_number: column + e.position,
                found: excerpt(text),
            })
        })?;
        let expected = match self.digest_size {
            Some(size) => size,
            // The first line fixes the width, which must be a bank's.
            None if (20..=MAX_DIGEST_SIZE).contains(&bytes.len()) => *self.digest_size.insert(bytes.len()),
            None => {
                let found = bytes.len();
                let message = format!(
                    "template digest is {found} bytes; expected 20 to {MAX_DIGEST_SIZE} bytes, a PCR bank digest size"
                );
                return Err(self.error(DecodeErrorKind::Line(message)));
            }
        };
        if bytes.len() != expected || Digest::from_slice(&bytes).is_none() {
            return Err(self.error(DecodeErrorKind::DigestWidth { expected, found: bytes.len() }));
        }
        Digest::from_slice(&bytes)
            .ok_or_else(|| self.error(DecodeErrorKind::DigestWidth { expected, found: bytes.len() }))
    }
}

impl<R: BufRead> Iterator for AsciiDecoder<R> {
    type Item = Result<Record, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = crate::binary::empty_record();
        match self.read_record(&mut record) {
            Ok(true) => Some(Ok(record)),
            Ok(false) => None,
            Err(error) => Some(Err(error)),
        }
    }
}

fn split_space(text: &[u8]) -> (&[u8], Option<&[u8]>) {
    match text.iter().position(|&b| b == b' ') {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

fn parse_pcr(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 2 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = text.iter().fold(0u32, |acc, d| acc * 10 + (d - b'0') as u32);
    (value <= crate::binary::MAX_PCR_INDEX).then_some(value)
}

/// Splits the field part of a line into one text per field, or describes
/// what was found instead.
fn split_fields<'a>(fields: &[FieldId], text: &'a [u8]) -> Result<Vec<&'a [u8]>, String> {
    // Only event names can hold spaces; xattr names never do.
    let names: Vec<usize> =
        fields.iter().enumerate().filter(|(_, id)| matches!(id, FieldId::N | FieldId::NNg)).map(|(i, _)| i).collect();
    let (first, last) = match (names.first(), names.last()) {
        (Some(&first), Some(&last)) => (first, last),
        _ => {
            let parts: Vec<&[u8]> = text.split(|&b| b == b' ').collect();
            if parts.len() != fields.len() {
                return Err(format!("holds {} space-separated fields", parts.len()));
            }
            return Ok(parts);
        }
    };

    let mut out: Vec<&[u8]> = Vec::with_capacity(fields.len());
    let mut rest = text;
    for _ in 0..first {
        match split_space(rest) {
            (part, Some(tail)) => {
                out.push(part);
                rest = tail;
            }
            (_, None) => return Err(format!("ends after {} fields", out.len() + 1)),
        }
    }
    let after = fields.len() - 1 - last;
    let mut tail_parts: Vec<&[u8]> = Vec::with_capacity(after);
    for _ in 0..after {
        match rest.iter().rposition(|&b| b == b' ') {
            Some(i) => {
                tail_parts.push(&rest[i + 1..]);
                rest = &rest[..i];
            }
            None => return Err(format!("ends {} field(s) early", after - tail_parts.len())),
        }
    }
    if first == last {
        out.push(rest);
    } else {
        let middle: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
        if middle.len() != last - first + 1 {
            return Err(format!(
                "cannot be split unambiguously: fields {first} to {last} hold {} space-separated parts",
                middle.len()
            ));
        }
        out.extend(middle);
    }
    out.extend(tail_parts.into_iter().rev());
    Ok(out)
}

/// Like [`split_fields`], but when the line is short by trailing fields
/// that come after the last event name, reads them as empty. Kernels end
/// such lines with spaces (`ima-sig` without a signature), which editors
/// and some tools strip. Returns the texts and how many fields were missing.
fn split_fields_lenient<'a>(fields: &[FieldId], text: &'a [u8]) -> Result<(Vec<&'a [u8]>, usize), String> {
    let strict = match split_fields(fields, text) {
        Ok(parts) => return Ok((parts, 0)),
        Err(message) => message,
    };
    let trailing = fields.iter().rev().take_while(|id| !matches!(id, FieldId::N | FieldId::NNg)).count();
    for missing in 1..=trailing.min(fields.len().saturating_sub(1)) {
        if let Ok(mut parts) = split_fields(&fields[..fields.len() - missing], text) {
            parts.extend(std::iter::repeat_n(&b""[..], missing));
            return Ok((parts, missing));
        }
    }
    Err(strict)
}

/// Appends the kernel's ASCII line for `record` to `out`, with `digest` as
/// the template digest.
pub fn encode_record(record: &Record, digest: &Digest, out: &mut Vec<u8>) {
    if record.pcr < 10 {
        out.push(b' ');
    }
    out.extend_from_slice(record.pcr.to_string().as_bytes());
    out.push(b' ');
    hex::encode_to_vec(digest.as_bytes(), out);
    out.push(b' ');
    out.extend_from_slice(record.template.name().as_bytes());
    for (id, data) in record.fields() {
        out.push(b' ');
        if !data.is_empty() {
            field::render_ascii(id, data, record.byte_order, out);
        }
    }
    out.push(b'\n');
}

/// Writes records in the ASCII format.
pub struct AsciiEncoder<W> {
    writer: W,
    buffer: Vec<u8>,
}

impl<W: Write> AsciiEncoder<W> {
    /// An encoder writing to `writer`.
    pub fn new(writer: W) -> Self {
        AsciiEncoder { writer, buffer: Vec::new() }
    }

    /// Writes one line with `digest` as the template digest.
    pub fn write_record(&mut self, record: &Record, digest: &Digest) -> io::Result<()> {
        self.buffer.clear();
        encode_record(record, digest, &mut self.buffer);
        self.writer.write_all(&self.buffer)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.writer.flush()?;
        Ok(self.writer)
    }
}

/// Longest excerpt of input quoted in an error message, in characters.
const EXCERPT_CHARS: usize = 64;

/// The start of `bytes` for an error message: a line of another format can
/// be megabytes long.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => text.into_owned(),
        Some((end, _)) => format!("{}... ({} bytes in all)", &text[..end], bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one(line: &str) -> Result<Record, DecodeError> {
        let mut decoder = AsciiDecoder::new(line.as_bytes(), None, ByteOrder::Little);
        decoder.next().unwrap()
    }

    #[test]
    fn ascii_ima_sig_without_signature_keeps_trailing_space() {
        let line = format!("10 {} ima-sig sha256:{} /usr/bin/ls \n", "11".repeat(20), "22".repeat(32));
        let record = decode_one(&line).unwrap();
        assert_eq!(record.data.field(2), Some(&b""[..]));
        let mut out = Vec::new();
        encode_record(&record, &record.digest, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), line);
    }

    #[test]
    fn ascii_name_with_spaces_round_trips() {
        let line = format!("10 {} ima {} /tmp/#17634599 (deleted)\n", "11".repeat(20), "22".repeat(20));
        let record = decode_one(&line).unwrap();
        assert_eq!(record.event_name(), Some(&b"/tmp/#17634599 (deleted)"[..]));
        let mut out = Vec::new();
        encode_record(&record, &record.digest, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), line);
    }

    #[test]
    fn ascii_single_digit_pcr_has_leading_space() {
        let line = format!(" 9 {} ima-ng sha1:{} /a\n", "11".repeat(20), "22".repeat(20));
        let record = decode_one(&line).unwrap();
        assert_eq!(record.pcr, 9);
        let mut out = Vec::new();
        encode_record(&record, &record.digest, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), line);
    }

    #[test]
    fn ascii_invalid_line_reports_line_number() {
        let error = decode_one("this-is-an-invalid-ima-log-file\n").unwrap_err();
        assert_eq!(error.location, Location::Line(1));
        assert_eq!(error.record, 0);
        assert!(error.to_string().contains("expected a PCR index"), "{error}");
    }

    #[test]
    fn ascii_digest_width_must_stay_constant() {
        let text = format!(
            "10 {} ima-ng sha1:{} /a\n10 {} ima-ng sha1:{} /b\n",
            "11".repeat(20),
            "22".repeat(20),
            "11".repeat(32),
            "22".repeat(20)
        );
        let mut decoder = AsciiDecoder::new(text.as_bytes(), None, ByteOrder::Little);
        assert!(decoder.next().unwrap().is_ok());
        let error = decoder.next().unwrap().unwrap_err();
        assert_eq!(error.location, Location::Line(2));
        assert!(matches!(error.kind, DecodeErrorKind::DigestWidth { expected: 20, found: 32 }));
        assert!(decoder.next().is_none());
    }

    #[test]
    fn ascii_rejects_non_bank_digest_width() {
        for digest in ["", "11", &"11".repeat(19), &"11".repeat(65)] {
            let error = decode_one(&format!("10 {digest} ima-ng sha1:{} /a\n", "22".repeat(20))).unwrap_err();
            assert_eq!(error.location, Location::Line(1));
            assert!(error.to_string().contains("expected 20 to 64"), "{error}");
        }
        assert!(decode_one(&format!("10 {} ima-ng sha1:{} /a\n", "11".repeat(21), "22".repeat(20))).is_ok());
    }

    #[test]
    fn ascii_missing_trailing_space_reads_empty_signature() {
        let line = format!("10 {} ima-sig sha256:{} boot_aggregate\n", "11".repeat(20), "22".repeat(32));
        let mut decoder = AsciiDecoder::new(line.as_bytes(), None, ByteOrder::Little);
        let record = decoder.next().unwrap().unwrap();
        assert_eq!(record.data.field(2), Some(&b""[..]));
        assert_eq!(decoder.short_lines(), 1);
    }

    #[test]
    fn ascii_bad_hex_names_column() {
        let error = decode_one("10 zz ima-ng sha1:00 /a\n").unwrap_err();
        match error.kind {
            DecodeErrorKind::BadHex { column_number, .. } => assert_eq!(column_number, 4),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ascii_split_fields_for_evm_sig() {
        let template = Template::builtin("evm-sig").unwrap();
        let text = b"sha256:00 /a b  security.ima|security.selinux 0a00 0b 0 0 33188";
        let parts = split_fields(template.fields(), text).unwrap();
        assert_eq!(parts.len(), 9);
        assert_eq!(parts[1], b"/a b");
        assert_eq!(parts[2], b"");
        assert_eq!(parts[8], b"33188");
    }

    #[test]
    fn long_line_error_quotes_an_excerpt() {
        let line = format!("{}\n", "A".repeat(10_000));
        let mut decoder = AsciiDecoder::new(line.as_bytes(), None, ByteOrder::Little);
        let mut record = crate::binary::empty_record();
        let error = decoder.read_record(&mut record).expect_err("not a list line");
        let message = error.to_string();
        assert!(message.contains(&format!("found \"{}... (10000 bytes in all)\"", "A".repeat(64))), "{message}");
        assert!(message.len() < 250, "{message}");
    }
}
