//! Property tests for the list codecs. Random but structurally valid records
//! for every built-in template and for random custom format strings
//! round-trip through the binary and ASCII encodings. Template digests hash
//! exactly the binary template data. A list cut at any byte decodes to the
//! records before the cut and then one error at the cut.
//!
//! Field data follows the rules of `field::validate`: a `d-ng` value is
//! `<algo>:` NUL digest, a string ends with its only NUL, `iuid`/`igid` are
//! 4 bytes, `imode` 2 bytes, `xattrlengths` a multiple of 4, and every field
//! but the legacy `d` and `n` may be empty.

use std::io::BufReader;
use std::sync::Arc;

use imalog_core::{
    ascii, binary, AsciiDecoder, BinaryDecoder, BinaryLayout, ByteOrder, DecodeError, Digest, FieldId, HashAlgorithm,
    ListKind, ListOptions, ListReader, Location, Record, Template, TemplateData,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

/// Case counts stay low so that the suite runs in a few seconds in a debug
/// build. Setting PROPTEST_CASES runs that many cases per test instead.
/// Failures are not persisted to files, so a case worth keeping becomes a
/// named unit test.
fn config(cases: u32) -> ProptestConfig {
    let defaults = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { defaults.cases } else { cases };
    ProptestConfig { cases, failure_persistence: None, ..defaults }
}

const BUILTIN_NAMES: [&str; 8] =
    ["ima", "ima-ng", "ima-sig", "ima-ngv2", "ima-sigv2", "ima-buf", "ima-modsig", "evm-sig"];

const DIGEST_WIDTHS: [usize; 4] = [20, 32, 48, 64];

/// The encoding a generated record must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// Everything `field::validate` accepts.
    Binary,
    /// Only what an ASCII line can carry; each restriction is applied where
    /// the field is generated.
    Ascii,
}

/// What a field generator needs to know about the record around it.
#[derive(Clone, Copy, Debug)]
struct FieldContext {
    encoding: Encoding,
    order: ByteOrder,
    /// The legacy `ima` template: `d` is exactly 20 bytes and `n` at most
    /// 255 characters plus its NUL.
    legacy: bool,
    /// ASCII only: an event name may hold spaces only when the template has
    /// exactly one name field, because the parser gives the name whatever
    /// lies between the fields split from the left and from the right. With
    /// two or more names, the part between the first and the last name is
    /// split at every space.
    spaces_in_names: bool,
    /// ASCII only: the field ends the line, so it must not end in CR (the
    /// parser rejects CR LF line ends).
    last: bool,
}

/// A list of records that share a digest width and a byte order.
#[derive(Clone, Debug)]
struct List {
    digest_width: usize,
    order: ByteOrder,
    records: Vec<Record>,
}

impl List {
    fn layout(&self) -> BinaryLayout {
        BinaryLayout { digest_size: self.digest_width, byte_order: self.order }
    }

    /// Encodes the list in the binary format; returns the bytes and the end
    /// offset of each record.
    fn encode_binary(&self) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for record in &self.records {
            binary::encode_record(record, &record.digest, self.order, &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    /// Encodes the list in the ASCII format; returns the bytes and the end
    /// offset of each line, newline included.
    fn encode_ascii(&self) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for record in &self.records {
            ascii::encode_record(record, &record.digest, &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }
}

fn byte_order() -> impl Strategy<Value = ByteOrder> {
    select(vec![ByteOrder::Little, ByteOrder::Big])
}

/// Random bytes of a length in `lengths`.
fn bytes(lengths: std::ops::RangeInclusive<usize>) -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), lengths).boxed()
}

/// Generates a file digest of a common width or of any width up to 64
/// bytes. A few are all zero, as in violation records.
fn file_digest() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => select(vec![0usize, 16, 20, 32, 48, 64]).prop_flat_map(|len| bytes(len..=len)),
        1 => bytes(0..=64),
        1 => select(vec![20usize, 32]).prop_map(|len| vec![0; len]),
    ]
    .boxed()
}

