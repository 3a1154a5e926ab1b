//! The command-line contract of `imalog`: exact standard output, standard
//! error and exit status of `show`, `convert`, `replay` and `generate` on the
//! real measurement lists and on generated ones. Every run goes through
//! `common::imalog`, which fails the test when imalog panics (exit 101).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{
    altered_hex, arg, imalog, imalog_with_stdin, json_pcr10, pcr10_yaml, real, record_offsets, replay_json,
    CLEAN_BINARY_LISTS, IBMTSS_PCR10, IBMTSS_PREFIX200_PCR10, KERNEL_ASCII_LISTS, KEYLIME_PERF_PCR10_SHA256,
};
use serde_json::Value;
use tempfile::TempDir;

fn temp_dir() -> TempDir {
    tempfile::tempdir().expect("failed to create a temporary folder")
}

/// Writes `contents` to `name` inside `dir` and returns the path.
fn write_file(dir: &TempDir, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, contents).expect("failed to write a test file");
    path
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders the ibmtss quote, PCR 10 of all four banks, as `tpm2_pcrread` YAML.
fn ibmtss_quote_yaml() -> String {
    pcr10_yaml(&IBMTSS_PCR10)
}

/// Renders PCR 10 values as `replay` prints them: uppercase hex with `0x`.
fn printed_pcr10(values: &[(&str, &str)]) -> String {
    values.iter().map(|(bank, hex)| format!("  {bank}:\n    10: 0x{}\n", hex.to_uppercase())).collect()
}

/// Returns the whole standard output of a replay of all 362 ibmtss records
/// against the four-bank quote.
fn ibmtss_match_stdout() -> String {
    format!(
        "# replayed 362 records (absolute indexes 0 to 361) from a cold boot\n{}\
         # match: the first 362 records (absolute indexes 0 to 361) reproduce all 4 given PCR values\n",
        printed_pcr10(&IBMTSS_PCR10)
    )
}

/// Copies the first `count` records of `ibmtss/sha1.log` into `dir`, made
/// with `convert` (binary -> ASCII, first lines, ASCII -> binary), and checks
/// that the copy is a byte prefix of the original.
fn ibmtss_prefix(dir: &TempDir, count: usize) -> PathBuf {
    let original = read(&real("ibmtss/sha1.log"));
    let ascii = dir.path().join("sha1.txt");
    let run = imalog(["convert", arg(&real("ibmtss/sha1.log")), "--to", "ascii", "-o", arg(&ascii)]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let text = String::from_utf8(read(&ascii)).expect("ASCII list is UTF-8");
    let head: String = text.split_inclusive('\n').take(count).collect();
    let head_ascii = write_file(dir, "head.txt", head);
    let head_binary = dir.path().join("head.bin");
    let run = imalog(["convert", arg(&head_ascii), "--to", "binary", "-o", arg(&head_binary)]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let (offsets, _) = record_offsets(&original, 20);
    let prefix_len = offsets[count];
    assert!(read(&head_binary) == original[..prefix_len], "the {count}-record copy is not a prefix of sha1.log");
    head_binary
}

// ---------------------------------------------------------------- replay

#[test]
fn ibmtss_pcr10_matches_source_file() {
    // imakvtpcr10.txt has one line per bank: " PCR 10: 9b e6 ...".
    let text = String::from_utf8(read(&real("ibmtss/imakvtpcr10.txt"))).expect("UTF-8");
    let values: Vec<String> = text
        .lines()
        .map(|line| line.trim().strip_prefix("PCR 10:").expect("line starts with 'PCR 10:'").replace(' ', ""))
        .collect();
    let constants: Vec<&str> = IBMTSS_PCR10.iter().map(|(_, hex)| *hex).collect();
    assert_eq!(values, constants);
}

#[test]
fn replay_ibmtss_sha1_matches_quote() {
    let dir = temp_dir();
    let quote = write_file(&dir, "quote.yaml", ibmtss_quote_yaml());
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), ibmtss_match_stdout());
    assert_eq!(run.stderr, "");
}

#[test]
fn replay_ibmtss_bank_lists_match_quote() {
    let dir = temp_dir();
    let quote = write_file(&dir, "quote.yaml", ibmtss_quote_yaml());
    for file in ["ibmtss/sha1.log", "ibmtss/sha256.log", "ibmtss/sha384.log", "ibmtss/sha512.log"] {
        let run = imalog(["replay", arg(&real(file)), "--pcrs", arg(&quote)]);
        assert_eq!(run.code, 0, "{file}: {}", run.stderr);
        assert_eq!(run.stdout_text(), ibmtss_match_stdout(), "{file}");
    }
}

#[test]
fn replay_keylime_perf_reproduces_quote() {
    let list = real("keylime-perf-tests/ima_log.txt");
    let report = replay_json(&list, &["--bank", "sha256"]);
    assert_eq!(json_pcr10(&report, "sha256"), KEYLIME_PERF_PCR10_SHA256);
    assert_eq!(report["records"], 780);

    let dir = temp_dir();
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&[("sha256", KEYLIME_PERF_PCR10_SHA256)]));
    let run = imalog(["replay", arg(&list), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "# replayed 780 records (absolute indexes 0 to 779) from a cold boot\n{}\
         # match: the first 780 records (absolute indexes 0 to 779) reproduce all 1 given PCR values\n",
        printed_pcr10(&[("sha256", KEYLIME_PERF_PCR10_SHA256)])
    );
    assert_eq!(run.stdout_text(), expected);
}

#[test]
fn replay_pcrs_from_stdin() {
    let run =
        imalog_with_stdin(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", "-"], ibmtss_quote_yaml().as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), ibmtss_match_stdout());
}

#[test]
fn replay_list_from_stdin() {
    let dir = temp_dir();
    let quote = write_file(&dir, "quote.yaml", ibmtss_quote_yaml());
    let run = imalog_with_stdin(["replay", "-", "--pcrs", arg(&quote)], &read(&real("ibmtss/sha1.log")));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), ibmtss_match_stdout());
}

#[test]
fn replay_output_feeds_back_as_pcrs() {
    // replay prints tpm2_pcrread YAML (uppercase hex, `#` comments), which
    // --pcrs must read back.
    let list = real("keylime/ascii_runtime_measurements_ima");
    let first = imalog(["replay", arg(&list)]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = imalog_with_stdin(["replay", arg(&list), "--pcrs", "-"], &first.stdout);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let expected = format!(
        "{}# match: the first 867 records (absolute indexes 0 to 866) reproduce all 2 given PCR values\n",
        first.stdout_text()
    );
    assert_eq!(second.stdout_text(), expected);
    let sha1 = printed_pcr10(&[("sha1", "93aacc9ec455c429c1a2d291650e40e7655565d8")]);
    assert!(first.stdout_text().contains(&sha1), "{}", first.stdout_text());
}

#[test]
fn replay_longer_list_matches_prefix_quote() {
    let dir = temp_dir();
    let head = ibmtss_prefix(&dir, 200);
    let state_path = dir.path().join("state.json");
    let run = imalog(["replay", arg(&head), "--bank", "sha1,sha256", "--save-state", arg(&state_path)]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let state: Value = serde_json::from_slice(&read(&state_path)).expect("state file is JSON");
    assert_eq!(state["next_index"], 200);
    assert_eq!(state["pcrs"]["sha1"]["10"], IBMTSS_PREFIX200_PCR10.0);
    assert_eq!(state["pcrs"]["sha256"]["10"], IBMTSS_PREFIX200_PCR10.1);

    let prefix_quote = [("sha1", IBMTSS_PREFIX200_PCR10.0), ("sha256", IBMTSS_PREFIX200_PCR10.1)];
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&prefix_quote));
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "# replayed 362 records (absolute indexes 0 to 361) from a cold boot\n{}\
         # match: the first 200 records (absolute indexes 0 to 199) reproduce all 2 given PCR values\n\
         # the 162 later records are not covered by the given values (appended after they were read)\n",
        printed_pcr10(&IBMTSS_PCR10[..2])
    );
    assert_eq!(run.stdout_text(), expected);
    assert_eq!(run.stderr, "");
}

