//! Entry points for the fuzz targets in `fuzz/`, one per decoder. Each runs
//! the decoder over arbitrary bytes and asserts the invariants that must
//! hold for any input.
//!
//! These functions panic on purpose when an invariant fails, so that the
//! fuzzer saves the input. A panic here is a bug in the decoder named by the
//! message, because library code must not panic on any input.
//!
//! Invariants of the list decoders ([`binary_list`], [`ascii_list`],
//! [`list`]):
//!
//! - every decoded record passes [`Record::validate`] and its typed field
//!   views decode;
//! - it encodes in its own format and decodes again to an equal record, and
//!   a binary record re-encodes byte for byte to the bytes it came from;
//! - an error names the record being decoded (the count of records before
//!   it) and a location inside the input;
//! - an error ends the stream: the next read returns no record and no error;
//! - a stream that ends without an error has consumed the whole input.

use std::io::{BufRead, BufReader};
use std::ops::RangeInclusive;

use crate::ascii::{self, AsciiDecoder};
use crate::bank::Bank;
use crate::binary::{self, empty_record, BinaryDecoder, BinaryLayout};
use crate::byte_order::ByteOrder;
use crate::error::{DecodeError, Location};
use crate::field::{self, FieldValue};
use crate::format::{bank_from_file_name, ListKind, ListOptions, ListReader};
use crate::hash::{HashAlgorithm, MAX_DIGEST_SIZE};
use crate::pcrs::{format_pcr_yaml, parse_pcr_yaml};
use crate::record::Record;
use crate::template::{FieldFormat, FieldId};

/// Template digest sizes a binary list can have, indexed by the low two bits
/// of a layout selector.
const DIGEST_SIZES: [usize; 4] = [20, 32, 48, 64];

/// Returns the binary layout a selector byte names. Bits 0-1 pick the
/// digest size (20, 32, 48 or 64 bytes), and bit 2 selects big-endian.
pub fn binary_layout(selector: u8) -> BinaryLayout {
    let digest_size = DIGEST_SIZES[(selector & 0b11) as usize];
    let byte_order = if selector & 0b100 == 0 { ByteOrder::Little } else { ByteOrder::Big };
    BinaryLayout { digest_size, byte_order }
}

/// Decodes `data[1..]` as a binary list in the layout [`binary_layout`]
/// derives from `data[0]`, so that every digest size and both byte orders
/// are reached without detection.
///
/// The list is decoded twice. From a slice, every complete record takes the
/// decoder's in-buffer path. Through a `BufReader` of `1 + 8 * (data[0] >>
/// 3)` bytes, records larger than the buffer take the item-by-item path.
/// Both passes must return the same records and the same error.
pub fn binary_list(data: &[u8]) {
    let Some((&selector, list)) = data.split_first() else {
        return;
    };
    let layout = binary_layout(selector);
    let (records, error) = decode_binary(list, list, layout);

    let capacity = 1 + 8 * usize::from(selector >> 3);
    let (item_records, item_error) = decode_binary(BufReader::with_capacity(capacity, list), list, layout);
    assert!(records == item_records, "a {capacity}-byte buffer decodes other records");
    let describe = |error: &Option<DecodeError>| error.as_ref().map(|e| (e.record, e.location, e.to_string()));
    assert_eq!(describe(&item_error), describe(&error), "a {capacity}-byte buffer fails differently");
}

