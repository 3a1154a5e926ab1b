//! Golden tests over the real measurement lists kept beside the repository
//! (`IMALOG_REAL_TESTDATA`, by default `../shared/testdata/real` next to the
//! checkout): every list decodes, reproduces the PCR values known for it,
//! and converts between formats byte for byte.

use std::fs;
use std::path::{Path, PathBuf};

use imalog_core::{
    ascii, bank_from_file_name, binary, Bank, ByteOrder, DecodeErrorKind, Digest, ListOptions, ListReader, Location,
    Record, ReplayState, Replayer,
};

fn real(relative: &str) -> PathBuf {
    let base = std::env::var_os("IMALOG_REAL_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/real"));
    let path = base.join(relative);
    assert!(path.exists(), "real test data missing: {} (set IMALOG_REAL_TESTDATA)", path.display());
    path
}

fn options_for(path: &Path) -> ListOptions {
    ListOptions {
        bank_hint: path.file_name().and_then(|n| n.to_str()).and_then(bank_from_file_name),
        ..Default::default()
    }
}

fn read_list(relative: &str) -> (Vec<Record>, Bank) {
    let path = real(relative);
    let bytes = fs::read(&path).unwrap();
    let mut reader = ListReader::open(bytes.as_slice(), options_for(&path)).unwrap();
    let records: Vec<Record> = reader.by_ref().collect::<Result<_, _>>().unwrap_or_else(|e| panic!("{relative}: {e}"));
    let bank = reader.format().map(|f| f.bank).unwrap_or(Bank::SHA1);
    (records, bank)
}

fn replay(records: &[Record], list_bank: Bank, banks: &[Bank]) -> ReplayState {
    let mut replayer = Replayer::new(list_bank, banks, &ReplayState::cold_boot()).unwrap();
    for record in records {
        replayer.replay(record).unwrap();
    }
    replayer.state()
}

fn pcr10(state: &ReplayState, bank: Bank) -> String {
    state.value(&bank, 10).to_hex()
}

const IBMTSS_PCR10: [(Bank, &str); 4] = [
    (Bank::SHA1, "9be6bac02bf18d09d17e726c2df00bca4e8831ea"),
    (Bank::SHA256, "7fac48c81837d6d29046008aef0cdad8c2745cc98c3340cbba9bfdf39b4124b8"),
    (Bank::SHA384, "e8923687b18847064ff3af89fd7ed088fa03c8b2467f7f8648bab264684575beb92e707d813ed561189492bb4b6e5c8b"),
    (
        Bank::SHA512,
        "698dab0fbb7c4ae0ec4ecae0d3890e9635cc2ba97b9dec459f9ef867b96d858843697c701e580931d6f2cf1e18acb2b3192eb660e871a37cf5b45392086ce807",
    ),
];

#[test]
fn ibmtss_lists_reproduce_quoted_pcr10_in_every_bank() {
    let banks: Vec<Bank> = IBMTSS_PCR10.iter().map(|(b, _)| *b).collect();
    for (file, own_bank) in [
        ("ibmtss/sha1.log", Bank::SHA1),
        ("ibmtss/sha256.log", Bank::SHA256),
        ("ibmtss/sha384.log", Bank::SHA384),
        ("ibmtss/sha512.log", Bank::SHA512),
    ] {
        // The files carry no bank in their names; the digest size decides.
        let (records, bank) = read_list(file);
        assert_eq!(bank, own_bank, "{file}");
        assert_eq!(records.len(), 362, "{file}");
        let state = replay(&records, bank, &banks);
        for (bank, expected) in IBMTSS_PCR10 {
            assert_eq!(pcr10(&state, bank), expected, "{file} bank {bank}");
        }
    }
}

#[test]
fn ibmtss_per_bank_lists_share_template_data() {
    let (sha1, _) = read_list("ibmtss/sha1.log");
    for file in ["ibmtss/sha256.log", "ibmtss/sha384.log", "ibmtss/sha512.log"] {
        let (other, bank) = read_list(file);
        for (a, b) in sha1.iter().zip(&other) {
            assert_eq!(a.data, b.data, "{file}");
            assert_eq!(b.bank_digest(&bank), b.digest, "{file}");
            assert_eq!(a.bank_digest(&bank), b.digest, "{file}: sha1 list recomputes the {bank} digest");
        }
    }
}