#[test]
fn replay_generated_prefix_quote_matches() {
    let dir = temp_dir();
    let short = dir.path().join("short.bin");
    let long = dir.path().join("long.bin");
    for (path, records) in [(&short, "90"), (&long, "150")] {
        let run =
            imalog(["generate", "--records", records, "--seed", "11", "--violations-every", "13", "-o", arg(path)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert!(read(&long).starts_with(&read(&short)), "the 90-record list is not a prefix of the 150-record one");

    let report = replay_json(&short, &[]);
    let (sha1, sha256) = (json_pcr10(&report, "sha1"), json_pcr10(&report, "sha256"));
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&[("sha1", &sha1), ("sha256", &sha256)]));
    let run = imalog(["replay", arg(&long), "--pcrs", arg(&quote), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let long_report: Value = serde_json::from_slice(&run.stdout).expect("replay --json printed invalid JSON");
    assert_eq!(long_report["match"]["records"], 90);
    assert_eq!(long_report["match"]["next_index"], 90);
    assert_eq!(long_report["records"], 150);
}

#[test]
fn replay_quote_skips_other_pcr() {
    // Records 3 and 4 moved to PCR 11 leave PCR 10 as after record 2, so
    // every prefix of 3 to 5 records reproduces the quoted PCR 10.
    let dir = temp_dir();
    let original = String::from_utf8(read(&real("keylime-tests/ima_log.txt"))).expect("UTF-8");
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 5);
    let head = write_file(&dir, "head.txt", lines[..3].concat());
    let moved: String = lines[3..].iter().map(|line| line.replacen("10 ", "11 ", 1)).collect();
    let list = write_file(&dir, "list.txt", format!("{}{moved}", lines[..3].concat()));

    let report = replay_json(&head, &["--bank", "sha1"]);
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&[("sha1", &json_pcr10(&report, "sha1"))]));
    let run = imalog(["replay", arg(&list), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected_tail = "# match: the first 5 records (absolute indexes 0 to 4) reproduce all 1 given PCR values\n\
                         # any prefix of 3 to 5 records matches: the records in between extend PCRs that were not given\n";
    assert!(run.stdout_text().ends_with(expected_tail), "{}", run.stdout_text());
    assert!(run.stdout_text().contains("\n    11: 0x"), "PCR 11 is not printed: {}", run.stdout_text());
}

#[test]
fn replay_shorter_list_than_quote_exits_1() {
    let dir = temp_dir();
    let head = ibmtss_prefix(&dir, 200);
    let quote = write_file(&dir, "quote.yaml", ibmtss_quote_yaml());
    let run = imalog(["replay", arg(&head), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 1);
    let expected = format!(
        "imalog: {}: no prefix of the list reproduces the given PCR values; after all 200 records, \
         PCR 10 in bank sha1: expected {}, computed {}\n",
        head.display(),
        IBMTSS_PCR10[0].1,
        IBMTSS_PREFIX200_PCR10.0
    );
    assert_eq!(run.stderr, expected);
    assert!(!run.stdout_text().contains("# match"), "{}", run.stdout_text());
}

#[test]
fn replay_wrong_value_exits_1() {
    let dir = temp_dir();
    let wrong = altered_hex(IBMTSS_PCR10[1].1);
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&[("sha256", &wrong)]));
    let list = real("ibmtss/sha1.log");
    let run = imalog(["replay", arg(&list), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 1);
    let expected = format!(
        "imalog: {}: no prefix of the list reproduces the given PCR values; after all 362 records, \
         PCR 10 in bank sha256: expected {wrong}, computed {}\n",
        list.display(),
        IBMTSS_PCR10[1].1
    );
    assert_eq!(run.stderr, expected);
}

#[test]
fn replay_wrong_value_json_lists_mismatch() {
    let dir = temp_dir();
    let wrong = altered_hex(IBMTSS_PCR10[0].1);
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&[("sha1", &wrong)]));
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&quote), "--json"]);
    assert_eq!(run.code, 1);
    let report: Value = serde_json::from_slice(&run.stdout).expect("replay --json printed invalid JSON");
    assert_eq!(report["match"], Value::Null);
    let expected = serde_json::json!([
        {"bank": "sha1", "pcr": 10, "expected": wrong, "computed": IBMTSS_PCR10[0].1}
    ]);
    assert_eq!(report["mismatches"], expected);
}

#[test]
fn replay_altered_template_data_exits_1() {
    // Flip the case of one letter of the first "/usr/lib/systemd/systemd"
    // path: record 45, which starts at byte offset 5800.
    let mut bytes = read(&real("ibmtss/sha1.log"));
    let needle = b"/usr/lib/systemd/systemd";
    let position = bytes.windows(needle.len()).position(|w| w == needle).expect("path present in sha1.log");
    bytes[position + 1] ^= 0x20;
    let (offsets, _) = record_offsets(&bytes, 20);
    let record = offsets.iter().rposition(|&start| start <= position).expect("path inside a record");
    assert_eq!(record, 45);
    assert_eq!(offsets[record], 5800);

    let dir = temp_dir();
    let altered = write_file(&dir, "altered.log", &bytes);
    let run = imalog(["replay", arg(&altered)]);
    assert_eq!(run.code, 1);
    // The computed digest is SHA-1 of the altered template data (Python hashlib).
    let expected = format!(
        "imalog: {}: record 45 at offset 5800: logged template digest fb0f6c3e07bb85f406d781f9c64f6e6dc3c5e202 \
         does not match the sha1 digest of its template data, 0be5c9ed779a3e82c8b885e7e4ac676bbbe6f6d6\n",
        altered.display()
    );
    assert_eq!(run.stderr, expected);
    assert!(run.stdout.is_empty(), "{}", run.stdout_text());
}

/// Checks that `replay` of a malformed real list exits 1 with exactly
/// `imalog: <path>: <message>` on stderr and nothing on stdout.
fn assert_replay_rejects(relative: &str, message: &str) {
    let list = real(relative);
    let run = imalog(["replay", arg(&list)]);
    assert_eq!(run.code, 1, "{relative}: {}", run.stderr);
    assert_eq!(run.stderr, format!("imalog: {}: {message}\n", list.display()), "{relative}");
    assert!(run.stdout.is_empty(), "{relative}: {}", run.stdout_text());
}

#[test]
fn replay_ima_ng_trailing_byte_exits_1() {
    assert_replay_rejects(
        "tpm2-tss/sml-ima-ng-sha1.bin",
        "record 6 at offset 558: 1 trailing byte(s) after the last complete record; \
         a record starts with a 4-byte PCR index",
    );
}

