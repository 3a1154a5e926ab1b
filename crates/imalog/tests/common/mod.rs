//! Helpers shared by the integration tests of the `imalog` command. They find
//! the real measurement lists, run the binary, and hold the PCR values known
//! for the real lists. A small reader of the binary list layout, written
//! without imalog-core, lets tests cut lists at record boundaries on their own.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// PCR 10 of the vTPM that recorded the ibmtss lists, in the order sha1,
/// sha256, sha384, sha512, as `ibmtss/imakvtpcr10.txt` beside the lists
/// gives them (a test checks that file against these values).
pub const IBMTSS_PCR10: [(&str, &str); 4] = [
    ("sha1", "9be6bac02bf18d09d17e726c2df00bca4e8831ea"),
    ("sha256", "7fac48c81837d6d29046008aef0cdad8c2745cc98c3340cbba9bfdf39b4124b8"),
    ("sha384", "e8923687b18847064ff3af89fd7ed088fa03c8b2467f7f8648bab264684575beb92e707d813ed561189492bb4b6e5c8b"),
    (
        "sha512",
        "698dab0fbb7c4ae0ec4ecae0d3890e9635cc2ba97b9dec459f9ef867b96d858843697c701e580931d6f2cf1e18acb2b3192eb660e871a37cf5b45392086ce807",
    ),
];

/// PCR 10 after the first 200 records of `ibmtss/sha1.log`, as (sha1,
/// sha256). Computed with Python's hashlib over the template data; the
/// evmctl tests check them against `evmctl ima_measurement` too.
pub const IBMTSS_PREFIX200_PCR10: (&str, &str) =
    ("e8c1a2b5ea7424f71404e9295f9616663f56aba2", "e8d3f4485df1ab1fe30bccb943b65e4530a80c1683ef21192404c79f728fe39e");

/// PCR 10 (sha256) in the quote of keylime-perf-tests, which
/// `keylime-perf-tests/ima_log.txt` reproduces.
pub const KEYLIME_PERF_PCR10_SHA256: &str = "0a1447c37555073b670b94072e7aaf60ace6bd320a7c81fe8dec9a10289b85c8";

/// The real ASCII lists that a kernel wrote byte for byte (with the trailing
/// space of an empty last field), so that ASCII -> binary -> ASCII must give
/// them back unchanged.
pub const KERNEL_ASCII_LISTS: [&str; 13] = [
    "keylime-perf-tests/ima_log.txt",
    "rust-keylime/ascii_runtime_measurements",
    "rust-keylime/ima_log.txt",
    "keylime/ascii_runtime_measurements_ima",
    "keylime-tests/ima_log.txt",
    "keylime-tests/ascii_runtime_measurements-2",
    "kunpengsecl/ascii_runtime_measurements_orig",
    "kunpengsecl/ascii_runtime_measurements_ima-ng_sha1_orig",
    "kunpengsecl/ascii_runtime_measurements_ima-ng_sha256_orig",
    "ima-evm-utils/test_ascii_runtime_measurements",
    "ima-evm-utils/sample-ascii_runtime_measurements-pcrs-8-9",
    "embrave/37d16c0f/ascii_runtime_measurements",
    "global-trust-authority/ima.log",
];

/// Real binary lists that decode without error.
pub const CLEAN_BINARY_LISTS: [&str; 10] = [
    "ibmtss/sha1.log",
    "ibmtss/sha256.log",
    "ibmtss/sha384.log",
    "ibmtss/sha512.log",
    "ibmtss/imatest.log",
    "ima_log_lib/binary_runtime_measurements_sha256",
    "tpm2-tss/sml-ima-sha1-invalidated.bin",
    "tpm2-tss/sml-ima-sig-sha256-invalidated.bin",
    "embrave/37d16c0f/binary_runtime_measurements",
    "global-trust-authority/ima.bin",
];

/// Returns the path of a real list, under `IMALOG_REAL_TESTDATA` or by
/// default `../shared/testdata/real` beside the checkout. Panics when the
/// file is missing, because the tests must not pass without their data.
pub fn real(relative: &str) -> PathBuf {
    let base = std::env::var_os("IMALOG_REAL_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/real"));
    let path = base.join(relative);
    assert!(
        path.exists(),
        "real test data missing: {} (set IMALOG_REAL_TESTDATA to the folder of real measurement lists)",
        path.display()
    );
    path
}

