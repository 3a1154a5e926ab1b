//! Differential tests against `evmctl ima_measurement` (ima-evm-utils 1.4).
//! For real and generated legacy binary lists, PCR 10 as `imalog replay`
//! computes it in sha1 and sha256 must make evmctl succeed at exactly the
//! last record. An altered value must make both tools fail.
//!
//! evmctl reads only the legacy binary list (20-byte template digests),
//! replays only sha1 and sha256, rejects lists that mix the `ima` template
//! with others, and ignores fewer than 28 trailing bytes. Its exit status
//! reflects only the last bank it compares, so every call checks one bank
//! with `--verify-bank`.
//!
//! When `evmctl` is not on PATH the tests print a skip message and pass,
//! unless `IMALOG_REQUIRE_ORACLES=1` is set, as `scripts/test` does.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    altered_hex, arg, imalog, json_pcr10, pcr10_yaml, real, record_offsets, replay_json, IBMTSS_PCR10,
    IBMTSS_PREFIX200_PCR10,
};
use tempfile::TempDir;

/// The two banks evmctl replays, with their digest sizes in hex digits.
const BANKS: [(&str, usize); 2] = [("sha1", 40), ("sha256", 64)];

/// Finds evmctl on PATH. When it is missing, panics if
/// `IMALOG_REQUIRE_ORACLES=1`, and otherwise prints a skip message and
/// returns `None`.
fn evmctl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("evmctl")).find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var("IMALOG_REQUIRE_ORACLES").as_deref() == Ok("1") {
            panic!("evmctl not found on PATH, and IMALOG_REQUIRE_ORACLES=1 requires it (install ima-evm-utils)");
        }
        eprintln!(
            "skipping: evmctl not found on PATH (install ima-evm-utils, or set IMALOG_REQUIRE_ORACLES=1 to fail)"
        );
    }
    found
}

/// What one `evmctl ima_measurement` call reported.
#[derive(Debug)]
struct EvmctlRun {
    code: i32,
    /// N from the line `<bank> PCR-10: succeed at entry N`, if printed.
    succeeded_at: Option<u64>,
    /// Standard output and standard error together.
    output: String,
}

impl EvmctlRun {
    fn has_line(&self, line: &str) -> bool {
        self.output.lines().any(|l| l == line)
    }
}

/// Writes evmctl's PCR file: PCR-00 to PCR-09 all zero, then PCR-10.
fn write_pcr_file(dir: &TempDir, bank: &str, hex_digits: usize, pcr10: &str) -> PathBuf {
    let mut text = String::new();
    for pcr in 0..10 {
        text.push_str(&format!("PCR-{pcr:02}: {}\n", "0".repeat(hex_digits)));
    }
    text.push_str(&format!("PCR-10: {pcr10}\n"));
    let path = dir.path().join(format!("pcrs-{bank}.txt"));
    fs::write(&path, text).expect("failed to write the PCR file");
    path
}

/// Runs `evmctl -v ima_measurement` on `list` against PCR 10 of one bank.
fn run_evmctl(evmctl: &Path, list: &Path, bank: &str, hex_digits: usize, pcr10: &str) -> EvmctlRun {
    let dir = tempfile::tempdir().expect("failed to create a temporary folder");
    let pcr_file = write_pcr_file(&dir, bank, hex_digits, pcr10);
    let output = Command::new(evmctl)
        .args(["-v", "ima_measurement", "--ignore-violations", &format!("--verify-bank={bank}"), "--pcrs"])
        .arg(format!("{bank},{}", arg(&pcr_file)))
        .arg(list)
        .output()
        .expect("failed to start evmctl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let prefix = format!("{bank} PCR-10: succeed at entry ");
    let succeeded_at = text.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok());
    let code = output.status.code().unwrap_or_else(|| panic!("evmctl was killed by a signal on {}", list.display()));
    EvmctlRun { code, succeeded_at, output: text }
}