#[test]
fn replay_ima_trailing_byte_exits_1() {
    assert_replay_rejects(
        "tpm2-tss/sml-ima-sha1.bin",
        "record 12 at offset 916: 1 trailing byte(s) after the last complete record; \
         a record starts with a 4-byte PCR index",
    );
}

#[test]
fn replay_truncated_digest_exits_1() {
    assert_replay_rejects(
        "tpm2-tss/sml-ima-sig-sha256.bin",
        "record 9 at offset 991: truncated template digest: expected 20 bytes, found 2",
    );
}

#[test]
fn replay_invalidated_ima_ng_exits_1() {
    assert_replay_rejects(
        "tpm2-tss/sml-ima-ng-sha1-invalidated.bin",
        "record 0 at offset 38: truncated template data: expected 49 bytes, found 48",
    );
}

#[test]
fn replay_length_prefixed_digest_exits_1() {
    assert_replay_rejects(
        "embrave/b77d7a9a/binary_runtime_measurements",
        "record 0 at offset 4: the template digest is preceded by a length word (32); upstream kernels write \
         a fixed-size digest with no length, so this list comes from a patched kernel and is not supported",
    );
}

#[test]
fn replay_prefixed_ascii_digest_exits_1() {
    assert_replay_rejects(
        "embrave/b77d7a9a/ascii_runtime_measurements",
        "record 0 at line 1: template digest column starts with 'sha256:'; upstream kernels print bare hex, \
         so this list comes from a patched kernel and is not supported",
    );
}

#[test]
fn replay_invalid_text_file_exits_1() {
    assert_replay_rejects(
        "rust-keylime/invalid_ima_log.txt",
        "record 0 at line 1: expected a PCR index (0 to 63) in column 1, found \"this-is-an-invalid-ima-log-file\"",
    );
}

#[test]
fn replay_empty_file_has_zero_records() {
    let list = real("rust-keylime/empty_ima_log.txt");
    let run = imalog(["replay", arg(&list)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), "# replayed 0 records from a cold boot\n");
    assert_eq!(run.stderr, "");

    let report = replay_json(&list, &[]);
    assert_eq!(report["records"], 0);
    assert_eq!(report["next_index"], 0);
}

#[test]
fn replay_empty_file_matches_reset_pcr() {
    let dir = temp_dir();
    let quote = write_file(&dir, "quote.yaml", pcr10_yaml(&[("sha1", &"0".repeat(40))]));
    let run = imalog(["replay", arg(&real("rust-keylime/empty_ima_log.txt")), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "# replayed 0 records from a cold boot\n{}\
         # match: the starting state already reproduces all 1 given PCR values\n",
        printed_pcr10(&[("sha1", &"0".repeat(40))])
    );
    assert_eq!(run.stdout_text(), expected);
}

// ---------------------------------------------------------- usage errors

/// Checks that a run is a usage error: exit 2, nothing on stdout.
fn assert_usage_error(run: &common::Run, label: &str) {
    assert_eq!(run.code, 2, "{label}: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{label}: {}", run.stdout_text());
}

#[test]
fn replay_unknown_bank_exits_2() {
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--bank", "md5"]);
    assert_usage_error(&run, "--bank md5");
    assert!(
        run.stderr.starts_with("error: invalid value 'md5' for '--bank <BANK>': unknown bank 'md5'"),
        "{}",
        run.stderr
    );
}

#[test]
fn show_unknown_bank_exits_2() {
    let run = imalog(["show", arg(&real("ibmtss/sha1.log")), "--bank", "md5"]);
    assert_usage_error(&run, "show --bank md5");
}

#[test]
fn replay_unknown_flag_exits_2() {
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--frobnicate"]);
    assert_usage_error(&run, "--frobnicate");
    assert!(run.stderr.starts_with("error: unexpected argument '--frobnicate' found"), "{}", run.stderr);
}

#[test]
fn missing_subcommand_exits_2() {
    let run = imalog(Vec::<&str>::new());
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn replay_missing_file_exits_2() {
    let dir = temp_dir();
    let missing = dir.path().join("missing.log");
    let run = imalog(["replay", arg(&missing)]);
    assert_usage_error(&run, "missing file");
    assert_eq!(
        run.stderr,
        format!("imalog: {}: cannot open: No such file or directory (os error 2)\n", missing.display())
    );
}

#[test]
fn show_directory_exits_2() {
    let dir = temp_dir();
    let run = imalog(["show", arg(dir.path())]);
    assert_usage_error(&run, "directory");
    assert_eq!(
        run.stderr,
        format!("imalog: {}: is a directory; expected a measurement list file\n", dir.path().display())
    );
}

#[test]
fn replay_garbage_pcrs_file_exits_2() {
    let dir = temp_dir();
    let garbage = write_file(&dir, "garbage.yaml", "garbage\n");
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&garbage)]);
    assert_usage_error(&run, "garbage --pcrs");
    assert_eq!(
        run.stderr,
        format!("imalog: {}: line 1: expected '<bank>:' or '<pcr>: <hex>', found \"garbage\"\n", garbage.display())
    );
}

#[test]
fn replay_short_pcr_value_exits_2() {
    let dir = temp_dir();
    let short = write_file(&dir, "short.yaml", "  sha1:\n    10: 0xabcd\n");
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&short)]);
    assert_usage_error(&run, "short PCR value");
    assert_eq!(
        run.stderr,
        format!("imalog: {}: line 2: PCR 10 in bank sha1 is 2 bytes; expected 20\n", short.display())
    );
}

#[test]
fn replay_empty_pcrs_file_exits_2() {
    let dir = temp_dir();
    let empty = write_file(&dir, "empty.yaml", "");
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&empty)]);
    assert_usage_error(&run, "empty --pcrs");
    assert_eq!(run.stderr, format!("imalog: {}: no PCR values found; expected tpm2_pcrread output\n", empty.display()));
}

#[test]
fn replay_malformed_state_exits_2() {
    let dir = temp_dir();
    let state = write_file(&dir, "state.json", "{");
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state)]);
    assert_usage_error(&run, "malformed state");
    let prefix = format!("imalog: {}: invalid state file: ", state.display());
    assert!(run.stderr.starts_with(&prefix), "{}", run.stderr);
}

#[test]
fn replay_state_short_value_exits_2() {
    let dir = temp_dir();
    let state = write_file(&dir, "state.json", r#"{"next_index": 5, "pcrs": {"sha1": {"10": "abcd"}}}"#);
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state)]);
    assert_usage_error(&run, "short state value");
    assert_eq!(
        run.stderr,
        format!("imalog: {}: invalid state file: PCR 10 in bank sha1 is not 20 bytes of hex\n", state.display())
    );
}

#[test]
fn replay_state_index_beyond_range_exits_2() {
    let dir = temp_dir();
    let state = write_file(&dir, "state.json", r#"{"next_index": 18446744073709551615}"#);
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state)]);
    assert_usage_error(&run, "state index beyond range");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: {}: invalid state file: next_index 18446744073709551615 is beyond 9223372036854775808, \
             the largest index a list can reach\n",
            state.display()
        )
    );
}

#[test]
fn replay_state_unknown_key_exits_2() {
    let dir = temp_dir();
    let state = write_file(&dir, "state.json", r#"{"next_index": 0, "extra": 1}"#);
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state)]);
    assert_usage_error(&run, "unknown state key");
    let prefix = format!("imalog: {}: invalid state file: unknown field `extra`", state.display());
    assert!(run.stderr.starts_with(&prefix), "{}", run.stderr);
}