/// Decodes the binary list `list` from `reader`, checks the list invariants,
/// and returns the records and the error that ended them.
fn decode_binary<R: BufRead>(reader: R, list: &[u8], layout: BinaryLayout) -> (Vec<Record>, Option<DecodeError>) {
    let mut decoder = BinaryDecoder::new(reader, layout);
    // One record reused for every read, as the CLI does, so that state left
    // over from a longer record is exercised too.
    let mut record = empty_record();
    let mut records = Vec::new();
    loop {
        let count = records.len() as u64;
        let start = decoder.offset();
        match decoder.read_record(&mut record) {
            Ok(true) => {
                let end = decoder.offset();
                let bytes = usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(end).ok())
                    .and_then(|(start, end)| list.get(start..end))
                    .unwrap_or_else(|| panic!("record {count}: offsets {start}..{end} outside the input"));
                check_binary_record(&record, layout, bytes, count);
                records.push(record.clone());
            }
            Ok(false) => {
                assert_eq!(decoder.offset(), list.len() as u64, "binary list ended before the end of its input");
                return (records, None);
            }
            Err(error) => {
                check_offset_error(&error, count, start..=list.len() as u64);
                let after = decoder.read_record(&mut record);
                assert!(matches!(after, Ok(false)), "binary decoder went on after '{error}': {after:?}");
                return (records, Some(error));
            }
        }
    }
}

/// Decodes `data` as an ASCII list, once for each byte order (it decides
/// how `iuid`, `igid`, `imode` and `xattrlengths` are stored).
pub fn ascii_list(data: &[u8]) {
    for order in [ByteOrder::Little, ByteOrder::Big] {
        ascii_list_in(data, order);
    }
}

fn ascii_list_in(data: &[u8], order: ByteOrder) {
    let mut decoder = AsciiDecoder::new(data, None, order);
    let mut record = empty_record();
    let mut count = 0u64;
    loop {
        match decoder.read_record(&mut record) {
            Ok(true) => {
                assert_eq!(record.byte_order, order, "record {count}: byte order");
                assert_eq!(Some(record.digest.len()), decoder.digest_size(), "record {count}: digest width");
                // PCR banks have 20- to 64-byte digests.
                assert!((20..=MAX_DIGEST_SIZE).contains(&record.digest.len()), "record {count}: digest width");
                check_ascii_record(&record, count);
                count += 1;
            }
            Ok(false) => {
                assert_eq!(decoder.offset(), data.len() as u64, "ASCII list ended before the end of its input");
                return;
            }
            Err(error) => {
                // Every line is a record or an error, so the failing line
                // is the one after the records.
                assert_eq!(error.record, count, "error names the wrong record: {error}");
                assert_eq!(error.location, Location::Line(count + 1), "error names the wrong line: {error}");
                let after = decoder.read_record(&mut record);
                assert!(matches!(after, Ok(false)), "ASCII decoder went on after '{error}': {after:?}");
                return;
            }
        }
    }
}

/// Opens `data` with format detection ([`ListReader::open`]) and decodes it.
/// Beyond the list invariants, the reader must return what the decoder for
/// the detected format returns on its own.
pub fn list(data: &[u8]) {
    let mut reader = match ListReader::open(data, ListOptions::default()) {
        Ok(reader) => reader,
        Err(error) => {
            // Detection decodes up to two records under each layout and
            // reports the failure of the layout that got furthest.
            assert!(error.record <= 1, "detection error names a record past the probe: {error}");
            if let Location::Offset(offset) = error.location {
                assert!(offset <= data.len() as u64, "detection error offset {offset} is past the input: {error}");
            }
            return;
        }
    };

    let mut records: Vec<Record> = Vec::new();
    let mut record = empty_record();
    let mut failed = false;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {
                let format =
                    reader.format().unwrap_or_else(|| panic!("record {}: decoded with no format known", records.len()));
                assert_eq!(record.digest.len(), format.bank.digest_size(), "record {}: digest width", records.len());
                match format.kind {
                    ListKind::Binary => {
                        let layout =
                            BinaryLayout { digest_size: format.bank.digest_size(), byte_order: format.byte_order };
                        let mut bytes = Vec::new();
                        binary::encode_record(&record, &record.digest, format.byte_order, &mut bytes);
                        check_binary_record(&record, layout, &bytes, records.len() as u64);
                    }
                    ListKind::Ascii => check_ascii_record(&record, records.len() as u64),
                }
                records.push(record.clone());
            }
            Ok(false) => break,
            Err(error) => {
                assert_eq!(error.record, records.len() as u64, "error names the wrong record: {error}");
                let after = reader.read_record(&mut record);
                assert!(matches!(after, Ok(false)), "list reader went on after '{error}': {after:?}");
                failed = true;
                break;
            }
        }
    }

    // The decoder of the detected format, run alone, must agree.
    let direct: Vec<Result<Record, DecodeError>> = match reader.format() {
        None => return,
        Some(format) if format.kind == ListKind::Binary => {
            let layout = BinaryLayout { digest_size: format.bank.digest_size(), byte_order: format.byte_order };
            BinaryDecoder::new(data, layout).collect()
        }
        Some(format) => AsciiDecoder::new(data, None, format.byte_order).collect(),
    };
    let direct_records: Vec<&Record> = direct.iter().map_while(|item| item.as_ref().ok()).collect();
    assert!(
        records.len() <= direct_records.len() && records.iter().zip(&direct_records).all(|(a, b)| a == *b),
        "list reader returned other records than its decoder"
    );
    if !failed {
        assert_eq!(records.len(), direct.len(), "list reader ended early without an error");
    }
}

