//! Input format detection and a reader over either list format.
//!
//! A list is recognised from its first bytes: the ASCII list starts with a
//! decimal PCR index, the binary list with a u32 PCR index whose high bytes
//! are zero in one of the two byte orders. For binary lists the digest size
//! (20 for the legacy list, the bank's size for per-bank lists) is found by
//! decoding the first records with each candidate size; only the right one
//! lands the template name where a valid name is. Every guess can be fixed
//! with [`ListOptions`].

use std::io::{self, BufRead, BufReader, Cursor, Read};

use crate::ascii::AsciiDecoder;
use crate::bank::Bank;
use crate::binary::{BinaryDecoder, BinaryLayout};
use crate::byte_order::ByteOrder;
use crate::error::{DecodeError, DecodeErrorKind, Location};
use crate::hash::HashAlgorithm;
use crate::record::Record;

/// How much of the input detection looks at.
pub const DETECTION_PREFIX: usize = 64 * 1024;

/// The two list formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// `binary_runtime_measurements*`.
    Binary,
    /// `ascii_runtime_measurements*`.
    Ascii,
}

/// What the caller knows about the input; `None` fields are detected.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListOptions {
    /// Binary or ASCII.
    pub kind: Option<ListKind>,
    /// Byte order of the kernel that wrote the list. ASCII lists cannot show
    /// it and default to little-endian.
    pub byte_order: Option<ByteOrder>,
    /// Bank of the logged template digests; fixes the digest size.
    pub bank: Option<Bank>,
    /// A weaker bank hint, such as a file name suffix: tried first, but
    /// dropped if the data disagree.
    pub bank_hint: Option<Bank>,
}

/// The detected format of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListFormat {
    /// Binary or ASCII.
    pub kind: ListKind,
    /// Bank of the logged template digests.
    pub bank: Bank,
    /// Byte order.
    pub byte_order: ByteOrder,
}

/// Guesses the bank of a list from its securityfs file name
/// (`binary_runtime_measurements_sha256`, `..._tpm_alg_27_staged`,
/// `ima-log-sm3_256`).
pub fn bank_from_file_name(name: &str) -> Option<Bank> {
    let name = name.strip_suffix("_staged").unwrap_or(name);
    let lower = name.to_ascii_lowercase();
    if let Some(position) = lower.rfind("tpm_alg_") {
        return lower[position..].parse().ok();
    }
    // Longest names first, so that "sha3_256" is not read as "256".
    let mut candidates: Vec<(&str, HashAlgorithm)> = Vec::new();
    for algorithm in HashAlgorithm::ALL {
        candidates.push((algorithm.kernel_name(), algorithm));
        candidates.push((algorithm.tpm2_tools_name(), algorithm));
    }
    candidates.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
    for (text, algorithm) in candidates {
        if let Some(stem) = lower.strip_suffix(text) {
            if stem.is_empty() || stem.ends_with('_') || stem.ends_with('-') {
                return Some(Bank::new(algorithm));
            }
        }
    }
    None
}

/// The default bank for a digest size: the one kernels most often use.
pub fn default_bank_for_size(size: usize) -> Option<Bank> {
    match size {
        20 => Some(Bank::SHA1),
        32 => Some(Bank::SHA256),
        48 => Some(Bank::SHA384),
        64 => Some(Bank::SHA512),
        _ => None,
    }
}

type Prefixed<R> = io::Chain<Cursor<Vec<u8>>, R>;

enum Inner<R: Read> {
    Empty,
    Binary(BinaryDecoder<BufReader<Prefixed<R>>>),
    Ascii(AsciiDecoder<BufReader<Prefixed<R>>>),
}

/// A measurement list reader over either format, yielding records one by one.
pub struct ListReader<R: Read> {
    inner: Inner<R>,
    format: Option<ListFormat>,
    options: ListOptions,
    /// Set once an error has been returned; later reads return no record.
    failed: bool,
}