#[test]
fn keylime_perf_quote_pcr10_sha256_from_ascii() {
    let (records, bank) = read_list("keylime-perf-tests/ima_log.txt");
    assert_eq!(records.len(), 780);
    assert_eq!(bank, Bank::SHA1);
    let state = replay(&records, bank, &[Bank::SHA256]);
    assert_eq!(pcr10(&state, Bank::SHA256), "0a1447c37555073b670b94072e7aaf60ace6bd320a7c81fe8dec9a10289b85c8");
}

#[test]
fn keylime_perf_boot_aggregate_matches_quoted_pcrs_0_to_9() {
    // The quote's PCRs 0-9 (sha256), from the subject_data blob: their
    // hash is the boot_aggregate of the first record.
    let (records, _) = read_list("keylime-perf-tests/ima_log.txt");
    let first = &records[0];
    assert_eq!(first.event_name(), Some(&b"boot_aggregate"[..]));
    let value = first.field(imalog_core::FieldId::DNg).unwrap();
    assert_eq!(
        imalog_core::hex::encode(&value[8..]),
        "93138abe41fbbfb38443973142644c6a1439fb9277afa0203b1b06ce6d07422f"
    );
}

/// Replays that an independent script computed (SOURCES.md); they pin the
/// behaviour on violations, the `ima` template and names with spaces.
#[test]
fn cross_checked_replays_of_other_real_lists() {
    let cases: [(&str, Bank, &str); 11] = [
        ("rust-keylime/ascii_runtime_measurements", Bank::SHA1, "82231c67a69da98dc5b3aa10f6343d33109225fc"),
        (
            "rust-keylime/ascii_runtime_measurements",
            Bank::SHA256,
            "c4a065637fc6a7c55f2811dd06cb45dd037133be2b3dc5c3e6fbe6bf061db724",
        ),
        ("keylime/ascii_runtime_measurements_ima", Bank::SHA1, "93aacc9ec455c429c1a2d291650e40e7655565d8"),
        (
            "keylime/ascii_runtime_measurements_ima",
            Bank::SHA256,
            "48fe08ab3cfdb485e61ac6cc6d4c40a09eef0dce7ddfc93dce6f18a955fd61d4",
        ),
        ("embrave/37d16c0f/binary_runtime_measurements", Bank::SHA1, "f38695bbd9479953543813fb13bb88235440504e"),
        (
            "embrave/37d16c0f/ascii_runtime_measurements",
            Bank::SHA256,
            "0d204f41041c48fe0d2e1ef0a6c308412c27304a68519d3ce3568a692d3fea83",
        ),
        ("kunpengsecl/ascii_runtime_measurements_orig", Bank::SHA1, "5f3a1c1f97bc9afd20800b7cfe989c0e596aeb6a"),
        (
            "kunpengsecl/ascii_runtime_measurements_ima-ng_sha1_orig",
            Bank::SHA1,
            "f78f23f022769c0dba5e9aaf0decf9abf7415dd0",
        ),
        (
            "kunpengsecl/ascii_runtime_measurements_ima-ng_sha256_orig",
            Bank::SHA1,
            "eb0a2db6dbb4a32b795765367c6c1849d6683070",
        ),
        (
            "ima_log_lib/binary_runtime_measurements_sha256",
            Bank::SHA256,
            "0976b416f6389312214cfcd54dce54f074196886497f3ea4688928c1165cf472",
        ),
        (
            "global-trust-authority/ima.bin",
            Bank::SHA256,
            "8c4fb94d4d15f6069aad176dace62a2ec0720ae864473d6419978da5b168ce11",
        ),
    ];
    for (file, bank, expected) in cases {
        let (records, list_bank) = read_list(file);
        let state = replay(&records, list_bank, &[bank]);
        assert_eq!(pcr10(&state, bank), expected, "{file} bank {bank}");
    }
}

#[test]
fn real_lists_count_violations() {
    let cases = [
        ("keylime/ascii_runtime_measurements_ima", 867, 9),
        ("kunpengsecl/ascii_runtime_measurements_orig", 5566, 14),
        ("kunpengsecl/ascii_runtime_measurements_ima-ng_sha1_orig", 2349, 1),
        ("kunpengsecl/ascii_runtime_measurements_ima-ng_sha256_orig", 2514, 3),
        ("tpm2-tss/sml-ima-sig-sha256-invalidated.bin", 2, 1),
    ];
    for (file, total, violations) in cases {
        let (records, _) = read_list(file);
        assert_eq!(records.len(), total, "{file}");
        assert_eq!(records.iter().filter(|r| r.is_violation()).count(), violations, "{file}");
    }
}