/// Decodes the typed view of one field. `data[0]` picks the field id
/// (bits 0-3, in [`FieldId::ALL`] order), the byte order (bit 4) and the
/// legacy `ima` rules (bit 5). The rest is the field data.
///
/// Invariants:
/// - [`FieldValue::decode`] succeeds exactly when [`field::validate`]
///   accepts the data, and the view describes the same bytes.
/// - The ASCII rendering parses back to the data. The exceptions are an
///   empty `n` or `n-ng`, which parses as a lone NUL, and a lone-NUL
///   `xattrnames`, which renders as nothing and parses as empty.
/// - Swapping the byte order twice restores the data.
pub fn field_value(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let id = FieldId::ALL[(selector & 0x0f) as usize];
    let order = if selector & 0x10 == 0 { ByteOrder::Little } else { ByteOrder::Big };
    let legacy = selector & 0x20 != 0;

    let valid = field::validate(id, bytes, false);
    if field::validate(id, bytes, legacy).is_ok() {
        assert!(valid.is_ok(), "{id}: valid under the legacy rules only: {valid:?}");
    }
    let value = FieldValue::decode(id, bytes, order);
    assert_eq!(value.is_ok(), valid.is_ok(), "{id}: decode and validate disagree: {value:?} vs {valid:?}");
    let Ok(value) = value else {
        return;
    };
    check_field_view(id, bytes, order, &value);

    let mut text = Vec::new();
    if !bytes.is_empty() {
        field::render_ascii(id, bytes, order, &mut text);
    }
    let mut parsed = Vec::new();
    let result = field::parse_ascii(id, &text, order, &mut parsed);
    let expected: &[u8] = match (id, bytes) {
        (FieldId::N | FieldId::NNg, []) => b"\0",
        (FieldId::XattrNames, [0]) => b"",
        _ => bytes,
    };
    assert!(result.is_ok(), "{id}: rendering {text:?} does not parse: {result:?}");
    assert_eq!(parsed, expected, "{id}: rendering {text:?} parses to other data");

    let mut swapped = bytes.to_vec();
    field::swap_byte_order(id, &mut swapped);
    let other = match order {
        ByteOrder::Little => ByteOrder::Big,
        ByteOrder::Big => ByteOrder::Little,
    };
    let swapped_value = FieldValue::decode(id, &swapped, other);
    assert_eq!(swapped_value.as_ref().ok(), Some(&value), "{id}: the other byte order reads another value");
    field::swap_byte_order(id, &mut swapped);
    assert_eq!(swapped, bytes, "{id}: swapping the byte order twice changed the data");
}