/// Replays `list` with imalog, then requires, for sha1 and sha256 apart,
/// that evmctl succeeds at exactly record `records` with imalog's PCR 10,
/// and that evmctl and `imalog replay --pcrs` both reject an altered value.
/// Returns imalog's (sha1, sha256) PCR 10.
fn assert_evmctl_agrees(evmctl: &Path, list: &Path, records: u64, label: &str) -> (String, String) {
    let report = replay_json(list, &["--bank", "sha1,sha256"]);
    assert_eq!(report["records"], records, "{label}: imalog record count");

    let mut values = Vec::new();
    for (bank, hex_digits) in BANKS {
        let value = json_pcr10(&report, bank);
        let run = run_evmctl(evmctl, list, bank, hex_digits, &value);
        assert_eq!(run.code, 0, "{label} {bank}: evmctl failed\n{}", run.output);
        assert_eq!(run.succeeded_at, Some(records), "{label} {bank}: evmctl matched elsewhere\n{}", run.output);
        assert!(run.has_line("Matched per TPM bank calculated digest(s)."), "{label} {bank}\n{}", run.output);

        let wrong = altered_hex(&value);
        let run = run_evmctl(evmctl, list, bank, hex_digits, &wrong);
        assert_eq!(run.code, 1, "{label} {bank}: evmctl accepted an altered value\n{}", run.output);
        assert_eq!(run.succeeded_at, None, "{label} {bank}: evmctl matched an altered value\n{}", run.output);

        let dir = tempfile::tempdir().expect("failed to create a temporary folder");
        let quote = dir.path().join("quote.yaml");
        fs::write(&quote, pcr10_yaml(&[(bank, &wrong)])).expect("failed to write the quote");
        let rejected = imalog(["replay", arg(list), "--pcrs", arg(&quote)]);
        assert_eq!(rejected.code, 1, "{label} {bank}: imalog accepted an altered value\n{}", rejected.stderr);
        let detail = format!("PCR 10 in bank {bank}: expected {wrong}, computed {value}\n");
        assert!(rejected.stderr.ends_with(&detail), "{label} {bank}: {}", rejected.stderr);

        values.push(value);
    }
    (values[0].clone(), values[1].clone())
}

fn temp_dir() -> TempDir {
    tempfile::tempdir().expect("failed to create a temporary folder")
}

/// Runs an imalog command that must succeed.
fn imalog_ok(args: &[&str]) {
    let run = imalog(args);
    assert_eq!(run.code, 0, "imalog {args:?}: {}", run.stderr);
}

#[test]
fn evmctl_agrees_on_ibmtss() {
    let Some(evmctl) = evmctl() else { return };
    let (sha1, sha256) = assert_evmctl_agrees(&evmctl, &real("ibmtss/sha1.log"), 362, "ibmtss/sha1.log");
    assert_eq!(sha1, IBMTSS_PCR10[0].1);
    assert_eq!(sha256, IBMTSS_PCR10[1].1);
}

#[test]
fn evmctl_agrees_on_ibmtss_prefix() {
    let Some(evmctl) = evmctl() else { return };
    let bytes = fs::read(real("ibmtss/sha1.log")).expect("read sha1.log");
    let (offsets, _) = record_offsets(&bytes, 20);
    let dir = temp_dir();
    let head = dir.path().join("head.bin");
    fs::write(&head, &bytes[..offsets[200]]).expect("write head");
    let (sha1, sha256) = assert_evmctl_agrees(&evmctl, &head, 200, "first 200 records of ibmtss/sha1.log");
    assert_eq!(sha1, IBMTSS_PREFIX200_PCR10.0);
    assert_eq!(sha256, IBMTSS_PREFIX200_PCR10.1);
}

#[test]
fn evmctl_stops_at_quoted_prefix() {
    // evmctl accepts a list longer than the quote and names the record at
    // which the quote matched; imalog reports the same prefix.
    let Some(evmctl) = evmctl() else { return };
    let list = real("ibmtss/sha1.log");
    for ((bank, hex_digits), value) in BANKS.into_iter().zip([IBMTSS_PREFIX200_PCR10.0, IBMTSS_PREFIX200_PCR10.1]) {
        let run = run_evmctl(&evmctl, &list, bank, hex_digits, value);
        assert_eq!(run.code, 0, "{bank}\n{}", run.output);
        assert_eq!(run.succeeded_at, Some(200), "{bank}\n{}", run.output);
    }
}