#[test]
fn replay_missing_state_file_exits_2() {
    let dir = temp_dir();
    let missing = dir.path().join("missing.json");
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&missing)]);
    assert_usage_error(&run, "missing state");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: {}: cannot read the replay state: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}

/// Regression: with the list and --pcrs both on standard input, the PCR
/// reader took all of it and the list was replayed as empty, which reported
/// a PCR mismatch (exit 1) instead of the usage error.
#[test]
fn replay_two_stdin_inputs_exits_2() {
    let run = imalog_with_stdin(["replay", "-", "--pcrs", "-"], ibmtss_quote_yaml().as_bytes());
    assert_usage_error(&run, "two stdin inputs");
    assert_eq!(
        run.stderr,
        "imalog: standard input ('-') is given for FILE and --pcrs, but it can be read only once; \
         give a file name for all but one\n"
    );
}

#[test]
fn replay_three_stdin_inputs_exits_2() {
    let run = imalog_with_stdin(["replay", "-", "--pcrs", "-", "--from-state", "-"], b"");
    assert_usage_error(&run, "three stdin inputs");
    assert_eq!(
        run.stderr,
        "imalog: standard input ('-') is given for FILE and --pcrs and --from-state, but it can be read only \
         once; give a file name for all but one\n"
    );
}

/// Regression: a bank missing from a saved state was replayed from its reset
/// value in the middle of the list, which printed a wrong PCR value and
/// reported a mismatch against a correct quote.
#[test]
fn replay_state_without_quoted_bank_exits_2() {
    let dir = temp_dir();
    let state = write_file(
        &dir,
        "state.json",
        format!(r#"{{"next_index": 200, "pcrs": {{"sha1": {{"10": "{}"}}}}}}"#, IBMTSS_PREFIX200_PCR10.0),
    );
    let quote = write_file(&dir, "quote.yaml", ibmtss_quote_yaml());
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state), "--pcrs", arg(&quote)]);
    assert_usage_error(&run, "state without sha256");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: {}: the state at absolute index 200 has no values in bank sha256, so that bank cannot be \
             replayed from it; replay only the banks it lists (sha1) or save a state that includes sha256\n",
            state.display()
        )
    );
}

#[test]
fn replay_state_without_requested_bank_exits_2() {
    let dir = temp_dir();
    let state = write_file(
        &dir,
        "state.json",
        format!(r#"{{"next_index": 200, "pcrs": {{"sha1": {{"10": "{}"}}}}}}"#, IBMTSS_PREFIX200_PCR10.0),
    );
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state), "--bank", "sha384"]);
    assert_usage_error(&run, "state without sha384");
}

#[test]
fn replay_state_without_values_exits_2() {
    let dir = temp_dir();
    let state = write_file(&dir, "state.json", r#"{"next_index": 3}"#);
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", arg(&state)]);
    assert_usage_error(&run, "state without values");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: {}: the state at absolute index 3 lists no PCR values, so no bank can be replayed from it\n",
            state.display()
        )
    );
}

#[test]
fn convert_ascii_with_endian_exits_2() {
    let dir = temp_dir();
    let output = dir.path().join("out.txt");
    let run = imalog(["convert", arg(&real("ibmtss/sha1.log")), "--to", "ascii", "--endian", "be", "-o", arg(&output)]);
    assert_usage_error(&run, "--to ascii --endian be");
}

#[test]
fn generate_unknown_template_exits_2() {
    let run = imalog(["generate", "--template", "bogus", "-o", "-"]);
    assert_usage_error(&run, "--template bogus");
    assert_eq!(
        run.stderr,
        "imalog: --template: unknown template 'bogus': not a built-in template, and 'bogus' is not a field id\n"
    );
}

#[test]
fn generate_zero_violation_interval_exits_2() {
    let run = imalog(["generate", "--violations-every", "0", "-o", "-"]);
    assert_usage_error(&run, "--violations-every 0");
    assert_eq!(run.stderr, "imalog: --violations-every must be at least 1\n");
}

// ------------------------------------------------------------------ show