/// Parses `data` (lossily decoded as UTF-8) as `tpm2_pcrread` YAML.
///
/// Invariants: a parsed file has one value per (bank, PCR), each PCR is at
/// most 63, and each value has its bank's size. The file formats to text
/// that parses to the same values. An error names a line of the input.
pub fn pcr_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_pcr_yaml(&text) {
        Ok(values) => {
            for (index, value) in values.iter().enumerate() {
                assert!(value.pcr <= binary::MAX_PCR_INDEX, "PCR {} accepted", value.pcr);
                assert_eq!(value.value.len(), value.bank.digest_size(), "PCR {} in {}: size", value.pcr, value.bank);
                let twice = values[..index].iter().any(|e| e.bank == value.bank && e.pcr == value.pcr);
                assert!(!twice, "PCR {} in {} accepted twice", value.pcr, value.bank);
            }
            let formatted = format_pcr_yaml(&values);
            let again = parse_pcr_yaml(&formatted);
            assert_eq!(again.as_ref().ok(), Some(&values), "formatted values parse differently:\n{formatted}");
        }
        Err(error) => {
            let lines = text.lines().count().max(1);
            assert!((1..=lines).contains(&error.line), "error line {} outside 1..={lines}: {error}", error.line);
        }
    }
}

/// Parses `data` (when UTF-8) as a bank name, a file name suffix and a hash
/// algorithm name.
///
/// Invariants: a parsed bank has a 20- to 64-byte digest, and its display
/// name parses back to the same bank. Its reset value, violation pattern
/// and padded SHA-1 digests have the bank's size.
pub fn bank_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bank) = text.parse::<Bank>() {
        check_bank(&bank, text);
        let shown = bank.to_string();
        let again = shown.parse::<Bank>();
        assert_eq!(again.as_ref().ok(), Some(&bank), "bank {text:?} shows as {shown:?}, which parses as {again:?}");
    }
    if let Some(bank) = bank_from_file_name(text) {
        check_bank(&bank, text);
    }
    if let Some(algorithm) = HashAlgorithm::from_name(text) {
        assert_eq!(HashAlgorithm::from_name(algorithm.kernel_name()), Some(algorithm), "{text:?}");
        assert_eq!(HashAlgorithm::from_tpm_alg_id(algorithm.tpm_alg_id()), Some(algorithm), "{text:?}");
    }
}

fn check_bank(bank: &Bank, text: &str) {
    let size = bank.digest_size();
    assert!((20..=MAX_DIGEST_SIZE).contains(&size), "{text:?}: {size}-byte bank");
    assert_eq!(bank.reset_value().len(), size, "{text:?}: reset value size");
    assert_eq!(bank.violation_digest().len(), size, "{text:?}: violation pattern size");
    assert_eq!(bank.pad_sha1(&HashAlgorithm::Sha1.digest(text.as_bytes())).len(), size, "{text:?}: padded SHA-1 size");
    let _ = (bank.file_suffix(), bank.tpm2_tools_name());
}

/// Checks one record decoded from `bytes` of a binary list in `layout`.
fn check_binary_record(record: &Record, layout: BinaryLayout, bytes: &[u8], index: u64) {
    check_record(record, index);
    assert_eq!(record.byte_order, layout.byte_order, "record {index}: byte order");
    assert_eq!(record.digest.len(), layout.digest_size, "record {index}: digest width");

    let mut encoded = Vec::new();
    binary::encode_record(record, &record.digest, layout.byte_order, &mut encoded);
    assert_eq!(encoded, bytes, "record {index}: re-encoding differs from the input");

    let again: Vec<Result<Record, DecodeError>> = BinaryDecoder::new(encoded.as_slice(), layout).collect();
    assert_eq!(again.len(), 1, "record {index}: re-encoding decodes to {} items", again.len());
    match &again[0] {
        Ok(decoded) => assert_eq!(decoded, record, "record {index}: re-encoding decodes to another record"),
        Err(error) => panic!("record {index}: re-encoding fails to decode: {error}"),
    }

    // The template digest input of every template but `ima` is the section
    // after the template data length word.
    if !record.template.is_legacy_ima() {
        let section_at = 4 + layout.digest_size + 4 + record.template.name().len() + 4;
        let section = bytes.get(section_at..).unwrap_or_default();
        assert_eq!(
            record.template_digest(HashAlgorithm::Sha1),
            HashAlgorithm::Sha1.digest(section),
            "record {index}: template digest is not the hash of the template data"
        );
    }
}