impl<R: Read> ListReader<R> {
    /// Reads the start of `reader`, detects its format, and returns a reader
    /// positioned at the first record. An empty input is an empty list.
    pub fn open(mut reader: R, options: ListOptions) -> Result<Self, DecodeError> {
        let mut prefix = Vec::with_capacity(DETECTION_PREFIX);
        let at_eof = read_prefix(&mut reader, &mut prefix).map_err(|e| DecodeError {
            location: Location::Offset(0),
            record: 0,
            kind: e.into(),
        })?;
        if prefix.is_empty() {
            return Ok(ListReader { inner: Inner::Empty, format: None, options, failed: false });
        }

        let guessed = guess_kind(&prefix);
        if options.kind == Some(ListKind::Ascii) && guessed == ListKind::Binary {
            return Err(unrecognised(
                "the input has NUL bytes in its first 4 bytes, so it is a binary list, not ASCII; \
                 drop --input-format ascii"
                    .into(),
            ));
        }
        let kind = options.kind.unwrap_or(guessed);
        match kind {
            ListKind::Binary => {
                let layout = detect_binary_layout(&prefix, at_eof, &options)?;
                let bank = options
                    .bank
                    .or(options.bank_hint.filter(|b| b.digest_size() == layout.digest_size))
                    .or_else(|| default_bank_for_size(layout.digest_size))
                    .ok_or_else(|| {
                        unrecognised(format!("no bank has {}-byte digests; pass --input-bank", layout.digest_size))
                    })?;
                let source = BufReader::with_capacity(DETECTION_PREFIX, Cursor::new(prefix).chain(reader));
                Ok(ListReader {
                    inner: Inner::Binary(BinaryDecoder::new(source, layout)),
                    format: Some(ListFormat { kind, bank, byte_order: layout.byte_order }),
                    options,
                    failed: false,
                })
            }
            ListKind::Ascii => {
                let byte_order = options.byte_order.unwrap_or_default();
                let size = options.bank.map(|b| b.digest_size());
                let source = BufReader::with_capacity(DETECTION_PREFIX, Cursor::new(prefix).chain(reader));
                let mut list = ListReader {
                    inner: Inner::Ascii(AsciiDecoder::new(source, size, byte_order)),
                    format: None,
                    options,
                    failed: false,
                };
                if let Some(bank) = options.bank {
                    list.format = Some(ListFormat { kind, bank, byte_order });
                }
                Ok(list)
            }
        }
    }

    /// The detected format; for ASCII lists without a given bank it is known
    /// after the first record. `None` for an empty input.
    pub fn format(&self) -> Option<ListFormat> {
        self.format
    }

    /// Decodes the next record into `record`. Returns `Ok(false)` at the
    /// end, and after an error has been returned once.
    pub fn read_record(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        if self.failed {
            return Ok(false);
        }
        let result = self.decode_next(record);
        self.failed = result.is_err();
        result
    }

    fn decode_next(&mut self, record: &mut Record) -> Result<bool, DecodeError> {
        match &mut self.inner {
            Inner::Empty => Ok(false),
            Inner::Binary(decoder) => decoder.read_record(record),
            Inner::Ascii(decoder) => {
                let more = decoder.read_record(record)?;
                if more && self.format.is_none() {
                    let size = record.digest.len();
                    let bank = self
                        .options
                        .bank_hint
                        .filter(|b| b.digest_size() == size)
                        .or_else(|| default_bank_for_size(size))
                        .ok_or_else(|| DecodeError {
                            location: decoder.last_record_location(),
                            record: 0,
                            kind: DecodeErrorKind::Unrecognised(format!(
                                "no bank has {size}-byte template digests; pass --input-bank"
                            )),
                        })?;
                    self.format = Some(ListFormat { kind: ListKind::Ascii, bank, byte_order: record.byte_order });
                }
                Ok(more)
            }
        }
    }

    /// Where the record most recently returned starts.
    pub fn last_record_location(&self) -> Location {
        match &self.inner {
            Inner::Empty => Location::Offset(0),
            Inner::Binary(decoder) => decoder.last_record_location(),
            Inner::Ascii(decoder) => decoder.last_record_location(),
        }
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        match &self.inner {
            Inner::Empty => 0,
            Inner::Binary(decoder) => decoder.offset(),
            Inner::Ascii(decoder) => decoder.offset(),
        }
    }

    /// ASCII lines that lacked the separating spaces of empty trailing
    /// fields (see [`AsciiDecoder::short_lines`]); always 0 for binary input.
    pub fn short_lines(&self) -> u64 {
        match &self.inner {
            Inner::Ascii(decoder) => decoder.short_lines(),
            _ => 0,
        }
    }

    /// Records decoded so far.
    pub fn records_read(&self) -> u64 {
        match &self.inner {
            Inner::Empty => 0,
            Inner::Binary(decoder) => decoder.records_read(),
            Inner::Ascii(decoder) => decoder.records_read(),
        }
    }
}