/// Printable ASCII other than space (0x21 to 0x7e), as `d-ng` prefixes
/// require; `exclude_colon` keeps colons out of a `d-ngv2` digest type.
fn prefix_text(exclude_colon: bool, lengths: std::ops::RangeInclusive<usize>) -> BoxedStrategy<Vec<u8>> {
    vec(0x21u8..=0x7e, lengths)
        .prop_map(move |mut text| {
            if exclude_colon {
                text.iter_mut().filter(|b| **b == b':').for_each(|b| *b = b'_');
            }
            text
        })
        .boxed()
}

fn algorithm_name() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => select(vec!["sha1", "sha256", "sha384", "sha512", "sm3", "md5", "sha3-256", "rmd160"])
            .prop_map(|name| name.as_bytes().to_vec()),
        1 => prefix_text(false, 1..=12),
    ]
    .boxed()
}

/// `d-ng` and `d-modsig`: `<algo>:` NUL digest, or empty.
fn digest_with_algo() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => (algorithm_name(), file_digest()).prop_map(|(algo, digest)| {
            let mut data = algo;
            data.extend_from_slice(b":\0");
            data.extend_from_slice(&digest);
            data
        }),
        1 => Just(Vec::new()),
    ]
    .boxed()
}

/// `d-ngv2`: `<type>:<algo>:` NUL digest, or empty.
fn digest_with_type_and_algo() -> BoxedStrategy<Vec<u8>> {
    let digest_type = prop_oneof![
        3 => select(vec!["ima", "verity"]).prop_map(|name| name.as_bytes().to_vec()),
        1 => prefix_text(true, 1..=8),
    ];
    prop_oneof![
        6 => (digest_type, algorithm_name(), file_digest()).prop_map(|(digest_type, algo, digest)| {
            let mut data = digest_type;
            data.push(b':');
            data.extend_from_slice(&algo);
            data.extend_from_slice(b":\0");
            data.extend_from_slice(&digest);
            data
        }),
        1 => Just(Vec::new()),
    ]
    .boxed()
}

/// Applies the ASCII restrictions to the text of a string field: no newline
/// (it ends the line), spaces only where the context allows them, and no CR
/// at the end of the line.
fn restrict_for_ascii(text: &mut [u8], context: FieldContext, spaces: bool) {
    if context.encoding != Encoding::Ascii {
        return;
    }
    for byte in text.iter_mut() {
        if *byte == b'\n' || (*byte == b' ' && !spaces) {
            *byte = b'_';
        }
    }
    if context.last {
        if let Some(byte @ b'\r') = text.last_mut() {
            *byte = b'_';
        }
    }
}

/// Name bytes: mostly path-like characters and spaces, sometimes any byte
/// except NUL.
fn name_text(max_len: usize) -> BoxedStrategy<Vec<u8>> {
    let byte = prop_oneof![
        3 => select(b"/usr/lib-_.x0 ".to_vec()),
        1 => 1u8..=255,
    ];
    prop_oneof![
        4 => vec(byte.clone(), 0..=40.min(max_len)),
        1 => vec(byte, max_len.saturating_sub(8)..=max_len),
    ]
    .boxed()
}

/// `n` and `n-ng`: the name and its NUL. In binary lists a non-legacy name
/// field may also be empty. ASCII cannot show that, because an empty
/// rendering parses back as a lone NUL. The legacy `n` has no empty binary
/// form either: its length word counts the characters, and the decoder
/// appends the NUL.
fn event_name(id: FieldId, context: FieldContext) -> BoxedStrategy<Vec<u8>> {
    let max_len = if context.legacy && id == FieldId::N { 255 } else { 300 };
    let with_nul = name_text(max_len).prop_map(move |mut text| {
        restrict_for_ascii(&mut text, context, context.spaces_in_names);
        text.push(0);
        text
    });
    if context.encoding == Encoding::Binary && !context.legacy {
        prop_oneof![8 => with_nul, 1 => Just(Vec::new())].boxed()
    } else {
        with_nul.boxed()
    }
}