/// Returns a path as a command-line argument. Test paths are UTF-8, and any
/// other path fails the test.
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("non-UTF-8 test path {}", path.display()))
}

/// The result of one `imalog` run.
#[derive(Debug)]
pub struct Run {
    /// Exit status.
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error, as text.
    pub stderr: String,
}

impl Run {
    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("imalog wrote non-UTF-8 text to stdout")
    }
}

/// Runs `imalog` with `args` and no standard input.
pub fn imalog<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_imalog(args, None)
}

/// Runs `imalog` with `args`, feeding `input` to its standard input.
pub fn imalog_with_stdin<I, S>(args: I, input: &[u8]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_imalog(args, Some(input))
}

/// Runs the binary and fails the test when it panicked (exit status 101) or
/// was killed by a signal: no input may crash imalog.
fn run_imalog<I, S>(args: I, input: Option<&[u8]>) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imalog"))
        .args(&args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start imalog");

    // Writing from another thread keeps a large input from blocking while
    // imalog fills its stdout pipe.
    let writer = input.map(|bytes| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            // imalog may stop reading early (on an error); a broken pipe
            // here is not a test failure.
            let _ = stdin.write_all(&bytes);
        })
    });
    let output = child.wait_with_output().expect("failed to wait for imalog");
    if let Some(writer) = writer {
        writer.join().expect("stdin writer thread panicked");
    }

    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().unwrap_or_else(|| panic!("imalog {args:?} was killed by a signal\n{stderr}"));
    assert_ne!(code, 101, "imalog {args:?} panicked:\n{stderr}");
    assert!(!stderr.contains("panicked at"), "imalog {args:?} panicked:\n{stderr}");
    Run { code, stdout: output.stdout, stderr }
}

/// Renders PCR 10 of each (bank, hex) as a `tpm2_pcrread` YAML PCR file.
pub fn pcr10_yaml(values: &[(&str, &str)]) -> String {
    values.iter().map(|(bank, hex)| format!("  {bank}:\n    10: 0x{hex}\n")).collect()
}

/// Returns `hex` with its last digit changed, so that it is a wrong PCR value.
pub fn altered_hex(hex: &str) -> String {
    let (head, last) = hex.split_at(hex.len() - 1);
    let replacement = if last == "0" { "1" } else { "0" };
    format!("{head}{replacement}")
}

/// Runs `imalog replay --json` on `list` and returns the JSON report; the
/// replay must succeed.
pub fn replay_json(list: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["replay", arg(list), "--json"];
    args.extend_from_slice(extra);
    let run = imalog(&args);
    assert_eq!(run.code, 0, "imalog {args:?}: {}", run.stderr);
    serde_json::from_slice(&run.stdout).expect("replay --json printed invalid JSON")
}

/// PCR 10 of `bank` from a `replay --json` report.
pub fn json_pcr10(report: &serde_json::Value, bank: &str) -> String {
    report["pcrs"][bank]["10"].as_str().unwrap_or_else(|| panic!("no {bank} PCR 10 in {report}")).to_string()
}

/// Returns the start offsets of the complete records of a little-endian
/// binary list with `digest_size`-byte template digests, and the offset just
/// past the last complete record. Every template but `ima` stores a
/// template-data length, which this reader needs, so it cannot read `ima`.
pub fn record_offsets(bytes: &[u8], digest_size: usize) -> (Vec<usize>, usize) {
    let read_u32 = |at: usize| -> Option<usize> {
        let word = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as usize)
    };
    let mut offsets = Vec::new();
    let mut at = 0;
    loop {
        let start = at;
        let Some(name_len) = read_u32(start + 4 + digest_size) else { break };
        let data_len_at = start + 4 + digest_size + 4 + name_len;
        let Some(data_len) = read_u32(data_len_at) else { break };
        let end = data_len_at + 4 + data_len;
        if end > bytes.len() {
            break;
        }
        offsets.push(start);
        at = end;
    }
    (offsets, at)
}