#[test]
fn show_embrave_binary_equals_kernel_ascii() {
    let run = imalog(["show", arg(&real("embrave/37d16c0f/binary_runtime_measurements"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout == read(&real("embrave/37d16c0f/ascii_runtime_measurements")), "show output differs");
}

#[test]
fn show_global_trust_binary_equals_kernel_ascii() {
    let run = imalog(["show", arg(&real("global-trust-authority/ima.bin"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout == read(&real("global-trust-authority/ima.log")), "show output differs");
}

#[test]
fn show_bank_recomputes_ibmtss_bank_lists() {
    for bank in ["sha256", "sha384", "sha512"] {
        let recomputed = imalog(["show", "--bank", bank, arg(&real("ibmtss/sha1.log"))]);
        assert_eq!(recomputed.code, 0, "{bank}: {}", recomputed.stderr);
        let logged = imalog(["show", arg(&real(&format!("ibmtss/{bank}.log")))]);
        assert_eq!(logged.code, 0, "{bank}: {}", logged.stderr);
        assert_eq!(logged.stdout.iter().filter(|&&b| b == b'\n').count(), 362, "{bank}");
        assert!(recomputed.stdout == logged.stdout, "show --bank {bank} of sha1.log differs from {bank}.log");
    }
}

#[test]
fn show_ibmtss_first_line() {
    let run = imalog(["show", arg(&real("ibmtss/sha1.log"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first = run.stdout_text().lines().next().map(str::to_string);
    assert_eq!(
        first.as_deref(),
        Some(
            "10 06685e8b1f967c606ea19e87c0d360877410bbf5 ima-sig \
             sha256:8c84a9518e30ce8b12c9c54f54d805808551efccb15728c9453343a802ef5257 boot_aggregate "
        )
    );
}

#[test]
fn show_short_line_warns() {
    let list = real("keylime-tests/ascii_runtime_measurements-1");
    let run = imalog(["show", arg(&list)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!(
            "imalog: warning: {}: 1 line(s) lacked the separating space of an empty last field \
             (such as a missing signature); the field was read as empty\n",
            list.display()
        )
    );
    // The output restores the kernel's trailing space on that line only.
    let original = String::from_utf8(read(&list)).expect("UTF-8");
    let mut expected: Vec<String> = original.lines().map(str::to_string).collect();
    expected[0].push(' ');
    let expected: String = expected.iter().map(|line| format!("{line}\n")).collect();
    assert_eq!(run.stdout_text(), expected);
}

/// `show --json` of `ibmtss/imatest.log`, one parsed object per line.
fn imatest_json() -> Vec<Value> {
    let run = imalog(["show", "--json", arg(&real("ibmtss/imatest.log"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = run.stdout_text();
    assert!(text.ends_with('\n'), "JSON lines must end with a newline");
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("invalid JSON line {line:?}: {e}")))
        .collect()
}

#[test]
fn show_json_one_object_per_record() {
    let records = imatest_json();
    assert_eq!(records.len(), 17);
    let keys: BTreeSet<&str> = ["index", "pcr", "bank", "template_digest", "violation", "template", "fields"].into();
    for (index, record) in records.iter().enumerate() {
        let object = record.as_object().unwrap_or_else(|| panic!("line {index} is not an object"));
        let found: BTreeSet<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(found, keys, "line {index}");
        assert_eq!(record["index"], index, "line {index}");
        assert_eq!(record["pcr"], 10, "line {index}");
        assert_eq!(record["bank"], "sha1", "line {index}");
    }
}

#[test]
fn show_json_templates_in_order() {
    let templates: Vec<String> =
        imatest_json().iter().map(|r| r["template"].as_str().expect("template is a string").to_string()).collect();
    let expected = [
        "d-ng|sig",
        "n-ng|d-ng",
        "n-ng|sig|d-ng",
        "n-ng|sig",
        "n",
        "sig",
        "ima",
        "ima-ng",
        "ima-sig",
        "ima-modsig",
        "ima-sig",
        "ima-sig",
        "ima-sigv2",
        "ima-buf",
        "evm-sig",
        "ima-ngv2",
        "ima-modsig",
    ];
    assert_eq!(templates, expected);
}

#[test]
fn show_json_custom_template_record() {
    let records = imatest_json();
    let expected = serde_json::json!({
        "index": 0,
        "pcr": 10,
        "bank": "sha1",
        "template_digest": "17f427af544b919270aa8ac3dd06e8a3058661d5",
        "violation": false,
        "template": "d-ng|sig",
        "fields": [
            {"id": "d-ng", "algorithm": "sha1", "digest": "0000000000000000000000000000000000000000"},
            {"id": "sig", "empty": true}
        ]
    });
    assert_eq!(records[0], expected);
}

#[test]
fn show_json_ima_violation_record() {
    let records = imatest_json();
    let expected = serde_json::json!({
        "index": 6,
        "pcr": 10,
        "bank": "sha1",
        "template_digest": "0000000000000000000000000000000000000000",
        "violation": true,
        "template": "ima",
        "fields": [
            {"id": "d", "digest": "0000000000000000000000000000000000000000"},
            {"id": "n", "name": "boot_aggregate"}
        ]
    });
    assert_eq!(records[6], expected);
}

#[test]
fn show_json_signature_header() {
    let records = imatest_json();
    let signature = &records[10]["fields"][2];
    assert_eq!(signature["id"], "sig");
    let expected =
        serde_json::json!({"type": 3, "version": 2, "hash_algorithm": "sha256", "key_id": "6e6c1046", "length": 256});
    assert_eq!(signature["signature"], expected);
    assert_eq!(records[10]["fields"][1]["name"], "/usr/lib/systemd/systemd");
}

#[test]
fn show_json_evm_sig_fields() {
    let records = imatest_json();
    let fields = &records[14]["fields"];
    assert_eq!(fields[1]["name"], "/tmp/lower/lower/foo-evmsig-4.txt");
    assert_eq!(fields[2]["signature"]["key_id"], "78511c2a");
    assert_eq!(fields[3], serde_json::json!({"id": "xattrnames", "names": ["security.selinux", "security.ima"]}));
    assert_eq!(fields[4], serde_json::json!({"id": "xattrlengths", "lengths": [37, 34]}));
    assert_eq!(fields[8], serde_json::json!({"id": "imode", "value": 33188}));
}

#[test]
fn show_json_digest_with_type() {
    let records = imatest_json();
    let expected = serde_json::json!({
        "id": "d-ngv2",
        "type": "ima",
        "algorithm": "sha256",
        "digest": "9bb37c1bb81ebad4b74b3df82cf5c738773e1017a2a1998fa7f4467568edf839"
    });
    assert_eq!(records[15]["fields"][0], expected);
}

#[test]
fn show_json_buffer_record() {
    let records = imatest_json();
    assert_eq!(records[13]["fields"][1]["name"], ".builtin_trusted_keys");
    let buffer = records[13]["fields"][2]["hex"].as_str().expect("buf field has hex");
    assert!(buffer.starts_with("30820528"), "{buffer}");
    assert_eq!(buffer.len(), 2 * 0x52c);
}

#[test]
fn show_json_bank_recomputes_digest() {
    let run = imalog(["show", "--json", "--bank", "sha256", arg(&real("ibmtss/sha1.log"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = run.stdout_text();
    let first: Value = serde_json::from_str(text.lines().next().expect("one line")).expect("valid JSON");
    assert_eq!(first["bank"], "sha256");
    let sha256_list = imalog(["show", arg(&real("ibmtss/sha256.log"))]);
    assert_eq!(sha256_list.code, 0, "{}", sha256_list.stderr);
    let digest = sha256_list.stdout_text().split(' ').nth(1).expect("digest column").to_string();
    assert_eq!(first["template_digest"], digest);
}

#[test]
fn show_reads_stdin() {
    let run = imalog_with_stdin(["show", "-"], &read(&real("embrave/37d16c0f/binary_runtime_measurements")));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout == read(&real("embrave/37d16c0f/ascii_runtime_measurements")), "show - output differs");
}

#[test]
fn show_json_reads_stdin() {
    let run = imalog_with_stdin(["show", "--json", "-"], &read(&real("ibmtss/imatest.log")));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text().lines().count(), 17);
}

#[test]
fn show_empty_file_prints_nothing() {
    let run = imalog(["show", arg(&real("rust-keylime/empty_ima_log.txt"))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout_text());
}

// --------------------------------------------------------------- convert

/// Converts `input` to `to` (`binary` or `ascii`) with `extra` options and
/// returns the output bytes; the conversion must succeed.
fn convert(input: &Path, to: &str, extra: &[&str], dir: &TempDir, name: &str) -> (PathBuf, Vec<u8>) {
    let output = dir.path().join(name);
    let mut args = vec!["convert", arg(input), "--to", to, "-o", arg(&output)];
    args.extend_from_slice(extra);
    let run = imalog(&args);
    assert_eq!(run.code, 0, "imalog {args:?}: {}", run.stderr);
    assert_eq!(run.stderr, "", "imalog {args:?}");
    let bytes = read(&output);
    (output, bytes)
}

#[test]
fn convert_kernel_ascii_round_trip() {
    let dir = temp_dir();
    for file in KERNEL_ASCII_LISTS {
        let original = read(&real(file));
        // Keep the file name, so that a bank suffix in it still applies.
        let name = Path::new(file).file_name().and_then(|n| n.to_str()).expect("file name");
        let (binary, _) = convert(&real(file), "binary", &[], &dir, name);
        let (_, ascii) = convert(&binary, "ascii", &[], &dir, "back.txt");
        assert!(ascii == original, "{file}: ASCII -> binary -> ASCII is not byte-identical");
    }
}

#[test]
fn convert_binary_round_trip() {
    let dir = temp_dir();
    for file in CLEAN_BINARY_LISTS {
        let original = read(&real(file));
        let name = Path::new(file).file_name().and_then(|n| n.to_str()).expect("file name");
        let (ascii, _) = convert(&real(file), "ascii", &[], &dir, name);
        let (_, binary) = convert(&ascii, "binary", &[], &dir, "back.bin");
        assert!(binary == original, "{file}: binary -> ASCII -> binary is not byte-identical");
    }
}

#[test]
fn convert_big_endian_round_trip() {
    let dir = temp_dir();
    for file in CLEAN_BINARY_LISTS {
        let original = read(&real(file));
        let name = Path::new(file).file_name().and_then(|n| n.to_str()).expect("file name");
        let (big, big_bytes) = convert(&real(file), "binary", &["--endian", "be"], &dir, name);
        assert!(big_bytes != original, "{file}: --endian be wrote the little-endian bytes");
        assert_eq!(&big_bytes[..4], &[0, 0, 0, 10], "{file}: PCR index is not big-endian");
        let (_, little) = convert(&big, "binary", &["--endian", "le"], &dir, "back.bin");
        assert!(little == original, "{file}: LE -> BE -> LE is not byte-identical");
    }
}

#[test]
fn convert_ibmtss_banks_reproduce_bank_lists() {
    let dir = temp_dir();
    let banks = ["sha1", "sha256", "sha384", "sha512"];
    for from in banks {
        for to in banks {
            let (_, bytes) = convert(&real(&format!("ibmtss/{from}.log")), "binary", &["--bank", to], &dir, "out.bin");
            let expected = read(&real(&format!("ibmtss/{to}.log")));
            assert!(bytes == expected, "{from}.log --bank {to} differs from {to}.log");
        }
    }
}

#[test]
fn convert_ascii_bank_equals_show_bank() {
    let dir = temp_dir();
    let (_, ascii) = convert(&real("ibmtss/sha1.log"), "ascii", &["--bank", "sha384"], &dir, "out.txt");
    let show_run = imalog(["show", arg(&real("ibmtss/sha384.log"))]);
    assert!(ascii == show_run.stdout, "convert --to ascii --bank sha384 differs from show of sha384.log");
}

#[test]
fn convert_altered_record_exits_1() {
    let mut bytes = read(&real("ibmtss/sha1.log"));
    let needle = b"/usr/lib/systemd/systemd";
    let position = bytes.windows(needle.len()).position(|w| w == needle).expect("path present in sha1.log");
    bytes[position + 1] ^= 0x20;
    let dir = temp_dir();
    let altered = write_file(&dir, "altered.log", &bytes);
    let output = dir.path().join("out.txt");
    let run = imalog(["convert", arg(&altered), "--to", "ascii", "-o", arg(&output)]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with(&format!("imalog: {}: record 45 at offset 5800: logged template digest", altered.display())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.ends_with("; pass --no-verify to copy it anyway\n"), "{}", run.stderr);

    let run = imalog(["convert", arg(&altered), "--to", "ascii", "--no-verify", "-o", arg(&output)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// Regression: `-o` naming the input truncated the input after its first
/// 64 KiB had been read, so the list was destroyed and the run reported a
/// truncated record that the original file did not have.
#[test]
fn convert_output_same_as_input_exits_2() {
    let dir = temp_dir();
    let original = read(&real("ima_log_lib/binary_runtime_measurements_sha256"));
    let list = write_file(&dir, "binary_runtime_measurements_sha256", &original);
    let run = imalog(["convert", arg(&list), "--to", "binary", "--endian", "be", "-o", arg(&list)]);
    assert_usage_error(&run, "-o input");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: {}: the output file is the input file, which would be truncated before it is read; \
             write to another file and rename it\n",
            list.display()
        )
    );
    assert!(read(&list) == original, "convert changed its input file");
}

#[test]
fn convert_output_hard_link_exits_2() {
    let dir = temp_dir();
    let original = read(&real("ibmtss/sha1.log"));
    let list = write_file(&dir, "sha1.log", &original);
    let link = dir.path().join("link.log");
    fs::hard_link(&list, &link).expect("failed to create a hard link");
    let run = imalog(["convert", arg(&list), "--to", "ascii", "-o", arg(&link)]);
    assert_usage_error(&run, "-o hard link");
    assert!(read(&list) == original, "convert changed its input file");
}

#[test]
fn convert_reads_stdin_writes_stdout() {
    let run = imalog_with_stdin(
        ["convert", "-", "--to", "binary", "-o", "-"],
        &read(&real("global-trust-authority/ima.log")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout == read(&real("global-trust-authority/ima.bin")), "convert - -o - output differs");
}

#[test]
fn convert_empty_file_writes_nothing() {
    let run = imalog(["convert", arg(&real("rust-keylime/empty_ima_log.txt")), "--to", "binary", "-o", "-"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

// ------------------------------------------------------------ from-state

#[test]
fn replay_from_state_equals_full_replay() {
    let dir = temp_dir();
    let original = read(&real("ibmtss/sha1.log"));
    let (offsets, end) = record_offsets(&original, 20);
    assert_eq!(offsets.len(), 362);
    assert_eq!(end, original.len());
    let head = write_file(&dir, "head.bin", &original[..offsets[100]]);
    let tail = write_file(&dir, "tail.bin", &original[offsets[100]..]);

    let state = dir.path().join("state.json");
    let run = imalog(["replay", arg(&head), "--bank", "sha1,sha256,sha384,sha512", "--save-state", arg(&state)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let saved: Value = serde_json::from_slice(&read(&state)).expect("state file is JSON");
    assert_eq!(saved["next_index"], 100);

    let run = imalog(["replay", arg(&tail), "--from-state", arg(&state)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "# replayed 262 records (absolute indexes 100 to 361) from the state at absolute index 100\n{}",
        printed_pcr10(&IBMTSS_PCR10)
    );
    assert_eq!(run.stdout_text(), expected);
}

#[test]
fn replay_from_state_matches_quote() {
    let dir = temp_dir();
    let original = read(&real("ibmtss/sha1.log"));
    let (offsets, _) = record_offsets(&original, 20);
    let head = write_file(&dir, "head.bin", &original[..offsets[100]]);
    let tail = write_file(&dir, "tail.bin", &original[offsets[100]..]);
    let state = dir.path().join("state.json");
    let run = imalog(["replay", arg(&head), "--bank", "sha1,sha256,sha384,sha512", "--save-state", arg(&state)]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let quote = write_file(&dir, "quote.yaml", ibmtss_quote_yaml());
    let run = imalog(["replay", arg(&tail), "--from-state", arg(&state), "--pcrs", arg(&quote)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = format!(
        "# replayed 262 records (absolute indexes 100 to 361) from the state at absolute index 100\n{}\
         # match: the first 262 records (absolute indexes 100 to 361) reproduce all 4 given PCR values\n",
        printed_pcr10(&IBMTSS_PCR10)
    );
    assert_eq!(run.stdout_text(), expected);
}

#[test]
fn replay_from_state_reads_stdin() {
    let dir = temp_dir();
    let original = read(&real("ibmtss/sha1.log"));
    let (offsets, _) = record_offsets(&original, 20);
    let tail = write_file(&dir, "tail.bin", &original[offsets[200]..]);
    let state = format!(
        r#"{{"next_index": 200, "pcrs": {{"sha1": {{"10": "{}"}}, "sha256": {{"10": "{}"}}}}}}"#,
        IBMTSS_PREFIX200_PCR10.0, IBMTSS_PREFIX200_PCR10.1
    );
    let run = imalog_with_stdin(["replay", arg(&tail), "--from-state", "-", "--json"], state.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_slice(&run.stdout).expect("replay --json printed invalid JSON");
    assert_eq!(report["first_index"], 200);
    assert_eq!(report["next_index"], 362);
    assert_eq!(report["records"], 162);
    assert_eq!(json_pcr10(&report, "sha1"), IBMTSS_PCR10[0].1);
    assert_eq!(json_pcr10(&report, "sha256"), IBMTSS_PCR10[1].1);
}

#[test]
fn replay_generated_split_equals_full_replay() {
    let dir = temp_dir();
    for (seed, template, split) in [("21", "ima-ng", 37usize), ("22", "ima-sig", 1), ("23", "ima-buf", 119)] {
        let list = dir.path().join("full.bin");
        let run = imalog([
            "generate",
            "--records",
            "120",
            "--seed",
            seed,
            "--template",
            template,
            "--violations-every",
            "9",
            "-o",
            arg(&list),
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let bytes = read(&list);
        let (offsets, end) = record_offsets(&bytes, 20);
        assert_eq!(offsets.len(), 120, "{template}");
        assert_eq!(end, bytes.len(), "{template}");
        let head = write_file(&dir, "head.bin", &bytes[..offsets[split]]);
        let tail = write_file(&dir, "tail.bin", &bytes[offsets[split]..]);

        let state = dir.path().join("state.json");
        let run = imalog(["replay", arg(&head), "--save-state", arg(&state)]);
        assert_eq!(run.code, 0, "{template}: {}", run.stderr);
        let resumed = replay_json(&tail, &["--from-state", arg(&state)]);
        let full = replay_json(&list, &[]);
        assert_eq!(resumed["pcrs"], full["pcrs"], "{template} split at {split}");
        assert_eq!(resumed["first_index"], split, "{template}");
        assert_eq!(resumed["next_index"], 120, "{template}");
    }
}

// ------------------------------------------------------ pipes, generate

/// Pipes `imalog args` into `head -c 10` and returns imalog's exit status,
/// its stderr and what head printed.
fn pipe_to_head(args: &[&str]) -> (i32, String, Vec<u8>) {
    let mut imalog = Command::new(env!("CARGO_BIN_EXE_imalog"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start imalog");
    let imalog_stdout = imalog.stdout.take().expect("stdout is piped");
    let head = Command::new("head")
        .args(["-c", "10"])
        .stdin(Stdio::from(imalog_stdout))
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to start head");
    let head_output = head.wait_with_output().expect("failed to wait for head");

    let mut stderr = String::new();
    imalog.stderr.take().expect("stderr is piped").read_to_string(&mut stderr).expect("stderr is UTF-8");
    let status = imalog.wait().expect("failed to wait for imalog");
    let code = status.code().unwrap_or_else(|| panic!("imalog {args:?} was killed by a signal\n{stderr}"));
    assert_ne!(code, 101, "imalog {args:?} panicked:\n{stderr}");
    (code, stderr, head_output.stdout)
}

#[test]
fn closed_stdout_exits_0_quietly() {
    let big_ascii = real("kunpengsecl/ascii_runtime_measurements_orig");
    let cases: [Vec<&str>; 4] = [
        vec!["show", arg(&big_ascii)],
        vec!["show", "--json", arg(&big_ascii)],
        vec!["convert", arg(&big_ascii), "--to", "binary", "-o", "-"],
        vec!["generate", "--records", "20000", "-o", "-"],
    ];
    for args in cases {
        let (code, stderr, head) = pipe_to_head(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
        assert_eq!(head.len(), 10, "{args:?}");
    }
}

#[test]
fn generate_same_seed_same_bytes() {
    let dir = temp_dir();
    let first = dir.path().join("first.bin");
    let second = dir.path().join("second.bin");
    for path in [&first, &second] {
        let run = imalog(["generate", "--records", "500", "--seed", "42", "--template", "all", "-o", arg(path)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert!(read(&first) == read(&second), "two runs with seed 42 differ");

    let stdout = imalog(["generate", "--records", "500", "--seed", "42", "--template", "all", "-o", "-"]);
    assert_eq!(stdout.code, 0, "{}", stdout.stderr);
    assert!(stdout.stdout == read(&first), "generate -o - differs from the file");
}

#[test]
fn generate_other_seed_other_bytes() {
    let first = imalog(["generate", "--records", "50", "--seed", "1", "-o", "-"]);
    let second = imalog(["generate", "--records", "50", "--seed", "2", "-o", "-"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(first.stdout != second.stdout, "seeds 1 and 2 wrote the same list");
}

#[test]
fn generate_ascii_equals_show_of_binary() {
    let binary = imalog(["generate", "--records", "300", "--seed", "5", "--template", "all", "-o", "-"]);
    let ascii =
        imalog(["generate", "--records", "300", "--seed", "5", "--template", "all", "--format", "ascii", "-o", "-"]);
    assert_eq!(binary.code, 0, "{}", binary.stderr);
    assert_eq!(ascii.code, 0, "{}", ascii.stderr);
    let show_run = imalog_with_stdin(["show", "-"], &binary.stdout);
    assert_eq!(show_run.code, 0, "{}", show_run.stderr);
    assert!(show_run.stdout == ascii.stdout, "show of the binary list differs from --format ascii");
}

#[test]
fn generate_violations_every_n() {
    let list = imalog([
        "generate",
        "--records",
        "100",
        "--seed",
        "3",
        "--violations-every",
        "10",
        "--format",
        "ascii",
        "-o",
        "-",
    ]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let text = String::from_utf8(list.stdout).expect("ASCII list is UTF-8");
    let zero_digest = format!(" {} ", "0".repeat(40));
    assert_eq!(text.lines().filter(|line| line.contains(&zero_digest)).count(), 10);
}

#[test]
fn replay_single_record_says_record() {
    let dir = temp_dir();
    let list = dir.path().join("one.bin");
    let run = imalog(["generate", "--records", "1", "-o", arg(&list)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = imalog(["replay", arg(&list), "--bank", "sha1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout_text().starts_with("# replayed 1 record (absolute index 0) from a cold boot\n"),
        "{}",
        run.stdout_text()
    );
}

#[test]
fn replay_json_match_has_no_mismatches() {
    let dir = temp_dir();
    let pcrs = write_file(&dir, "pcrs.yaml", ibmtss_quote_yaml());
    let report = replay_json(&real("ibmtss/sha1.log"), &["--pcrs", arg(&pcrs)]);
    assert_eq!(report["match"]["records"], 362);
    assert_eq!(report["mismatches"], Value::Null);
}

#[test]
fn replay_json_failure_lists_mismatches() {
    let dir = temp_dir();
    // Not all zero: the reset value is matched by the empty prefix.
    let wrong = [("sha1", "11".repeat(20))];
    let pcrs = write_file(&dir, "pcrs.yaml", pcr10_yaml(&[(wrong[0].0, wrong[0].1.as_str())]));
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&pcrs), "--json"]);
    assert_eq!(run.code, 1);
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["match"], Value::Null);
    assert_eq!(report["mismatches"][0]["expected"], "11".repeat(20));
    assert_eq!(report["mismatches"][0]["computed"], IBMTSS_PCR10[0].1);
}

#[test]
fn replay_save_state_skipped_on_failure() {
    let dir = temp_dir();
    let pcrs = write_file(&dir, "pcrs.yaml", pcr10_yaml(&[("sha1", &"11".repeat(20))]));
    let state = dir.path().join("state.json");
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", arg(&pcrs), "--save-state", arg(&state)]);
    assert_eq!(run.code, 1);
    assert!(!state.exists(), "a state was saved for a list that failed verification");
}

#[test]
fn replay_save_state_over_input_exits_2() {
    let dir = temp_dir();
    let list = write_file(&dir, "list.bin", read(&real("ibmtss/sha1.log")));
    let run = imalog(["replay", arg(&list), "--save-state", arg(&list)]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--save-state names the list being replayed"), "{}", run.stderr);
    assert_eq!(read(&list), read(&real("ibmtss/sha1.log")));
}

#[test]
fn generate_unmapped_bank_writes_padded_sha1() {
    let dir = temp_dir();
    let list = dir.path().join("list_tpm_alg_99");
    let run = imalog(["generate", "--records", "3", "--bank", "tpm_alg_99:40", "--format", "ascii", "-o", arg(&list)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = String::from_utf8(read(&list)).unwrap();
    let digest = text.split(' ').nth(1).unwrap();
    assert_eq!(digest.len(), 80);
    assert!(digest.ends_with(&"0".repeat(40)), "{digest}");
    let run = imalog(["show", "--input-bank", "tpm_alg_99:40", "--bank", "sha1", arg(&list)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout_text().contains(&digest[..40]));
}

#[test]
fn forced_ascii_on_binary_list_exits_1() {
    let run = imalog(["show", "--input-format", "ascii", arg(&real("ibmtss/sha1.log"))]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("it is a binary list, not ASCII; drop --input-format ascii"), "{}", run.stderr);
}

#[test]
fn verify_rejects_a_bad_key_file() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let key = temp.path().join("ak.hex");
    // What `jq -r .ak_public` writes when the quote endpoint failed.
    std::fs::write(&key, "null\n").expect("write key");
    let run = imalog(["verify", "--collector", "http://127.0.0.1:9", "--ak", arg(&key), "--once"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("--ak {}: not an attestation key", key.display())), "{}", run.stderr);
}

// ------------------------------------------------------------ small inputs

/// Small inputs read from a device that never ends fail at once with the
/// file named, instead of filling memory.
#[test]
fn endless_small_inputs_are_refused() {
    let zero = "/dev/zero";
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--pcrs", zero]);
    assert_usage_error(&run, "--pcrs /dev/zero");
    assert_eq!(
        run.stderr,
        "imalog: /dev/zero: cannot read PCR values: larger than 1048576 bytes, which is more than such a file holds\n"
    );
    let run = imalog(["replay", arg(&real("ibmtss/sha1.log")), "--from-state", zero]);
    assert_usage_error(&run, "--from-state /dev/zero");
    assert!(run.stderr.starts_with("imalog: /dev/zero: cannot read the replay state: larger than"), "{}", run.stderr);
    let run = imalog(["verify", "--records", zero, "--quote", zero, "--ak", zero]);
    assert_usage_error(&run, "--ak /dev/zero");
    assert_eq!(run.stderr, "imalog: --ak /dev/zero: larger than 65536 bytes, which is more than such a file holds\n");
}

#[test]
fn verify_ak_bad_hex_names_the_character() {
    let dir = temp_dir();
    let ak = write_file(&dir, "ak.hex", "0058zz\n");
    let run = imalog(["verify", "--records", "/dev/null", "--quote", "/dev/null", "--ak", arg(&ak)]);
    assert_usage_error(&run, "--ak bad hex");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: --ak {}: not an attestation key (text with invalid hex at character 4); expected a \
             TPM2B_PUBLIC in binary or hex, such as the ak_public of the collector's /v1/quote\n",
            ak.display()
        )
    );
}

#[test]
fn measure_argument_errors_exit_2() {
    let dir = temp_dir();
    let file = write_file(&dir, "file", "content");
    let run = imalog(["measure", "--control", arg(&file), "--data", "00", arg(&file)]);
    assert_usage_error(&run, "--data without --buffer");
    assert_eq!(run.stderr, "imalog: --data needs --buffer NAME: it is a buffer's content\n");
    let run = imalog(["measure", "--control", arg(&file), "--pcr", "64", arg(&file)]);
    assert_usage_error(&run, "--pcr 64");
    assert!(
        run.stderr.starts_with("error: invalid value '64' for '--pcr <PCR>': 64 is not in 0..=63"),
        "{}",
        run.stderr
    );
    let run = imalog(["measure", "--control", arg(&file), arg(&file)]);
    assert_usage_error(&run, "--control names a file");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: control: {}: cannot send the request: not a socket; give the --control path of a running \
             imalog emulate\n",
            file.display()
        )
    );
}

#[test]
fn collect_unreadable_boot_id_file_exits_2() {
    let dir = temp_dir();
    let ima = dir.path().join("ima");
    std::fs::create_dir(&ima).unwrap();
    std::fs::write(ima.join("binary_runtime_measurements"), b"").unwrap();
    let missing = dir.path().join("missing-boot-id");
    let store = dir.path().join("store");
    let run = imalog([
        "collect",
        "--securityfs",
        arg(&ima),
        "--store",
        arg(&store),
        "--once",
        "--listen",
        "none",
        "--boot-id-file",
        arg(&missing),
    ]);
    assert_usage_error(&run, "missing boot id file");
    assert!(
        run.stderr.ends_with(&format!(
            "imalog: --boot-id-file {}: No such file or directory (os error 2); the collector needs it to tell a \
             reboot from a kexec\n",
            missing.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn verify_argument_errors_exit_2() {
    let offline = ["verify", "--records", "/dev/null", "--quote", "/dev/null", "--ak", "/dev/null"];
    let cases: [(&[&str], &str); 5] = [
        (&["--nonce", ""], "imalog: --nonce: 0 bytes; expected 1 to 64 bytes of hex\n"),
        (&["--nonce", "0"], "imalog: --nonce \"0\": invalid hex at character 0: expected pairs of 0-9 and a-f\n"),
        (
            &["--once"],
            "imalog: --once applies to attesting through --collector; an offline bundle (--records with --quote) is \
             checked once from a cold boot\n",
        ),
        (
            &["--state", "x.db"],
            "imalog: --state applies to attesting through --collector; an offline bundle (--records with --quote) is \
             checked once from a cold boot\n",
        ),
        (&["--max-round-records", "0"], "imalog: --max-round-records must be at least 1\n"),
    ];
    for (extra, expected) in cases {
        let run = imalog(offline.iter().chain(extra.iter()).copied().collect::<Vec<_>>());
        assert_usage_error(&run, expected);
        assert_eq!(run.stderr, expected);
    }
    let run = imalog(["verify", "--collector", "http://127.0.0.1:9", "--ak", "/dev/null", "--nonce", "00"]);
    assert_usage_error(&run, "--nonce online");
    assert_eq!(
        run.stderr,
        "imalog: --nonce applies to an offline bundle (--records with --quote); online rounds make their own\n"
    );
}

#[test]
fn emulate_missing_mount_point_exits_2() {
    let dir = temp_dir();
    let missing = dir.path().join("missing");
    let run = imalog(["emulate", "--mount", arg(&missing)]);
    assert_usage_error(&run, "missing mount point");
    assert_eq!(
        run.stderr,
        format!("imalog: --mount {}: not an existing folder; create it first (mkdir -p)\n", missing.display())
    );
}

#[test]
fn history_store_in_use_names_api() {
    let dir = temp_dir();
    let root = dir.path().join("store");
    // This test process plays the running collector.
    let _locked = imalog_collector::Store::open(&root).expect("open a new store");
    let run = imalog(["history", arg(&root), "-o", "-"]);
    assert_usage_error(&run, "store in use");
    assert_eq!(
        run.stderr,
        format!(
            "imalog: {}: another collector is using this store; stop it first, or ask it for the same records \
             with GET /v1/records?from=0\n",
            root.display()
        )
    );
}

#[test]
fn history_of_an_empty_store_says_so() {
    let dir = temp_dir();
    let root = dir.path().join("store");
    drop(imalog_collector::Store::open(&root).expect("open a new store"));
    let run = imalog(["history", arg(&root), "-o", "-"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert_eq!(run.stderr, "imalog: no records to write: epoch 1 contains 0 records, and --from is 0\n");
}