/// `xattrnames`: names joined by `|`, then a NUL, or empty. In ASCII the
/// names hold no spaces (the fields after an event name are split at the
/// last spaces of the line), and a lone NUL is not generated because it
/// renders like an empty field.
fn xattr_names(context: FieldContext) -> BoxedStrategy<Vec<u8>> {
    let name = prop_oneof![
        3 => select(vec!["security.ima", "security.selinux", "security.evm", "security.SMACK64"])
            .prop_map(|name| name.as_bytes().to_vec()),
        1 => vec(1u8..=255, 0..=12),
    ];
    let joined = vec(name, 1..=4).prop_map(move |names| {
        let mut text = names.join(&b'|');
        restrict_for_ascii(&mut text, context, false);
        if context.encoding == Encoding::Ascii && text.is_empty() {
            text.push(b'|');
        }
        text.push(0);
        text
    });
    prop_oneof![5 => joined, 1 => Just(Vec::new())].boxed()
}

/// `sig` and `evmsig`: empty, a v2/v3 signature header with its signature,
/// or bytes that are not a header.
fn signature() -> BoxedStrategy<Vec<u8>> {
    let with_header = (select(vec![3u8, 5, 6]), select(vec![2u8, 3]), 0u8..=22, any::<[u8; 4]>(), bytes(0..=96))
        .prop_map(|(xattr_type, version, hash_algo, key_id, signature)| {
            let mut data = vec![xattr_type, version, hash_algo];
            data.extend_from_slice(&key_id);
            data.extend_from_slice(&(signature.len() as u16).to_be_bytes());
            data.extend_from_slice(&signature);
            data
        });
    prop_oneof![2 => Just(Vec::new()), 2 => with_header, 1 => bytes(1..=64)].boxed()
}

/// `iuid`, `igid` (4 bytes) and `imode` (2 bytes) in the list's byte order,
/// or empty.
fn uint_field(width: usize, order: ByteOrder) -> BoxedStrategy<Vec<u8>> {
    let value = any::<u32>().prop_map(move |value| {
        if width == 2 {
            order.u16_bytes(value as u16).to_vec()
        } else {
            order.u32_bytes(value).to_vec()
        }
    });
    prop_oneof![4 => value, 1 => Just(Vec::new())].boxed()
}

fn field_data(id: FieldId, context: FieldContext) -> BoxedStrategy<Vec<u8>> {
    match id {
        FieldId::D if context.legacy => prop_oneof![4 => bytes(20..=20), 1 => Just(vec![0; 20])].boxed(),
        FieldId::D => prop_oneof![1 => Just(Vec::new()), 4 => file_digest()].boxed(),
        FieldId::N | FieldId::NNg => event_name(id, context),
        FieldId::DNg | FieldId::DModsig => digest_with_algo(),
        FieldId::DNgV2 => digest_with_type_and_algo(),
        FieldId::Sig | FieldId::EvmSig => signature(),
        FieldId::Modsig | FieldId::Buf | FieldId::XattrValues => bytes(0..=100),
        FieldId::Iuid | FieldId::Igid => uint_field(4, context.order),
        FieldId::Imode => uint_field(2, context.order),
        FieldId::XattrNames => xattr_names(context),
        FieldId::XattrLengths => {
            let order = context.order;
            vec(any::<u32>(), 0..=4)
                .prop_map(move |lengths| lengths.into_iter().flat_map(|len| order.u32_bytes(len)).collect())
                .boxed()
        }
        // FieldId is non-exhaustive; a new id gets an empty field until it
        // has a generator.
        _ => Just(Vec::new()).boxed(),
    }
}