#[test]
fn evmctl_agrees_on_real_binary_lists() {
    let Some(evmctl) = evmctl() else { return };
    let cases = [
        ("embrave/37d16c0f/binary_runtime_measurements", 922),
        ("tpm2-tss/sml-ima-sig-sha256-invalidated.bin", 2),
        ("tpm2-tss/sml-ima-sha1-invalidated.bin", 1),
    ];
    for (file, records) in cases {
        assert_evmctl_agrees(&evmctl, &real(file), records, file);
    }
}

#[test]
fn evmctl_agrees_embrave_known_values() {
    let Some(evmctl) = evmctl() else { return };
    let list = real("embrave/37d16c0f/binary_runtime_measurements");
    let (sha1, sha256) = assert_evmctl_agrees(&evmctl, &list, 922, "embrave");
    assert_eq!(sha1, "f38695bbd9479953543813fb13bb88235440504e");
    assert_eq!(sha256, "0d204f41041c48fe0d2e1ef0a6c308412c27304a68519d3ce3568a692d3fea83");
}

/// A tpm2-tss list with bytes after its last complete record: the number of
/// complete records, the error imalog reports, and the size of the clean
/// part (the file minus the trailing bytes that SOURCES.md lists).
struct TrailingCase {
    file: &'static str,
    records: u64,
    message: &'static str,
    trailing: usize,
}

/// evmctl ignores the bytes after the last complete record, and imalog
/// rejects the list; both agree on the clean part.
#[test]
fn evmctl_ignores_trailing_bytes() {
    let Some(evmctl) = evmctl() else { return };
    let cases = [
        TrailingCase {
            file: "tpm2-tss/sml-ima-sha1.bin",
            records: 12,
            message: "record 12 at offset 916: 1 trailing byte(s) after the last complete record; \
                      a record starts with a 4-byte PCR index",
            trailing: 1,
        },
        TrailingCase {
            file: "tpm2-tss/sml-ima-ng-sha1.bin",
            records: 6,
            message: "record 6 at offset 558: 1 trailing byte(s) after the last complete record; \
                      a record starts with a 4-byte PCR index",
            trailing: 1,
        },
        TrailingCase {
            file: "tpm2-tss/sml-ima-sig-sha256.bin",
            records: 9,
            message: "record 9 at offset 991: truncated template digest: expected 20 bytes, found 2",
            trailing: 6,
        },
    ];
    let dir = temp_dir();
    for case in cases {
        let original = real(case.file);
        let rejected = imalog(["replay", arg(&original)]);
        assert_eq!(rejected.code, 1, "{}", case.file);
        assert_eq!(rejected.stderr, format!("imalog: {}: {}\n", original.display(), case.message), "{}", case.file);

        let bytes = fs::read(&original).expect("read list");
        let clean = dir.path().join("clean.bin");
        fs::write(&clean, &bytes[..bytes.len() - case.trailing]).expect("write clean part");
        let (sha1, sha256) = assert_evmctl_agrees(&evmctl, &clean, case.records, case.file);

        // evmctl reads the original file as if the trailing bytes were absent.
        for ((bank, hex_digits), value) in BANKS.into_iter().zip([&sha1, &sha256]) {
            let run = run_evmctl(&evmctl, &original, bank, hex_digits, value);
            assert_eq!(run.code, 0, "{} {bank}\n{}", case.file, run.output);
            assert_eq!(run.succeeded_at, Some(case.records), "{} {bank}\n{}", case.file, run.output);
        }
    }
}