#[test]
fn names_with_spaces_survive_ascii() {
    let (records, _) = read_list("kunpengsecl/ascii_runtime_measurements_orig");
    let spaced: Vec<&Record> = records.iter().filter(|r| r.event_name().is_some_and(|n| n.contains(&b' '))).collect();
    assert_eq!(spaced.len(), 5);
    assert_eq!(spaced[0].event_name(), Some(&b"/tmp/#17634599 (deleted)"[..]));
}

#[test]
fn sm3_list_verifies_with_name_hint() {
    let (records, bank) = read_list("keylime/ima-log-sm3_256");
    assert_eq!(bank, Bank::SM3);
    let mut replayer = Replayer::new(bank, &[Bank::SM3], &ReplayState::cold_boot()).unwrap();
    for record in &records {
        replayer.replay(record).unwrap();
    }
}

/// Encodes records in the list's own format, bank and byte order.
fn encode(records: &[Record], ascii_output: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        if ascii_output {
            ascii::encode_record(record, &record.digest, &mut out);
        } else {
            binary::encode_record(record, &record.digest, ByteOrder::Little, &mut out);
        }
    }
    out
}

#[test]
fn lists_in_both_forms_convert_byte_identically() {
    for (ascii_file, binary_file) in [
        ("embrave/37d16c0f/ascii_runtime_measurements", "embrave/37d16c0f/binary_runtime_measurements"),
        ("global-trust-authority/ima.log", "global-trust-authority/ima.bin"),
    ] {
        let ascii_bytes = fs::read(real(ascii_file)).unwrap();
        let binary_bytes = fs::read(real(binary_file)).unwrap();
        let (from_ascii, _) = read_list(ascii_file);
        let (from_binary, _) = read_list(binary_file);
        assert_eq!(from_ascii, from_binary, "{ascii_file}");
        assert!(encode(&from_ascii, false) == binary_bytes, "{ascii_file} -> binary differs from {binary_file}");
        assert!(encode(&from_binary, true) == ascii_bytes, "{binary_file} -> ASCII differs from {ascii_file}");
    }
}