/// Checks one record decoded from an ASCII line: its canonical line decodes
/// to the same record and is a fixed point of decoding and encoding.
fn check_ascii_record(record: &Record, index: u64) {
    check_record(record, index);
    let mut line = Vec::new();
    ascii::encode_record(record, &record.digest, &mut line);
    let again: Vec<Result<Record, DecodeError>> =
        AsciiDecoder::new(line.as_slice(), Some(record.digest.len()), record.byte_order).collect();
    assert_eq!(again.len(), 1, "record {index}: re-encoding decodes to {} items", again.len());
    match &again[0] {
        Ok(decoded) => {
            assert_eq!(decoded, record, "record {index}: re-encoding decodes to another record");
            let mut second = Vec::new();
            ascii::encode_record(decoded, &decoded.digest, &mut second);
            assert_eq!(second, line, "record {index}: encoding is not stable");
        }
        Err(error) => {
            panic!("record {index}: re-encoding {:?} fails to decode: {error}", String::from_utf8_lossy(&line))
        }
    }
}

fn check_record(record: &Record, index: u64) {
    if let Err(error) = record.validate() {
        panic!("record {index} was decoded but is invalid: {error}");
    }
    assert!(record.pcr <= binary::MAX_PCR_INDEX, "record {index}: PCR {}", record.pcr);
    for (id, value) in record.field_values() {
        if let Err(error) = value {
            panic!("record {index}: field {id} has no typed view: {error}");
        }
    }
}

fn check_offset_error(error: &DecodeError, count: u64, span: RangeInclusive<u64>) {
    assert_eq!(error.record, count, "error names the wrong record: {error}");
    match error.location {
        Location::Offset(offset) => assert!(span.contains(&offset), "error offset outside {span:?}: {error}"),
        Location::Line(_) => panic!("binary decoder reported a line: {error}"),
    }
}