#[test]
fn evmctl_rejects_truncated_record() {
    // A record cut 60 bytes in (past the 28-byte minimum that evmctl
    // ignores): both tools reject the list. evmctl 1.4 exits 125 when the
    // cut record is the first one and 1 otherwise.
    let Some(evmctl) = evmctl() else { return };
    let bytes = fs::read(real("ibmtss/sha1.log")).expect("read sha1.log");
    let (offsets, _) = record_offsets(&bytes, 20);
    let dir = temp_dir();
    for (record, evmctl_code) in [(0usize, 125), (3, 1)] {
        let cut = dir.path().join("cut.bin");
        fs::write(&cut, &bytes[..offsets[record] + 60]).expect("write cut list");

        // An ima-sig record: PCR index, digest, name length, the 7-byte name
        // "ima-sig", the template data length at byte 35, then the data at
        // byte 39, of which the cut leaves 21 bytes.
        let start = offsets[record];
        let length_word = [bytes[start + 35], bytes[start + 36], bytes[start + 37], bytes[start + 38]];
        let data_len = u32::from_le_bytes(length_word);
        let run = imalog(["replay", arg(&cut)]);
        assert_eq!(run.code, 1, "record {record}: {}", run.stderr);
        let expected = format!(
            "imalog: {}: record {record} at offset {}: truncated template data: expected {data_len} bytes, found 21\n",
            cut.display(),
            start + 39
        );
        assert_eq!(run.stderr, expected, "record {record}");

        for (bank, hex_digits) in BANKS {
            let value = IBMTSS_PCR10.iter().find(|(b, _)| *b == bank).map(|(_, v)| *v).expect("known bank");
            let run = run_evmctl(&evmctl, &cut, bank, hex_digits, value);
            assert_eq!(run.code, evmctl_code, "record {record} {bank}\n{}", run.output);
            assert!(run.has_line("Unable to read template"), "record {record} {bank}\n{}", run.output);
            assert_eq!(run.succeeded_at, None, "record {record} {bank}");
        }
    }
}

#[test]
fn evmctl_agrees_on_converted_ascii_lists() {
    let Some(evmctl) = evmctl() else { return };
    let cases = [
        ("keylime-perf-tests/ima_log.txt", 780),
        ("rust-keylime/ascii_runtime_measurements", 826),
        ("rust-keylime/ima_log.txt", 1),
        ("keylime/ascii_runtime_measurements_ima", 867),
        ("keylime-tests/ima_log.txt", 5),
        ("keylime-tests/ascii_runtime_measurements-1", 4),
        ("keylime-tests/ascii_runtime_measurements-2", 11),
        ("kunpengsecl/ascii_runtime_measurements_orig", 5566),
        ("kunpengsecl/ascii_runtime_measurements_ima-ng_sha1_orig", 2349),
        ("kunpengsecl/ascii_runtime_measurements_ima-ng_sha256_orig", 2514),
        ("ima-evm-utils/test_ascii_runtime_measurements", 3),
        ("ima-evm-utils/sample-ascii_runtime_measurements-pcrs-8-9", 1),
        ("embrave/37d16c0f/ascii_runtime_measurements", 922),
        ("keylime/ima-log-sha1", 2),
        ("keylime/ima-log-sha256", 2),
        ("keylime/ima-log-sha384", 2),
        ("keylime/ima-log-sha512", 2),
    ];
    let dir = temp_dir();
    for (file, records) in cases {
        let binary = dir.path().join("list.bin");
        imalog_ok(&["convert", arg(&real(file)), "--to", "binary", "-o", arg(&binary)]);
        assert_evmctl_agrees(&evmctl, &binary, records, file);
    }
}

#[test]
fn evmctl_agrees_ascii_known_values() {
    let Some(evmctl) = evmctl() else { return };
    let cases = [
        ("keylime/ascii_runtime_measurements_ima", 867, "93aacc9ec455c429c1a2d291650e40e7655565d8"),
        ("kunpengsecl/ascii_runtime_measurements_orig", 5566, "5f3a1c1f97bc9afd20800b7cfe989c0e596aeb6a"),
        ("rust-keylime/ascii_runtime_measurements", 826, "82231c67a69da98dc5b3aa10f6343d33109225fc"),
    ];
    let dir = temp_dir();
    for (file, records, sha1) in cases {
        let binary = dir.path().join("list.bin");
        imalog_ok(&["convert", arg(&real(file)), "--to", "binary", "-o", arg(&binary)]);
        let run = run_evmctl(&evmctl, &binary, "sha1", 40, sha1);
        assert_eq!(run.code, 0, "{file}\n{}", run.output);
        assert_eq!(run.succeeded_at, Some(records), "{file}\n{}", run.output);
    }
}