impl<R: Read> Iterator for ListReader<R> {
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

fn unrecognised(message: String) -> DecodeError {
    DecodeError { location: Location::Offset(0), record: 0, kind: DecodeErrorKind::Unrecognised(message) }
}

/// Fills `prefix` with up to [`DETECTION_PREFIX`] bytes; returns true when
/// the input ended before that.
fn read_prefix<R: Read>(reader: &mut R, prefix: &mut Vec<u8>) -> io::Result<bool> {
    let read = reader.take(DETECTION_PREFIX as u64).read_to_end(prefix)?;
    Ok(read < DETECTION_PREFIX)
}

/// A binary list's first word is a PCR index below 64, so at least two of
/// its first four bytes are zero; an ASCII list starts with a digit or a
/// space.
fn guess_kind(prefix: &[u8]) -> ListKind {
    if prefix.iter().take(4).any(|&b| b == 0) {
        ListKind::Binary
    } else {
        ListKind::Ascii
    }
}

const CANDIDATE_SIZES: [usize; 4] = [20, 32, 48, 64];

/// Finds the byte order and digest size under which the first records of
/// `prefix` decode.
fn detect_binary_layout(prefix: &[u8], at_eof: bool, options: &ListOptions) -> Result<BinaryLayout, DecodeError> {
    let orders: Vec<ByteOrder> = match options.byte_order {
        Some(order) => vec![order],
        None => vec![ByteOrder::Little, ByteOrder::Big],
    };
    let sizes: Vec<usize> = match (options.bank, options.bank_hint) {
        (Some(bank), _) => vec![bank.digest_size()],
        (None, Some(hint)) => {
            let mut sizes = vec![hint.digest_size()];
            sizes.extend(CANDIDATE_SIZES.iter().copied().filter(|&s| s != hint.digest_size()));
            sizes
        }
        (None, None) => CANDIDATE_SIZES.to_vec(),
    };

    let mut best: Option<(u8, DecodeError)> = None;
    // A layout under which only the first record decodes, kept in case no
    // layout decodes two: the second record may be corrupt, and the decoder
    // should then return the first record before reporting it.
    let mut first_only: Option<BinaryLayout> = None;
    for &byte_order in &orders {
        for &digest_size in &sizes {
            let layout = BinaryLayout { digest_size, byte_order };
            match probe(prefix, at_eof, layout) {
                Ok(()) => return Ok(layout),
                Err(error) if error.record > 0 => {
                    first_only.get_or_insert(layout);
                }
                Err(error) => {
                    let stage = failure_stage(&error);
                    if best.as_ref().is_none_or(|(best_stage, _)| stage > *best_stage) {
                        best = Some((stage, error));
                    }
                }
            }
        }
    }

    if let Some(layout) = first_only {
        return Ok(layout);
    }
    if let Some(error) = length_prefixed_digest(prefix, &orders) {
        return Err(error);
    }
    Err(best.map(|(_, error)| error).unwrap_or_else(|| unrecognised("no byte order and digest size fits".into())))
}

/// How far a failed probe got: 0 before the template name, 1 at the name,
/// 2 past a valid name. The error of the candidate that got furthest is the
/// one worth showing.
fn failure_stage(error: &DecodeError) -> u8 {
    match &error.kind {
        DecodeErrorKind::PcrOutOfRange { .. } | DecodeErrorKind::TrailingBytes { .. } => 0,
        DecodeErrorKind::Truncated { item: "template digest", .. } => 0,
        DecodeErrorKind::Template(_)
        | DecodeErrorKind::ImpossibleLength { item: "template name length", .. }
        | DecodeErrorKind::Truncated { item: "template name length" | "template name", .. } => 1,
        _ => 2,
    }
}

/// Recognises the non-upstream layout that writes a u32 digest length
/// before the digest: the length is a digest size, and a plausible template
/// name follows the digest.
fn length_prefixed_digest(prefix: &[u8], orders: &[ByteOrder]) -> Option<DecodeError> {
    let word = |at: usize| -> Option<[u8; 4]> { prefix.get(at..at + 4)?.try_into().ok() };
    for &order in orders {
        let length = order.u32(word(4)?) as usize;
        if !CANDIDATE_SIZES.contains(&length) {
            continue;
        }
        let name_at = 8 + length;
        let name_len = order.u32(word(name_at)?) as usize;
        let name = prefix.get(name_at + 4..name_at + 4 + name_len)?;
        if (1..=crate::template::MAX_TEMPLATE_NAME_LEN).contains(&name_len)
            && name.iter().all(|&b| (0x21..0x7f).contains(&b))
        {
            return Some(DecodeError {
                location: Location::Offset(4),
                record: 0,
                kind: DecodeErrorKind::LengthPrefixedDigest { length: length as u32 },
            });
        }
    }
    None
}

/// Decodes up to two records of `prefix` with `layout`. Running out of
/// prefix counts as success when the input continues past it.
fn probe(prefix: &[u8], at_eof: bool, layout: BinaryLayout) -> Result<(), DecodeError> {
    let mut decoder = BinaryDecoder::new(prefix, layout);
    let mut record = crate::binary::empty_record();
    for _ in 0..2 {
        match decoder.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(error) => {
                let cut =
                    matches!(error.kind, DecodeErrorKind::Truncated { .. } | DecodeErrorKind::TrailingBytes { .. });
                // A record that runs past the prefix of a longer input, or a
                // truncated second record, still proves the first one.
                if cut && (!at_eof || error.record > 0) {
                    return Ok(());
                }
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Opens a list from a reader, detecting its format (see [`ListReader::open`]).
pub fn open_list<R: Read>(reader: R, options: ListOptions) -> Result<ListReader<R>, DecodeError> {
    ListReader::open(reader, options)
}

/// Reads every record of a small list into memory.
pub fn read_all<R: BufRead>(reader: R, options: ListOptions) -> Result<Vec<Record>, DecodeError> {
    ListReader::open(reader, options)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_from_file_names() {
        assert_eq!(bank_from_file_name("binary_runtime_measurements_sha256"), Some(Bank::SHA256));
        assert_eq!(bank_from_file_name("ascii_runtime_measurements_sha1_staged"), Some(Bank::SHA1));
        assert_eq!(bank_from_file_name("ima-log-sm3_256"), Some(Bank::SM3));
        assert_eq!(bank_from_file_name("ascii_runtime_measurements_sm3"), Some(Bank::SM3));
        assert_eq!(bank_from_file_name("x_tpm_alg_27").map(|b| b.tpm_alg_id()), Some(0x27));
        assert_eq!(bank_from_file_name("binary_runtime_measurements"), None);
        assert_eq!(bank_from_file_name("sha1.log"), None);
    }

    #[test]
    fn list_reader_stops_after_unknown_ascii_digest_width() {
        // 21-byte template digests belong to no default bank; the reader's
        // own error must end the list like a decoder error does.
        let line = format!("10 {} ima-ng sha1:{} /a\n", "11".repeat(21), "22".repeat(20));
        let text = line.repeat(3);
        let mut reader = ListReader::open(text.as_bytes(), ListOptions::default()).unwrap();
        let error = reader.next().unwrap().unwrap_err();
        assert!(matches!(error.kind, DecodeErrorKind::Unrecognised(_)), "{error}");
        assert_eq!(error.location, Location::Line(1));
        assert!(reader.next().is_none());
    }

    #[test]
    fn detection_keeps_layout_when_second_record_is_corrupt() {
        let mut bytes = Vec::new();
        for record in crate::synth::SyntheticList::new(crate::synth::SynthOptions { records: 2, ..Default::default() })
        {
            crate::binary::encode_record(&record, &record.digest, ByteOrder::Little, &mut bytes);
        }
        let first_len = {
            let mut one = Vec::new();
            let record =
                crate::synth::SyntheticList::new(crate::synth::SynthOptions { records: 1, ..Default::default() })
                    .next()
                    .unwrap();
            crate::binary::encode_record(&record, &record.digest, ByteOrder::Little, &mut one);
            one.len()
        };
        // An unknown template name in the second record.
        let name_at = first_len + 4 + 20 + 4;
        bytes[name_at] = b'X';
        let mut reader = ListReader::open(bytes.as_slice(), ListOptions::default()).unwrap();
        assert!(reader.next().unwrap().is_ok());
        let error = reader.next().unwrap().unwrap_err();
        assert_eq!(error.record, 1);
        assert_eq!(error.location, Location::Offset(name_at as u64));
    }

    #[test]
    fn forced_ascii_on_binary_input_is_rejected() {
        let options = ListOptions { kind: Some(ListKind::Ascii), ..Default::default() };
        let error = ListReader::open(&b"\x0a\x00\x00\x00rest"[..], options).err().unwrap();
        assert!(error.to_string().contains("it is a binary list, not ASCII"), "{error}");
    }

    #[test]
    fn short_binary_input_is_truncated_pcr_index() {
        let options = ListOptions { kind: Some(ListKind::Binary), bank: Some(Bank::SHA1), ..Default::default() };
        let error = match ListReader::open(&b"\x0a\x00\x00"[..], options) {
            Err(error) => error,
            Ok(mut reader) => reader.next().unwrap().unwrap_err(),
        };
        assert_eq!(error.to_string(), "record 0 at offset 0: truncated PCR index: expected 4 bytes, found 3");
    }

    #[test]
    fn empty_input_is_empty_list() {
        let mut reader = ListReader::open(&b""[..], ListOptions::default()).unwrap();
        assert!(reader.next().is_none());
        assert!(reader.format().is_none());
    }
}