/// Checks that a typed view describes exactly `bytes`.
fn check_field_view(id: FieldId, bytes: &[u8], order: ByteOrder, value: &FieldValue<'_>) {
    let concat = |parts: &[&[u8]]| parts.concat();
    match value {
        FieldValue::Empty => assert!(bytes.is_empty(), "{id}: non-empty data read as empty"),
        FieldValue::Digest(digest) => assert_eq!(*digest, bytes, "{id}"),
        FieldValue::DigestWithAlgo { algorithm, digest } => {
            assert_eq!(concat(&[algorithm.as_bytes(), b":\0", *digest]), bytes, "{id}");
        }
        FieldValue::DigestWithTypeAndAlgo { digest_type, algorithm, digest } => {
            assert_eq!(id.format(), FieldFormat::DigestWithTypeAndAlgo, "{id}");
            assert!(!digest_type.is_empty(), "{id}: empty digest type");
            assert!(!algorithm.is_empty(), "{id}: empty algorithm");
            let parts: [&[u8]; 5] = [digest_type.as_bytes(), b":", algorithm.as_bytes(), b":\0", *digest];
            assert_eq!(concat(&parts), bytes, "{id}");
        }
        FieldValue::Name(name) => assert_eq!(concat(&[*name, b"\0"]), bytes, "{id}"),
        FieldValue::Signature(signature) => {
            assert_eq!(signature.raw, bytes, "{id}");
            if let Some(header) = signature.header {
                assert_eq!(9 + header.signature_len as usize, bytes.len(), "{id}: signature length");
            }
        }
        FieldValue::Bytes(data) => assert_eq!(*data, bytes, "{id}"),
        FieldValue::Uint(number) => {
            let encoded = match bytes.len() {
                2 => u16::try_from(*number).map(|n| order.u16_bytes(n).to_vec()).ok(),
                4 => u32::try_from(*number).map(|n| order.u32_bytes(n).to_vec()).ok(),
                _ => None,
            };
            assert_eq!(encoded.as_deref(), Some(bytes), "{id}: {number} is not the data");
        }
        FieldValue::XattrNames(names) => assert_eq!(concat(&[names.join(&b'|').as_slice(), b"\0"]), bytes, "{id}"),
        FieldValue::XattrLengths(lengths) => {
            let encoded: Vec<u8> = lengths.iter().flat_map(|&len| order.u32_bytes(len)).collect();
            assert_eq!(encoded, bytes, "{id}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthOptions, SyntheticList, TemplateMix};

    fn synthetic(bank: Bank, byte_order: ByteOrder) -> impl Iterator<Item = Record> {
        let options = SynthOptions {
            records: 40,
            templates: TemplateMix::All,
            violation_every: Some(7),
            bank,
            byte_order,
            ..SynthOptions::default()
        };
        SyntheticList::new(options)
    }

    #[test]
    fn binary_layout_reaches_every_size_and_order() {
        let layouts: Vec<BinaryLayout> = (0..8).map(binary_layout).collect();
        for size in DIGEST_SIZES {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                assert!(layouts.contains(&BinaryLayout { digest_size: size, byte_order: order }), "{size} {order}");
            }
        }
    }

    #[test]
    fn list_targets_accept_synthetic_lists() {
        for (selector, bank) in [Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512].into_iter().enumerate() {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                let mut input = vec![selector as u8 | if order == ByteOrder::Big { 0b100 } else { 0 }];
                let mut text = Vec::new();
                for record in synthetic(bank, order) {
                    binary::encode_record(&record, &record.digest, order, &mut input);
                    ascii::encode_record(&record, &record.digest, &mut text);
                }
                binary_list(&input);
                list(&input[1..]);
                ascii_list(&text);
                list(&text);
                // Prefixes at every 97th byte (89th for ASCII), from the empty input on.
                for cut in (0..input.len()).step_by(97) {
                    binary_list(&input[..cut]);
                    list(&input[1..cut.max(1)]);
                }
                for cut in (0..text.len()).step_by(89) {
                    ascii_list(&text[..cut]);
                }
            }
        }
    }

    #[test]
    fn field_value_accepts_every_selector() {
        let samples: [&[u8]; 7] =
            [b"", b"\0", b"sha256:\0\x01\x02", b"ima:sha1:\0\xff", b"/bin/sh\0", b"\x01\x02", b"abcd"];
        for selector in 0..=0x3f_u8 {
            for sample in samples {
                let mut input = vec![selector];
                input.extend_from_slice(sample);
                field_value(&input);
            }
        }
    }

    #[test]
    fn pcr_yaml_and_bank_names_hold_invariants() {
        pcr_yaml(b"  sha1:\n    10: 0x9BE6BAC02BF18D09D17E726C2DF00BCA4E8831EA\n  sm3_256:\n    0: 00\n");
        pcr_yaml(b"  sha256:\n    10: 0x7FAC48C81837D6D29046008AEF0CDAD8C2745CC98C3340CBBA9BFDF39B4124B8\n");
        pcr_yaml(b"\xff\n  tpm_alg_27:\n");
        for name in ["sha1", "SM3_256", "sha3_384", "tpm_alg_27", "tpm_alg_99:40", "sha384:padded", "tpm_alg_0x:", ""] {
            bank_name(name.as_bytes());
        }
    }
}