#[test]
fn evmctl_agrees_on_converted_bank_lists() {
    // Per-bank lists become legacy lists with `convert --bank sha1`.
    let Some(evmctl) = evmctl() else { return };
    let cases = [
        ("ibmtss/sha256.log", 362),
        ("ibmtss/sha512.log", 362),
        ("ima_log_lib/binary_runtime_measurements_sha256", 3524),
        ("global-trust-authority/ima.bin", 2),
    ];
    let dir = temp_dir();
    for (file, records) in cases {
        let legacy = dir.path().join("legacy.bin");
        imalog_ok(&["convert", arg(&real(file)), "--to", "binary", "--bank", "sha1", "-o", arg(&legacy)]);
        assert_evmctl_agrees(&evmctl, &legacy, records, file);
    }
}

#[test]
fn evmctl_agrees_on_generated_lists() {
    let Some(evmctl) = evmctl() else { return };
    // (template, records, seed, violation interval)
    let cases: [(&str, u64, u64, Option<u64>); 12] = [
        ("ima-ng", 1, 1, None),
        ("ima-ng", 2, 2, Some(2)),
        ("ima-ng", 1000, 3, Some(1)),
        ("ima-ng", 5000, 4, Some(97)),
        ("ima-sig", 5000, 5, Some(13)),
        ("ima-sig", 64, 6, None),
        ("ima-buf", 500, 7, Some(5)),
        ("ima", 300, 8, Some(10)),
        ("ima", 1, 9, None),
        ("ima-modsig", 200, 10, Some(7)),
        ("evm-sig", 200, 11, Some(3)),
        ("d-ng|n-ng|sig|iuid|igid|imode", 150, 12, Some(11)),
    ];
    let dir = temp_dir();
    for (template, records, seed, violations) in cases {
        let list = dir.path().join("generated.bin");
        let records_text = records.to_string();
        let seed_text = seed.to_string();
        let mut args = vec!["generate", "--template", template, "--records", &records_text, "--seed", &seed_text];
        let every_text = violations.map(|n| n.to_string());
        if let Some(every) = &every_text {
            args.extend_from_slice(&["--violations-every", every]);
        }
        args.extend_from_slice(&["-o", arg(&list)]);
        imalog_ok(&args);
        let label = format!("{template} x{records} seed {seed} violations {violations:?}");
        assert_evmctl_agrees(&evmctl, &list, records, &label);
    }
}

#[test]
fn evmctl_rejects_mixed_ima_list() {
    // evmctl refuses lists that mix `ima` with other templates; imalog
    // replays them. Both the generated mix and ibmtss/imatest.log have one.
    let Some(evmctl) = evmctl() else { return };
    let dir = temp_dir();
    let generated = dir.path().join("mixed.bin");
    imalog_ok(&["generate", "--template", "all", "--records", "100", "--seed", "6", "-o", arg(&generated)]);
    for (list, records) in [(generated, 100), (real("ibmtss/imatest.log"), 17)] {
        let report = replay_json(&list, &["--bank", "sha1,sha256"]);
        assert_eq!(report["records"], records, "{}", list.display());
        for (bank, hex_digits) in BANKS {
            let run = run_evmctl(&evmctl, &list, bank, hex_digits, &json_pcr10(&report, bank));
            assert_eq!(run.code, 1, "{} {bank}\n{}", list.display(), run.output);
            assert!(
                run.has_line("Mixed measurement list containing \"ima\" and other template formats not supported."),
                "{} {bank}\n{}",
                list.display(),
                run.output
            );
        }
    }
}