/// Picks a built-in template, or a custom format string of 1 to 15 field ids.
fn template() -> BoxedStrategy<Arc<Template>> {
    let builtin = select(BUILTIN_NAMES.to_vec())
        .prop_map(|name| Template::builtin(name).unwrap_or_else(|| panic!("built-in template {name} is missing")));
    let custom = vec(select(FieldId::ALL.to_vec()), 1..=15).prop_map(|ids| {
        let format = ids.iter().map(|id| id.as_str()).collect::<Vec<_>>().join("|");
        Arc::new(Template::custom(&format).unwrap_or_else(|e| panic!("format {format}: {e}")))
    });
    prop_oneof![2 => builtin, 1 => custom].boxed()
}

/// Generates the logged template digest: random, or all zero as for a
/// violation.
fn logged_digest(width: usize) -> BoxedStrategy<Digest> {
    prop_oneof![4 => bytes(width..=width), 1 => Just(vec![0; width])]
        .prop_map(|bytes| Digest::from_slice(&bytes).unwrap_or_else(|| panic!("{}-byte digest", bytes.len())))
        .boxed()
}

fn record(encoding: Encoding, digest_width: usize, order: ByteOrder) -> BoxedStrategy<Record> {
    template()
        .prop_flat_map(move |template| {
            let names = template.fields().iter().filter(|id| matches!(id, FieldId::N | FieldId::NNg)).count();
            let count = template.fields().len();
            let fields: Vec<BoxedStrategy<Vec<u8>>> = template
                .fields()
                .iter()
                .enumerate()
                .map(|(position, &id)| {
                    let context = FieldContext {
                        encoding,
                        order,
                        legacy: template.is_legacy_ima(),
                        spaces_in_names: names == 1,
                        last: position + 1 == count,
                    };
                    field_data(id, context)
                })
                .collect();
            (Just(template), 0u32..=63, logged_digest(digest_width), fields)
        })
        .prop_map(move |(template, pcr, digest, fields)| {
            let data = TemplateData::from_fields(fields.iter().map(Vec::as_slice))
                .unwrap_or_else(|e| panic!("template {}: {e}", template.name()));
            Record { pcr, template, data, digest, byte_order: order }
        })
        .boxed()
}

fn list(encoding: Encoding, counts: std::ops::RangeInclusive<usize>) -> BoxedStrategy<List> {
    (select(DIGEST_WIDTHS.to_vec()), byte_order())
        .prop_flat_map(move |(digest_width, order)| {
            vec(record(encoding, digest_width, order), counts.clone()).prop_map(move |records| List {
                digest_width,
                order,
                records,
            })
        })
        .boxed()
}

/// Checks that every generated record passes the core's own validation, so
/// that a generator bug cannot pass as a codec bug.
fn check_generated(list: &List) -> Result<(), TestCaseError> {
    for (index, record) in list.records.iter().enumerate() {
        if let Err(error) = record.validate() {
            return Err(TestCaseError::fail(format!("generated record {index} is invalid: {error}: {record:?}")));
        }
    }
    Ok(())
}

/// Collects decoded records up to the first error; checks that nothing
/// follows the error.
fn collect_until_error(
    mut items: impl Iterator<Item = Result<Record, DecodeError>>,
) -> Result<(Vec<Record>, Option<DecodeError>), TestCaseError> {
    let mut records = Vec::new();
    for item in items.by_ref() {
        match item {
            Ok(record) => records.push(record),
            Err(error) => {
                prop_assert!(items.next().is_none(), "an item follows the error {error}");
                return Ok((records, Some(error)));
            }
        }
    }
    Ok((records, None))
}

