//! `imalog emulate` extending a real swtpm through its TPM proxy, checked
//! with tools that know nothing of imalog: `tpm2_pcrread` through the proxy
//! reads the PCRs, and `evmctl ima_measurement` replays the saved history
//! plus the mounted list against them, before and after `A`/`D`, `N` and a
//! kexec. `imalog collect` then quotes the same TPM through the proxy while
//! the emulator keeps extending it.
//!
//! Needs the `tss` feature (the emulator's swtpm backend), root, FUSE,
//! swtpm, tpm2-tools and ima-evm-utils; without them the tests skip, or fail
//! under `IMALOG_REQUIRE_ORACLES=1`.

#![cfg(feature = "tss")]

#[path = "common/collector.rs"]
#[allow(dead_code)]
mod collector;
mod common;
#[path = "common/mount.rs"]
#[allow(dead_code)]
mod mount;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use collector::{pcrread, swtpm_argument};
use common::{arg, record_offsets};
use imalog_core::HashAlgorithm;
use imalog_tpm::testing::Swtpm;
use imalog_tpm::QuoteInfo;
use mount::{find_tool, fuse_available, Emulator};

/// Starts swtpm and an emulator that extends it; returns both and the
/// proxy's TCTI string from the emulator's output.
fn start() -> Option<(Swtpm, Emulator, String)> {
    if !fuse_available() {
        return None;
    }
    for (tool, package) in [("tpm2_pcrread", "tpm2-tools"), ("evmctl", "ima-evm-utils")] {
        if !mount::available_or_skip(find_tool(tool).is_some(), &format!("{tool} is not on PATH (install {package})")) {
            return None;
        }
    }
    let swtpm = Swtpm::start_for_test()?;
    let tpm = swtpm_argument(&swtpm);
    let emulator = Emulator::start(&["--tpm", &tpm, "--tpm-proxy", "127.0.0.1:0"]);
    let tcti = emulator
        .log()
        .lines()
        .find_map(|line| {
            line.strip_prefix("tpm-proxy ").and_then(|rest| rest.split_whitespace().nth(1)).map(String::from)
        })
        .unwrap_or_else(|| panic!("the emulator did not print its TPM proxy:\n{}", emulator.log()));
    Some((swtpm, emulator, tcti))
}

fn write_evmctl_pcrs(path: &Path, pcr10: &str) {
    let mut text = String::new();
    for pcr in 0..10 {
        text.push_str(&format!("PCR-{pcr:02}: {}\n", "0".repeat(pcr10.len())));
    }
    text.push_str(&format!("PCR-10: {pcr10}\n"));
    fs::write(path, text).expect("failed to write the evmctl PCR file");
}

/// Checks the saved history plus the mounted SHA-1 list against the PCRs
/// `tpm2_pcrread` returns: evmctl in sha1 and sha256, imalog in every bank.
fn assert_agrees_with_tpm(emulator: &Emulator, tcti: &str, history: &[u8], label: &str) {
    let mut full = history.to_vec();
    full.extend_from_slice(&fs::read(emulator.ima("binary_runtime_measurements")).expect("read the list"));
    emulator.wait_for_open_users(0);
    let list = emulator.scratch("history.bin");
    fs::write(&list, &full).expect("failed to write the history");
    let records = record_offsets(&full, 20).0.len();

    let tpm = pcrread(tcti);
    assert_eq!(tpm.len(), 4, "{label}: tpm2_pcrread banks");
    for (bank, value) in &tpm {
        if bank == "sha1" || bank == "sha256" {
            let pcr_file = emulator.scratch(&format!("pcrs-{bank}.txt"));
            write_evmctl_pcrs(&pcr_file, value);
            let output = Command::new("evmctl")
                .args(["-v", "ima_measurement", "--ignore-violations", &format!("--verify-bank={bank}"), "--pcrs"])
                .arg(format!("{bank},{}", arg(&pcr_file)))
                .arg(&list)
                .output()
                .expect("failed to start evmctl");
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            assert_eq!(output.status.code(), Some(0), "{label}: evmctl {bank}\n{text}");
            let success = format!("{bank} PCR-10: succeed at entry {records}");
            assert!(text.lines().any(|line| line == success), "{label}: evmctl {bank} lacks `{success}`\n{text}");
        }
        let report = common::replay_json(&list, &["--bank", bank]);
        assert_eq!(common::json_pcr10(&report, bank), *value, "{label}: imalog replay PCR 10 in {bank}");
    }
}