#[test]
fn every_list_round_trips_through_the_other_format() {
    let lists = [
        "ibmtss/sha1.log",
        "ibmtss/sha256.log",
        "ibmtss/sha384.log",
        "ibmtss/sha512.log",
        "ibmtss/imatest.log",
        "ima_log_lib/binary_runtime_measurements_sha256",
        "tpm2-tss/sml-ima-sha1-invalidated.bin",
        "tpm2-tss/sml-ima-sig-sha256-invalidated.bin",
        "keylime-perf-tests/ima_log.txt",
        "rust-keylime/ascii_runtime_measurements",
        "rust-keylime/ima_log.txt",
        "keylime/ascii_runtime_measurements_ima",
        "keylime/ima-log-sha1",
        "keylime/ima-log-sha256",
        "keylime/ima-log-sha384",
        "keylime/ima-log-sha512",
        "keylime/ima-log-sm3_256",
        "keylime-tests/ima_log.txt",
        "keylime-tests/ascii_runtime_measurements-2",
        "kunpengsecl/ascii_runtime_measurements_orig",
        "kunpengsecl/ascii_runtime_measurements_ima-ng_sha1_orig",
        "kunpengsecl/ascii_runtime_measurements_ima-ng_sha256_orig",
        "ima-evm-utils/test_ascii_runtime_measurements",
        "ima-evm-utils/sample-ascii_runtime_measurements-pcrs-8-9",
    ];
    for file in lists {
        let original = fs::read(real(file)).unwrap();
        let (records, _) = read_list(file);
        let is_ascii = original.first().is_some_and(|b| b.is_ascii_digit() || *b == b' ');
        let other = encode(&records, !is_ascii);
        let reread: Vec<Record> = ListReader::open(other.as_slice(), options_for(&real(file)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(reread, records, "{file}");
        assert!(encode(&reread, is_ascii) == original, "{file}: round trip is not byte-identical");
    }
}

#[test]
fn ascii_without_trailing_spaces_reads_and_counts() {
    let path = real("keylime-tests/ascii_runtime_measurements-1");
    let bytes = fs::read(&path).unwrap();
    let mut reader = ListReader::open(bytes.as_slice(), ListOptions::default()).unwrap();
    let records: Vec<Record> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(reader.short_lines(), 1);
    assert_eq!(records[0].data.field(2), Some(&b""[..]));
    let state = replay(&records, Bank::SHA1, &[Bank::SHA1]);
    assert_eq!(state.next_index, 4);
}

fn decode_error(relative: &str) -> (usize, imalog_core::DecodeError) {
    let path = real(relative);
    let bytes = fs::read(&path).unwrap();
    let reader = match ListReader::open(bytes.as_slice(), options_for(&path)) {
        Ok(reader) => reader,
        Err(error) => return (0, error),
    };
    let mut good = 0;
    for item in reader {
        match item {
            Ok(_) => good += 1,
            Err(error) => return (good, error),
        }
    }
    panic!("{relative}: decoded without error");
}

#[test]
fn tpm2_tss_trailing_byte_is_reported_after_last_record() {
    let (good, error) = decode_error("tpm2-tss/sml-ima-ng-sha1.bin");
    assert_eq!(good, 6);
    assert_eq!(error.record, 6);
    assert_eq!(error.location, Location::Offset(558));
    assert!(matches!(error.kind, DecodeErrorKind::TrailingBytes { count: 1 }), "{error}");

    let (good, error) = decode_error("tpm2-tss/sml-ima-sha1.bin");
    assert_eq!(good, 12);
    assert_eq!(error.location, Location::Offset(916));
    assert!(matches!(error.kind, DecodeErrorKind::TrailingBytes { count: 1 }), "{error}");
}

#[test]
fn tpm2_tss_truncated_record_names_the_digest() {
    let (good, error) = decode_error("tpm2-tss/sml-ima-sig-sha256.bin");
    assert_eq!(good, 9);
    assert_eq!(error.record, 9);
    assert_eq!(error.location, Location::Offset(991));
    assert!(
        matches!(error.kind, DecodeErrorKind::Truncated { item: "template digest", expected: 20, found: 2 }),
        "{error}"
    );
    assert_eq!(error.to_string(), "record 9 at offset 991: truncated template digest: expected 20 bytes, found 2");
}

#[test]
fn tpm2_tss_invalidated_file_is_truncated_inside_template_data() {
    let (good, error) = decode_error("tpm2-tss/sml-ima-ng-sha1-invalidated.bin");
    assert_eq!(good, 0);
    assert_eq!(error.location, Location::Offset(38));
    assert!(
        matches!(error.kind, DecodeErrorKind::Truncated { item: "template data", expected: 49, found: 48 }),
        "{error}"
    );
}

#[test]
fn tpm2_tss_expected_template_digests() {
    // The values upstream's unit test expects for the first and last record.
    let (records, _) = read_list("tpm2-tss/sml-ima-sha1-invalidated.bin");
    assert!(records[0].is_violation());
    let path = real("tpm2-tss/sml-ima-sha1.bin");
    let bytes = fs::read(&path).unwrap();
    let records: Vec<Record> = ListReader::open(bytes.as_slice(), ListOptions::default())
        .unwrap()
        .take_while(|r| r.is_ok())
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(records.len(), 12);
    assert!(records[0].digest.to_hex().starts_with("719de8e5"));
    assert!(records[11].digest.to_hex().starts_with("21044c12"));
    for record in &records {
        assert_eq!(record.bank_digest(&Bank::SHA1), record.digest);
    }
}

#[test]
fn embrave_length_prefixed_layout_is_rejected() {
    let (_, error) = decode_error("embrave/b77d7a9a/binary_runtime_measurements");
    assert_eq!(error.location, Location::Offset(4));
    assert!(matches!(error.kind, DecodeErrorKind::LengthPrefixedDigest { length: 32 }), "{error}");

    let (_, error) = decode_error("embrave/b77d7a9a/ascii_runtime_measurements");
    assert_eq!(error.location, Location::Line(1));
    assert!(error.to_string().contains("starts with 'sha256:'"), "{error}");
}

#[test]
fn rust_keylime_invalid_and_empty_files() {
    let (_, error) = decode_error("rust-keylime/invalid_ima_log.txt");
    assert_eq!(error.location, Location::Line(1));
    assert_eq!(error.record, 0);
    assert_eq!(
        error.to_string(),
        "record 0 at line 1: expected a PCR index (0 to 63) in column 1, found \"this-is-an-invalid-ima-log-file\""
    );

    let (records, _) = read_list("rust-keylime/empty_ima_log.txt");
    assert!(records.is_empty());
    let state = replay(&records, Bank::SHA1, &[Bank::SHA1]);
    assert_eq!(state.value(&Bank::SHA1, 10), Digest::zero(20));
}

#[test]
fn keylime_unknown_algorithm_list_fails_digest_check() {
    // Synthetic: the second line's logged digest belongs to other data.
    let (records, bank) = read_list("keylime/ima-log-unknown");
    let mut replayer = Replayer::new(bank, &[Bank::SHA256], &ReplayState::cold_boot()).unwrap();
    replayer.replay(&records[0]).unwrap();
    let error = replayer.replay(&records[1]).unwrap_err();
    assert!(matches!(error, imalog_core::ReplayError::DigestMismatch { index: 1, .. }), "{error}");
}

#[test]
fn binary_buffered_and_item_paths_agree() {
    // A one-byte buffer never holds a whole record, which forces the
    // item-by-item path; the default buffer takes the buffered path.
    for file in [
        "ibmtss/sha1.log",
        "ibmtss/sha512.log",
        "ibmtss/imatest.log",
        "embrave/37d16c0f/binary_runtime_measurements",
        "ima_log_lib/binary_runtime_measurements_sha256",
        "tpm2-tss/sml-ima-sha1-invalidated.bin",
        "tpm2-tss/sml-ima-sig-sha256.bin",
    ] {
        let bytes = fs::read(real(file)).unwrap();
        let layout = match ListReader::open(bytes.as_slice(), options_for(&real(file))).unwrap().format() {
            Some(format) => {
                binary::BinaryLayout { digest_size: format.bank.digest_size(), byte_order: format.byte_order }
            }
            None => panic!("{file}: no format"),
        };
        let buffered: Vec<_> = binary::BinaryDecoder::new(bytes.as_slice(), layout).collect();
        let itemwise: Vec<_> =
            binary::BinaryDecoder::new(std::io::BufReader::with_capacity(1, bytes.as_slice()), layout).collect();
        assert_eq!(buffered.len(), itemwise.len(), "{file}");
        for (a, b) in buffered.iter().zip(&itemwise) {
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{file}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{file}"),
                _ => panic!("{file}: paths disagree: {a:?} vs {b:?}"),
            }
        }
    }
}

#[test]
fn unmapped_bank_extends_padded_sha1_with_its_own_hash() {
    // A SHA3-256 bank: the kernel logs the SHA-1 template digest padded
    // with zeros to 32 bytes, and the TPM extends it with SHA3-256.
    let (records, bank) = read_list("ibmtss/sha1.log");
    let sha3: Bank = "sha3_256".parse().unwrap();
    let state = replay(&records, bank, &[sha3]);
    let mut pcr = [0u8; 32];
    for record in &records {
        let mut value = [0u8; 32];
        value[..20].copy_from_slice(record.template_digest(imalog_core::HashAlgorithm::Sha1).as_bytes());
        let mut input = pcr.to_vec();
        input.extend_from_slice(&value);
        pcr.copy_from_slice(imalog_core::HashAlgorithm::Sha3_256.digest(&input).as_bytes());
    }
    assert_eq!(state.value(&sha3, 10).as_bytes(), &pcr);
    assert_eq!(pcr10(&state, sha3), "f899c2ab9ad17eac2bae1c627915e07cd2b8b8b20dc2dcfd57b8235cb6eaab8b");
}

#[test]
fn unmapped_bank_violation_pattern_is_20_ff_bytes() {
    let (records, bank) = read_list("tpm2-tss/sml-ima-sig-sha256-invalidated.bin");
    let sha3: Bank = "sha3_256".parse().unwrap();
    let state = replay(&records, bank, &[sha3]);
    let mut pcr = [0u8; 32];
    for record in &records {
        let mut value = [0u8; 32];
        if record.is_violation() {
            value[..20].fill(0xff);
        } else {
            value[..20].copy_from_slice(record.template_digest(imalog_core::HashAlgorithm::Sha1).as_bytes());
        }
        let mut input = pcr.to_vec();
        input.extend_from_slice(&value);
        pcr.copy_from_slice(imalog_core::HashAlgorithm::Sha3_256.digest(&input).as_bytes());
    }
    assert_eq!(state.value(&sha3, 10).as_bytes(), &pcr);
}