fn ascii_options(order: ByteOrder) -> ListOptions {
    ListOptions { byte_order: Some(order), ..ListOptions::default() }
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn binary_list_round_trips(list in list(Encoding::Binary, 0..=6)) {
        check_generated(&list)?;
        let (bytes, _) = list.encode_binary();

        let decoded: Result<Vec<Record>, DecodeError> = BinaryDecoder::new(bytes.as_slice(), list.layout()).collect();
        prop_assert_eq!(decoded?, list.records.clone());

        // A slice holds the whole input, so the decoder takes its in-buffer
        // path. A reader whose buffer is smaller than a record sends every
        // record down the item-by-item path instead.
        for capacity in [1, 7, 64] {
            let reader = BufReader::with_capacity(capacity, bytes.as_slice());
            let decoded: Result<Vec<Record>, DecodeError> = BinaryDecoder::new(reader, list.layout()).collect();
            prop_assert_eq!(decoded?, list.records.clone(), "buffer of {} bytes", capacity);
        }

        // Detection sees the digest width and byte order: a binary list's
        // first record lands a valid template name only under its own
        // layout (an empty list has no format).
        let mut reader = ListReader::open(bytes.as_slice(), ListOptions::default())?;
        let detected: Vec<Record> = reader.by_ref().collect::<Result<_, _>>()?;
        prop_assert_eq!(&detected, &list.records);
        if let Some(format) = reader.format() {
            prop_assert_eq!(format.kind, ListKind::Binary);
            prop_assert_eq!(format.bank.digest_size(), list.digest_width);
            prop_assert_eq!(format.byte_order, list.order);
        } else {
            prop_assert!(list.records.is_empty());
        }
    }

    #[test]
    fn ascii_list_round_trips(list in list(Encoding::Ascii, 0..=6)) {
        check_generated(&list)?;
        let (bytes, _) = list.encode_ascii();

        // The digest width given, and taken from the first line.
        for width in [Some(list.digest_width), None] {
            let decoded: Result<Vec<Record>, DecodeError> =
                AsciiDecoder::new(bytes.as_slice(), width, list.order).collect();
            prop_assert_eq!(decoded?, list.records.clone());
        }

        // ASCII lines cannot show the byte order, so it is given.
        let mut reader = ListReader::open(bytes.as_slice(), ascii_options(list.order))?;
        let detected: Vec<Record> = reader.by_ref().collect::<Result<_, _>>()?;
        prop_assert_eq!(&detected, &list.records);
        if let Some(format) = reader.format() {
            prop_assert_eq!(format.kind, ListKind::Ascii);
            prop_assert_eq!(format.bank.digest_size(), list.digest_width);
        } else {
            prop_assert!(list.records.is_empty());
        }

        // A record ASCII can carry also survives binary, and the two
        // encodings decode to the same record.
        let (binary_bytes, _) = list.encode_binary();
        let from_binary: Result<Vec<Record>, DecodeError> =
            BinaryDecoder::new(binary_bytes.as_slice(), list.layout()).collect();
        prop_assert_eq!(from_binary?, list.records.clone());
    }

    #[test]
    fn template_digest_hashes_binary_template_data(list in list(Encoding::Binary, 1..=4)) {
        check_generated(&list)?;
        for mut record in list.records.clone() {
            for _ in 0..2 {
                let order = record.byte_order;
                let mut encoded = Vec::new();
                binary::encode_record(&record, &record.digest, order, &mut encoded);
                let input = if record.template.is_legacy_ima() {
                    legacy_digest_input(&record)
                } else {
                    // PCR index, template digest, name length, name, then
                    // the template data length word.
                    let start = 4 + list.digest_width + 4 + record.template.name().len() + 4;
                    let length = order.u32(word_at(&encoded, start - 4));
                    prop_assert_eq!(length as u64, record.data.template_data_len());
                    prop_assert_eq!(encoded.len(), start + length as usize);
                    encoded[start..].to_vec()
                };
                for algorithm in HashAlgorithm::ALL {
                    prop_assert_eq!(
                        record.template_digest(algorithm),
                        algorithm.digest(&input),
                        "{} in {:?} order, template {}", algorithm, order, record.template.name()
                    );
                }
                let other = match order {
                    ByteOrder::Little => ByteOrder::Big,
                    ByteOrder::Big => ByteOrder::Little,
                };
                record.set_byte_order(other);
                prop_assert!(record.validate().is_ok(), "record invalid after changing byte order");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn binary_prefix_decodes_records_before_cut(list in list(Encoding::Binary, 1..=4)) {
        check_generated(&list)?;
        let (bytes, ends) = list.encode_binary();
        for cut in 1..bytes.len() {
            if ends.contains(&cut) {
                continue;
            }
            let prefix = &bytes[..cut];
            let complete = ends.iter().filter(|&&end| end <= cut).count();
            let record_start = if complete == 0 { 0 } else { ends[complete - 1] };

            let decoder = BinaryDecoder::new(prefix, list.layout());
            let (records, error) = collect_until_error(decoder)?;
            prop_assert_eq!(&records[..], &list.records[..complete], "cut at {}", cut);
            let error = error.ok_or_else(|| TestCaseError::fail(format!("cut at {cut}: no error")))?;
            check_cut_error(&error, complete, record_start, cut)?;

            // The item-by-item path must fail the same way.
            let decoder = BinaryDecoder::new(BufReader::with_capacity(5, prefix), list.layout());
            let (records, item_error) = collect_until_error(decoder)?;
            prop_assert_eq!(&records[..], &list.records[..complete], "small buffer, cut at {}", cut);
            let item_error = item_error.ok_or_else(|| TestCaseError::fail(format!("small buffer, cut at {cut}: no error")))?;
            prop_assert_eq!(item_error.to_string(), error.to_string(), "small buffer, cut at {}", cut);

            // Detection needs one complete record to tell the layout, so a
            // cut inside the first record must fail rather than guess. Under
            // 4 bytes the input may even pass for ASCII, so the error's
            // location is checked only once a record is complete.
            match ListReader::open(prefix, ListOptions::default()) {
                Ok(reader) => {
                    let (records, error) = collect_until_error(reader)?;
                    prop_assert_eq!(&records[..], &list.records[..complete], "detected, cut at {}", cut);
                    let error = error.ok_or_else(|| TestCaseError::fail(format!("detected, cut at {cut}: no error")))?;
                    if complete == 0 {
                        prop_assert_eq!(error.record, 0, "detected, cut at {}: {}", cut, error);
                    } else {
                        check_cut_error(&error, complete, record_start, cut)?;
                    }
                }
                Err(error) => {
                    prop_assert_eq!(complete, 0, "detection failed with {} records complete: {}", complete, error);
                    prop_assert_eq!(error.record, 0);
                }
            }
        }
    }

    #[test]
    fn ascii_prefix_decodes_lines_before_cut(list in list(Encoding::Ascii, 1..=4)) {
        check_generated(&list)?;
        let (bytes, ends) = list.encode_ascii();
        for cut in 1..bytes.len() {
            if ends.contains(&cut) {
                continue;
            }
            let prefix = &bytes[..cut];
            let complete = ends.iter().filter(|&&end| end <= cut).count();
            let line_start = if complete == 0 { 0 } else { ends[complete - 1] };
            let partial = &prefix[line_start..];

            let mut decoder = AsciiDecoder::new(prefix, None, list.order);
            let mut records = Vec::new();
            for _ in 0..complete {
                match decoder.next() {
                    Some(Ok(record)) => records.push(record),
                    other => return Err(TestCaseError::fail(format!("cut at {cut}: complete line gave {other:?}"))),
                }
            }
            prop_assert_eq!(&records[..], &list.records[..complete], "cut at {}", cut);
            let short_lines = decoder.short_lines();
            match decoder.next() {
                Some(Ok(record)) => {
                    // The partial line decodes only if it is a valid line
                    // in its own right: its record re-encodes to the same
                    // tokens, plus the empty tokens of trailing empty
                    // fields when the decoder counted the line as short.
                    prop_assert!(record.validate().is_ok(), "cut at {}: invalid record", cut);
                    let mut line = Vec::new();
                    ascii::encode_record(&record, &record.digest, &mut line);
                    let short = decoder.short_lines() > short_lines;
                    prop_assert!(same_line(partial, &line, short), "cut at {}: {:?} re-encodes as {:?}",
                        cut, String::from_utf8_lossy(partial), String::from_utf8_lossy(&line));
                    let again: Vec<Record> = AsciiDecoder::new(line.as_slice(), None, list.order).collect::<Result<_, _>>()?;
                    prop_assert_eq!(again, vec![record], "cut at {}: the re-encoded line decodes differently", cut);
                    prop_assert!(decoder.next().is_none(), "cut at {}: an item follows the last line", cut);
                }
                Some(Err(error)) => {
                    prop_assert_eq!(error.record, complete as u64, "cut at {}: {}", cut, error);
                    prop_assert_eq!(error.location, Location::Line(complete as u64 + 1), "cut at {}: {}", cut, error);
                    prop_assert!(decoder.next().is_none(), "cut at {}: an item follows the error", cut);
                }
                None => return Err(TestCaseError::fail(format!("cut at {cut}: the partial line vanished"))),
            }

            // The reader over either format must agree with the decoder on
            // the complete lines.
            let reader = ListReader::open(prefix, ascii_options(list.order))?;
            let (records, _) = collect_until_error(reader)?;
            prop_assert!(records.len() >= complete, "cut at {}: {} of {} complete lines", cut, records.len(), complete);
            prop_assert_eq!(&records[..complete], &list.records[..complete], "detected, cut at {}", cut);
        }
    }
}

/// Compares a partial ASCII line with the re-encoding of what it decoded
/// to, token by token: hex may change case, a decimal may lose leading
/// zeros, and a short line gains empty trailing tokens.
fn same_line(partial: &[u8], encoded: &[u8], short: bool) -> bool {
    let Some(encoded) = encoded.strip_suffix(b"\n") else {
        return false;
    };
    let partial: Vec<&[u8]> = partial.split(|&b| b == b' ').collect();
    let encoded: Vec<&[u8]> = encoded.split(|&b| b == b' ').collect();
    if encoded.len() < partial.len() || (encoded.len() > partial.len()) != short {
        return false;
    }
    let decimal = |token: &[u8]| !token.is_empty() && token.iter().all(u8::is_ascii_digit);
    let without_leading_zeros =
        |token: &[u8]| -> Vec<u8> { token.iter().copied().skip_while(|&d| d == b'0').collect() };
    let same_token = |a: &[u8], b: &[u8]| {
        a.eq_ignore_ascii_case(b) || (decimal(a) && decimal(b) && without_leading_zeros(a) == without_leading_zeros(b))
    };
    partial.iter().zip(&encoded).all(|(a, b)| same_token(a, b)) && encoded[partial.len()..].iter().all(|t| t.is_empty())
}

fn word_at(bytes: &[u8], at: usize) -> [u8; 4] {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    word
}

/// Builds the legacy `ima` template digest input: the 20-byte file digest,
/// then the name in a zero-filled 256-byte buffer.
fn legacy_digest_input(record: &Record) -> Vec<u8> {
    let mut input = record.data.field(0).unwrap_or_default().to_vec();
    let name = record.data.field(1).unwrap_or_default();
    let mut buffer = [0u8; 256];
    buffer[..name.len()].copy_from_slice(name);
    input.extend_from_slice(&buffer);
    input
}

/// Checks the error that ends a cut binary list: it belongs to the first
/// incomplete record and points between that record's start and the cut.
fn check_cut_error(error: &DecodeError, complete: usize, record_start: usize, cut: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(error.record, complete as u64, "cut at {}: {}", cut, error);
    match error.location {
        Location::Offset(offset) => {
            prop_assert!(
                (record_start as u64..=cut as u64).contains(&offset),
                "cut at {}: error offset {} outside {}..={}: {}",
                cut,
                offset,
                record_start,
                cut,
                error
            );
        }
        Location::Line(line) => return Err(TestCaseError::fail(format!("binary error at line {line}: {error}"))),
    }
    Ok(())
}