fn open_read_write(path: &Path) -> fs::File {
    OpenOptions::new().read(true).write(true).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_from_start(file: &mut fs::File) -> Vec<u8> {
    file.seek(SeekFrom::Start(0)).expect("seek");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read");
    bytes
}

fn measure_files(emulator: &Emulator, tag: &str, count: usize) {
    for index in 0..count {
        emulator.measure_new_file(&format!("{tag}-{index}"), format!("{tag} {index}\n").as_bytes());
    }
}

#[test]
fn evmctl_agrees_with_swtpm_across_export_and_kexec() {
    let Some((_swtpm, emulator, tcti)) = start() else { return };
    let mut history = Vec::new();

    measure_files(&emulator, "first", 5);
    assert_agrees_with_tpm(&emulator, &tcti, &history, "after measurements");

    {
        let mut staged = open_read_write(&emulator.ima("binary_runtime_measurements_staged"));
        staged.write_all(b"A\n").expect("A");
        let chunk = read_from_start(&mut staged);
        assert_eq!(record_offsets(&chunk, 20).0.len(), 6, "boot_aggregate and five files staged");
        history.extend_from_slice(&chunk);
        staged.write_all(b"D\n").expect("D");
    }
    assert_agrees_with_tpm(&emulator, &tcti, &history, "after A and D");

    measure_files(&emulator, "second", 4);
    {
        let mut original = open_read_write(&emulator.ima("binary_runtime_measurements"));
        let current = read_from_start(&mut original);
        let (offsets, _) = record_offsets(&current, 20);
        assert_eq!(offsets.len(), 4);
        // Delete the first three; the fourth stays in the kernel.
        history.extend_from_slice(&current[..offsets[3]]);
        original.write_all(b"3\n").expect("N");
    }
    assert_agrees_with_tpm(&emulator, &tcti, &history, "after N");

    let report = emulator.kexec();
    assert!(report.contains("restored"), "{report}");
    measure_files(&emulator, "third", 2);
    assert_agrees_with_tpm(&emulator, &tcti, &history, "after kexec");
}

/// A child process killed when dropped, also when a test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `imalog collect` with quotes from `tcti`; returns the child and
/// the HTTP address it reports.
fn start_collector(emulator: &Emulator, tcti: &str) -> (KillOnDrop, String) {
    let log = emulator.scratch("collect.log");
    let output = fs::File::create(&log).expect("collector log");
    let child = Command::new(env!("CARGO_BIN_EXE_imalog"))
        .args(["collect", "--securityfs", arg(&emulator.mount_point()), "--store"])
        .arg(emulator.scratch("store"))
        .args(["--interval", "200ms", "--listen", "127.0.0.1:0", "--tpm", tcti, "--boot-id-file", "none"])
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("log descriptor"))
        .stderr(output)
        .spawn()
        .expect("failed to start imalog collect");
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(address) = text.lines().find_map(|line| {
            line.contains("HTTP API listening").then(|| line.split("address=").nth(1).map(|a| a.trim().to_string()))?
        }) {
            return (child, address);
        }
        assert!(Instant::now() < deadline, "imalog collect did not start:\n{text}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP GET on loopback; returns status and body.
fn http_get(address: &str, target: &str) -> (u16, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the collector");
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("response head") + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, response[head_end..].to_vec())
}

#[test]
fn collector_quotes_while_emulator_extends() {
    let Some((_swtpm, emulator, tcti)) = start() else { return };
    let (collector, address) = start_collector(&emulator, &tcti);

    // Measure from another thread while quoting.
    let control = emulator.control();
    let folder = emulator.scratch("load");
    fs::create_dir_all(&folder).expect("load folder");
    let load = thread::spawn(move || {
        for index in 0..40 {
            let path = folder.join(format!("f{index}"));
            fs::write(&path, format!("load {index}")).expect("write a file");
            let run = common::imalog(["measure", "--control", arg(&control), arg(&path)]);
            assert_eq!(run.code, 0, "measure: {}", run.stderr);
        }
    });
    for round in 0..8u8 {
        let nonce = [round; 20];
        let (status, body) =
            http_get(&address, &format!("/v1/quote?nonce={}&pcrs=10", imalog_core::hex::encode(&nonce)));
        assert_eq!(status, 200, "quote {round}: {}", String::from_utf8_lossy(&body));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("quote JSON");
        let attest = imalog_core::hex::decode(json["attest"].as_str().expect("attest").as_bytes()).expect("hex");
        let info = QuoteInfo::parse(&attest).expect("TPMS_ATTEST parses");
        assert_eq!(info.extra_data, nonce, "quote {round}: nonce");
        assert_eq!(info.pcr_selection.len(), 4, "quote {round}: every bank is quoted");
        // The PCR values returned are the ones the quote covers.
        let mut concatenated = Vec::new();
        for (bank, pcrs) in &info.pcr_selection {
            assert_eq!(pcrs, &vec![10]);
            let value = json["pcrs"][bank.to_string()]["10"].as_str().expect("value of each quoted bank");
            concatenated.extend_from_slice(&imalog_core::hex::decode(value.as_bytes()).expect("hex"));
        }
        assert_eq!(
            info.pcr_digest,
            HashAlgorithm::Sha256.digest(&concatenated).as_bytes(),
            "quote {round}: pcrDigest covers the returned values"
        );
        assert!(json["last_index"].as_u64().is_some(), "quote {round}: last_index");
    }
    load.join().expect("measurement thread");

    // The collector's history replays to what tpm2_pcrread reports, once
    // the measurements have stopped.
    thread::sleep(Duration::from_millis(500));
    let (status, history) = http_get(&address, "/v1/records?from=0");
    assert_eq!(status, 200);
    let history = dechunk(&history);
    let list = emulator.scratch("collected.bin");
    fs::write(&list, &history).expect("write history");
    let tpm = pcrread(&tcti);
    let report = common::replay_json(&list, &["--bank", "sha1,sha256,sha384,sha512"]);
    for (bank, value) in &tpm {
        assert_eq!(common::json_pcr10(&report, bank), *value, "collected history in {bank}");
    }
    drop(collector);
}

/// Decodes an HTTP chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).expect("size"), 16).expect("hex size");
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// `imalog demo --mount --tpm swtpm:...`: emulate, collect and the verifier
/// as separate processes over FUSE and swtpm, with a kexec in the middle.
#[test]
fn demo_runs_as_separate_processes_over_fuse_and_swtpm() {
    if !fuse_available() {
        return;
    }
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let temp = tempfile::tempdir().expect("temporary directory");
    let workload = temp.path().join("workload");
    fs::create_dir(&workload).expect("mkdir");
    for i in 0..12 {
        let file = workload.join(format!("file{i:02}"));
        fs::write(&file, format!("#!/bin/sh\necho {i}\n")).expect("write");
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    let mount = temp.path().join("mnt");
    fs::create_dir(&mount).expect("mkdir");
    let dir = temp.path().join("demo");
    let tpm = swtpm_argument(&swtpm);
    let run = common::imalog([
        "demo",
        "--mount",
        arg(&mount),
        "--tpm",
        &tpm,
        "--workload",
        arg(&workload),
        "--dir",
        arg(&dir),
        "--rounds",
        "4",
        "--files-per-round",
        "4",
        "--interval",
        "300ms",
        "--kexec-every",
        "2",
    ]);
    let logs = ["emulate.log", "collect.log"]
        .map(|name| format!("--- {name}\n{}", fs::read_to_string(dir.join(name)).unwrap_or_default()))
        .join("\n");
    assert_eq!(run.code, 0, "stdout: {}\nstderr: {}\n{logs}", run.stdout_text(), run.stderr);
    let stdout = run.stdout_text();
    let rounds: Vec<&str> = stdout.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(rounds.len(), 4, "{stdout}");
    assert!(rounds.iter().all(|l| l.ends_with("| attestation ok")), "{stdout}");
    // Twelve files, one boot_aggregate, and kexec_load, kexec_execute and a
    // new boot_aggregate for each of the two kexecs. The collector may
    // still have records pending when the last quote is taken, so the last
    // round certifies at most 19.
    let last = rounds[3];
    let verified: u64 = last
        .split("| verified ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {last}"));
    assert!((13..=19).contains(&verified), "{stdout}");
    assert!(stdout.contains("demo: 4 rounds over FUSE and swtpm, 4 passed, 0 failed"), "{stdout}");
    // Every record reached the store, in order.
    let history = common::imalog(["history", arg(&dir.join("store")), "-o", "-"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    let shown = common::imalog_with_stdin(["show", "-"], &history.stdout);
    let names: Vec<String> =
        shown.stdout_text().lines().map(|l| l.split(' ').nth(4).unwrap_or_default().to_string()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with(arg(&workload))).count(), 12, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "boot_aggregate").count(), 3, "{names:?}");
    assert_eq!(names.len(), 19, "{names:?}");

    // A second run on the same swtpm cannot reproduce its PCR 10.
    let again = temp.path().join("again");
    let rerun = common::imalog([
        "demo",
        "--mount",
        arg(&mount),
        "--tpm",
        &tpm,
        "--workload",
        arg(&workload),
        "--dir",
        arg(&again),
        "--rounds",
        "1",
    ]);
    assert_eq!(rerun.code, 2, "{}", rerun.stderr);
    assert!(rerun.stderr.contains("PCR 10 was already extended"), "{}", rerun.stderr);
}

/// `imalog verify` against a collector that quotes swtpm: online rounds
/// that continue from the verifier's SQLite state, and an offline bundle
/// that passes as fetched and fails with another nonce, a changed record or
/// another attestation key.
#[test]
fn verify_attests_online_and_offline() {
    let Some((_swtpm, emulator, tcti)) = start() else { return };
    let (_collector, address) = start_collector(&emulator, &tcti);
    for index in 0..5 {
        emulator.measure_new_file(&format!("first-{index}"), format!("first {index}").as_bytes());
    }

    // Enrol the attestation key out of band.
    let (status, body) = http_get(&address, "/v1/quote?nonce=00&pcrs=10");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("quote JSON");
    let ak = emulator.scratch("ak.hex");
    fs::write(&ak, json["ak_public"].as_str().expect("ak_public")).expect("write the key");

    // Online: the first round certifies from index 0, the next one continues.
    thread::sleep(Duration::from_millis(500));
    let state = emulator.scratch("verifier.db");
    let url = format!("http://{address}");
    let online = ["verify", "--collector", &url, "--ak", arg(&ak), "--state", arg(&state), "--machine", "m1", "--once"];
    let first = common::imalog(online);
    assert_eq!(first.code, 0, "stdout: {}\nstderr: {}", first.stdout_text(), first.stderr);
    // boot_aggregate and five files.
    assert!(
        first.stdout_text().starts_with("m1: passed: records 0 to 5 certified, 0 pending"),
        "{}",
        first.stdout_text()
    );
    for index in 0..3 {
        emulator.measure_new_file(&format!("second-{index}"), format!("second {index}").as_bytes());
    }
    thread::sleep(Duration::from_millis(500));
    let second = common::imalog(online);
    assert_eq!(second.code, 0, "stdout: {}\nstderr: {}", second.stdout_text(), second.stderr);
    assert!(
        second.stdout_text().starts_with("m1: passed: records 6 to 8 certified, 0 pending"),
        "{}",
        second.stdout_text()
    );

    // Offline: a quote with a nonce, then the history from index 0.
    let nonce = "0123456789abcdef0123456789abcdef01234567";
    let (status, quote) = http_get(&address, &format!("/v1/quote?nonce={nonce}&pcrs=10"));
    assert_eq!(status, 200);
    let quote_file = emulator.scratch("quote.json");
    fs::write(&quote_file, &quote).expect("write quote");
    let (status, history) = http_get(&address, "/v1/records?from=0");
    assert_eq!(status, 200);
    let history = dechunk(&history);
    let records = emulator.scratch("history.bin");
    fs::write(&records, &history).expect("write history");
    let offline = |records: &Path, ak: &Path, nonce: &str| {
        common::imalog([
            "verify",
            "--records",
            arg(records),
            "--quote",
            arg(&quote_file),
            "--ak",
            arg(ak),
            "--nonce",
            nonce,
        ])
    };
    let bundle = offline(&records, &ak, nonce);
    assert_eq!(bundle.code, 0, "{}", bundle.stderr);
    assert!(!bundle.stderr.contains("warning"), "{}", bundle.stderr);

    // Without --nonce the bundle still verifies, with a warning.
    let unchecked =
        common::imalog(["verify", "--records", arg(&records), "--quote", arg(&quote_file), "--ak", arg(&ak)]);
    assert_eq!(unchecked.code, 0, "{}", unchecked.stderr);
    assert!(unchecked.stderr.contains("warning: no --nonce given"), "{}", unchecked.stderr);
    assert!(
        bundle.stdout_text().starts_with("verified: records 0 to 8 certified, reproducing the quote"),
        "{}",
        bundle.stdout_text()
    );

    let stale = offline(&records, &ak, "00");
    assert_eq!(stale.code, 1);
    assert!(stale.stderr.contains("quote nonce is 0123456789abcdef"), "{}", stale.stderr);

    // Change the last byte of the last record's file name.
    let mut changed = history.clone();
    let name = b"second-2";
    let at = changed.windows(name.len()).rposition(|w| w == name).expect("last file name in the history");
    changed[at + name.len() - 1] = b'9';
    let changed_file = emulator.scratch("changed.bin");
    fs::write(&changed_file, &changed).expect("write changed history");
    let tampered = offline(&changed_file, &ak, nonce);
    assert_eq!(tampered.code, 1);
    assert!(tampered.stderr.contains("record 8 at offset"), "{}", tampered.stderr);
    assert!(tampered.stderr.contains("template digest"), "{}", tampered.stderr);

    let mut other = imalog_tpm::SoftTpm::with_default_banks();
    let other_ak = emulator.scratch("other-ak.hex");
    fs::write(&other_ak, imalog_core::hex::encode(&other.ak_public().expect("software key"))).expect("write key");
    let impostor = offline(&records, &other_ak, nonce);
    assert_eq!(impostor.code, 1);
    assert!(impostor.stderr.contains("quote rejected"), "{}", impostor.stderr);
}
