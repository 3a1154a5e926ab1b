//! `imalog collect` against `imalog emulate`: crash recovery at every fault
//! point under a concurrent measurement workload, kexec in the middle of an
//! export, a full store, the `N` flavour, and kernels without staging. Most
//! tests check the collected history for loss, duplicates and gaps, and
//! replay it against PCR 10 of swtpm, read with `tpm2_pcrread` through the
//! emulator's TPM proxy (or of the emulator's software TPM).
//!
//! Needs the `tss` feature, root (FUSE and tmpfs mounts), swtpm and
//! tpm2-tools; without them the tests skip, or fail under
//! `IMALOG_REQUIRE_ORACLES=1`.
//!
//! The ignored test `collector_benchmark` measures export throughput, the
//! records left in the kernel between rounds, and the collector's memory
//! while it serves a large history:
//! `cargo test -p imalog --features tss --test collect -- --ignored --nocapture`.

#![cfg(feature = "tss")]

#[path = "common/collector.rs"]
#[allow(dead_code)]
mod collector;
mod common;
#[path = "common/mount.rs"]
#[allow(dead_code)]
mod mount;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use collector::{event_names, http_get, measure_one, pcrread, pending_files, CollectSetup, Tmpfs, Workload};
use common::arg;
use imalog_tpm::testing::Swtpm;
use mount::{find_tool, fuse_available, Emulator};
use tempfile::TempDir;

/// The fault points of `IMALOG_FAULT`, in protocol order.
const FAULT_POINTS: [&str; 5] = ["after-stage", "during-read", "after-store", "after-delete", "segment-write"];

/// Time allowed for a collector with a fault to reach it and die.
const FAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// An emulator (on swtpm or its software TPM) with a store folder and boot
/// id file beside it. Fields drop in order: the emulator unmounts before
/// swtpm stops and the folders go.
struct Rig {
    emulator: Emulator,
    swtpm: Option<Swtpm>,
    /// TCTI of the emulator's TPM proxy, with swtpm.
    tcti: Option<String>,
    work: TempDir,
    setup: CollectSetup,
}

impl Rig {
    /// Starts swtpm and an emulator extending it, with `extra` emulator
    /// arguments. Returns `None` when the tests may skip.
    fn with_swtpm(flavor: Option<&str>, extra: &[&str]) -> Option<Rig> {
        if !fuse_available() {
            return None;
        }
        let found = find_tool("tpm2_pcrread").is_some();
        if !mount::available_or_skip(found, "tpm2_pcrread is not on PATH (install tpm2-tools)") {
            return None;
        }
        let swtpm = Swtpm::start_for_test()?;
        let tpm = collector::swtpm_argument(&swtpm);
        let mut arguments = vec!["--tpm", tpm.as_str(), "--tpm-proxy", "127.0.0.1:0"];
        arguments.extend_from_slice(extra);
        let mut rig = Rig::start(flavor, &arguments, None);
        let tcti = rig
            .emulator
            .log()
            .lines()
            .find_map(|line| {
                line.strip_prefix("tpm-proxy ").and_then(|rest| rest.split_whitespace().nth(1)).map(String::from)
            })
            .unwrap_or_else(|| panic!("the emulator did not print its TPM proxy:\n{}", rig.emulator.log()));
        rig.swtpm = Some(swtpm);
        rig.tcti = Some(tcti);
        Some(rig)
    }

    /// Starts an emulator on its software TPM with `extra` arguments.
    fn with_soft_tpm(flavor: Option<&str>, extra: &[&str], store: Option<PathBuf>) -> Option<Rig> {
        if !fuse_available() {
            return None;
        }
        Some(Rig::start(flavor, extra, store))
    }

    fn start(flavor: Option<&str>, extra: &[&str], store: Option<PathBuf>) -> Rig {
        let work = tempfile::tempdir().expect("failed to create a temporary folder");
        let boot_id_file = work.path().join("boot-id");
        let mut arguments = vec!["--boot-id-file", arg(&boot_id_file)];
        arguments.extend_from_slice(extra);
        let emulator = Emulator::start(&arguments);
        let setup = CollectSetup {
            securityfs: emulator.mount_point(),
            store: store.unwrap_or_else(|| work.path().join("store")),
            boot_id_file,
            flavor: flavor.map(String::from),
            log_dir: work.path().to_path_buf(),
        };
        Rig { emulator, swtpm: None, tcti: None, work, setup }
    }

    fn files(&self) -> PathBuf {
        self.work.path().join("files")
    }

    /// Writes a file with unique contents and measures it; returns its path.
    fn measure(&self, name: &str) -> String {
        let folder = self.files();
        fs::create_dir_all(&folder).expect("failed to create the files folder");
        let path = folder.join(name);
        fs::write(&path, format!("contents of {name}\n")).expect("failed to write a file");
        measure_one(&self.emulator.control(), &path).unwrap_or_else(|| panic!("{name}: the kernel is suspended"))
    }

    /// Returns the emulator's counters: current, staged and full (this
    /// kernel instance).
    fn counters(&self) -> (u64, u64, u64) {
        let status = self.emulator.status();
        let field = |name: &str| status[name].as_u64().unwrap_or_else(|| panic!("status has no {name}: {status}"));
        (field("current"), field("staged"), field("full"))
    }

    /// Reads a list file of the mount and waits until its descriptor is
    /// released, so that a collector started next finds the lists idle.
    fn read_list(&self, name: &str) -> Vec<u8> {
        let bytes = fs::read(self.emulator.ima(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        self.emulator.wait_for_open_users(0);
        bytes
    }

    /// Reads PCR 10 of every bank: `tpm2_pcrread` through the proxy with swtpm,
    /// the control socket with the software TPM.
    fn tpm_pcr10(&self) -> Vec<(String, String)> {
        match &self.tcti {
            Some(tcti) => pcrread(tcti),
            None => self.emulator.pcr10(),
        }
    }

    /// Starts a collector service, fetches the whole history from
    /// `/v1/records`, checks that every suffix request agrees with it, and
    /// stops the collector.
    fn fetch_history(&self) -> Vec<u8> {
        let mut service = self.setup.start_service("1h");
        let (status, history) = http_get(&service.address, "/v1/records?from=0");
        assert_eq!(status, 200, "GET /v1/records: {}", String::from_utf8_lossy(&history));
        let (offsets, end) = common::record_offsets(&history, 20);
        assert_eq!(end, history.len(), "the history ends inside a record");

        // One cold boot: one epoch, whatever crashes and kexecs happened.
        let (status, body) = http_get(&service.address, "/v1/status");
        assert_eq!(status, 200, "GET /v1/status");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
        assert_eq!(json["epoch"], 1, "epoch: {json}");
        for from in [1, offsets.len() / 2, offsets.len().saturating_sub(1), offsets.len()] {
            let (status, suffix) = http_get(&service.address, &format!("/v1/records?from={from}"));
            assert_eq!(status, 200);
            let start = offsets.get(from).copied().unwrap_or(history.len());
            assert!(suffix == history[start..], "/v1/records?from={from} differs from the history after record {from}");
        }
        assert!(service.stop().success(), "collector service failed:\n{}", service.log());
        history
    }

    /// Replays `history` in every bank and compares PCR 10 with the TPM.
    fn assert_replays_to_tpm(&self, history: &[u8], label: &str) {
        let list = self.work.path().join("history.bin");
        fs::write(&list, history).expect("failed to write the history");
        let tpm = self.tpm_pcr10();
        assert_eq!(tpm.len(), 4, "{label}: banks of PCR 10");
        let banks = tpm.iter().map(|(bank, _)| bank.as_str()).collect::<Vec<_>>().join(",");
        let report = common::replay_json(&list, &["--bank", &banks]);
        for (bank, value) in &tpm {
            assert_eq!(common::json_pcr10(&report, bank), *value, "{label}: replayed PCR 10 in {bank}");
        }
    }
}

/// Splits event names into the workload's file paths (under `files`) and
/// the other records (boot_aggregate, kexec_load, kexec_execute).
fn split_names(names: &[String], files: &Path) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{}/", files.display());
    names.iter().cloned().partition(|name| name.starts_with(&prefix))
}

/// Kills collectors at each of `points` while a workload measures files,
/// restarting each time; then checks the history. Returns the kills per
/// point.
fn crash_run(rig: &Rig, points: &[&'static str], iterations: u32) -> BTreeMap<&'static str, u32> {
    let workload = Workload::start(rig.emulator.control(), rig.files(), "w", Duration::from_millis(2));
    let mut kills = BTreeMap::new();
    for &point in points {
        for iteration in 0..iterations {
            let fault = format!("{point}:{}", 1 + iteration % 3);
            let finished = rig.setup.run(&["--interval", "5ms", "--listen", "none"], Some(&fault), FAULT_TIMEOUT);
            assert!(
                finished.killed(),
                "IMALOG_FAULT={fault}: the collector exited with {} instead of being killed:\n{}",
                finished.status,
                finished.log
            );
            assert!(finished.log.contains("fault injection"), "IMALOG_FAULT={fault}:\n{}", finished.log);
            *kills.entry(point).or_insert(0) += 1;

            // Restart: a single round, or a service that runs rounds for a
            // while and stops on SIGTERM.
            if iteration % 2 == 0 {
                rig.setup.clean_round();
            } else {
                let mut service = rig.setup.spawn(&["--interval", "10ms", "--listen", "none"], None);
                thread::sleep(Duration::from_millis(60));
                let status = service.stop();
                let log = service.log();
                assert!(status.success(), "IMALOG_FAULT={fault}: the restarted collector failed:\n{log}");
                assert!(!log.contains("ERROR"), "IMALOG_FAULT={fault}: errors after the restart:\n{log}");
                let pending = pending_files(&rig.setup.store);
                assert!(pending.is_empty(), "pending files after a clean stop: {pending:?}\n{log}");
            }
        }
    }
    let measured = workload.stop();
    rig.setup.clean_round();
    assert_eq!(rig.counters().0, 0, "records left in the kernel after the last clean round");

    let history = rig.fetch_history();
    let names = event_names(&history);
    let (files, others) = split_names(&names, &rig.files());
    assert_eq!(others, vec!["boot_aggregate".to_string()], "records other than the workload's");
    assert_eq!(files.len(), measured.len(), "records of measured files in the history");
    assert!(files == measured, "the history's files differ from the measured sequence (lost, duplicated or reordered)");
    assert_eq!(rig.counters().2, names.len() as u64, "records the kernel appended");
    rig.assert_replays_to_tpm(&history, "crash run");
    eprintln!("crash run: {} records collected", names.len());
    kills
}

#[test]
fn crash_recovery_staged_under_load() {
    let Some(rig) = Rig::with_swtpm(None, &[]) else { return };
    let started = Instant::now();
    let kills = crash_run(&rig, &FAULT_POINTS, 60);
    eprintln!("staged crash run: kills per fault point {kills:?} in {:?}", started.elapsed());
}

#[test]
fn crash_recovery_delete_n_under_load() {
    let Some(rig) = Rig::with_swtpm(Some("delete-n"), &[]) else { return };
    let started = Instant::now();
    // The N flavour never writes `A`, so it never reaches after-stage.
    let kills = crash_run(&rig, &FAULT_POINTS[1..], 15);
    eprintln!("delete-n crash run: kills per fault point {kills:?} in {:?}", started.elapsed());
}

#[test]
fn kexec_between_store_and_delete() {
    let Some(rig) = Rig::with_swtpm(None, &[]) else { return };
    let mut expected = vec!["boot_aggregate".to_string()];
    let measure_all = |prefix: &str, count: usize, expected: &mut Vec<String>| {
        for index in 0..count {
            expected.push(rig.measure(&format!("{prefix}-{index}")));
        }
    };
    let kexec_records = ["kexec_load", "kexec_execute", "boot_aggregate"].map(String::from);

    // Stored as pending, then the kernel kexecs before D: the staged
    // records travel to the new kernel, so the pending copy must go.
    measure_all("a", 5, &mut expected);
    let finished = rig.setup.run(&["--once", "--listen", "none"], Some("after-store"), FAULT_TIMEOUT);
    assert!(finished.killed(), "after-store:\n{}", finished.log);
    assert_eq!(pending_files(&rig.setup.store).len(), 1, "pending chunk after the kill");
    assert_eq!(rig.counters(), (0, 6, 6), "staged records after the kill");
    let boot_id = fs::read_to_string(&rig.setup.boot_id_file).expect("boot id");
    rig.emulator.kexec();
    assert_ne!(fs::read_to_string(&rig.setup.boot_id_file).expect("boot id"), boot_id, "boot id after kexec");
    expected.extend(kexec_records.clone());
    assert_eq!(rig.counters().0, 9, "the new kernel restores the staged records and the kexec events");
    measure_all("b", 3, &mut expected);
    let log = rig.setup.clean_round();
    assert!(log.contains("dropping the copy"), "the pending copy was not dropped:\n{log}");
    assert_eq!(rig.counters(), (0, 0, 12), "counters after the round in the new kernel");

    // D done, the kill comes before the commit, then a kexec: the kernel
    // deleted the records, so the pending copy is the only one.
    measure_all("c", 4, &mut expected);
    let finished = rig.setup.run(&["--once", "--listen", "none"], Some("after-delete"), FAULT_TIMEOUT);
    assert!(finished.killed(), "after-delete:\n{}", finished.log);
    assert_eq!(pending_files(&rig.setup.store).len(), 1, "pending chunk after the kill");
    assert_eq!(rig.counters(), (0, 0, 16), "nothing staged after D");
    rig.emulator.kexec();
    expected.extend(kexec_records.clone());
    measure_all("d", 2, &mut expected);
    let log = rig.setup.clean_round();
    assert!(log.contains("committing it"), "the pending chunk was not committed:\n{log}");

    // Pending from after-store, then two kexecs before the collector runs.
    measure_all("e", 3, &mut expected);
    let finished = rig.setup.run(&["--once", "--listen", "none"], Some("after-store"), FAULT_TIMEOUT);
    assert!(finished.killed(), "after-store:\n{}", finished.log);
    rig.emulator.kexec();
    expected.extend(kexec_records.clone());
    rig.emulator.kexec();
    expected.extend(kexec_records.clone());
    let log = rig.setup.clean_round();
    assert!(log.contains("dropping the copy"), "the pending copy was not dropped:\n{log}");
    measure_all("f", 1, &mut expected);
    rig.setup.clean_round();

    let history = rig.fetch_history();
    assert_eq!(event_names(&history), expected, "history after kexecs during exports");
    rig.assert_replays_to_tpm(&history, "kexec during export");
}

#[test]
fn kexec_storm_under_load() {
    let Some(rig) = Rig::with_swtpm(None, &[]) else { return };
    let workload = Workload::start(rig.emulator.control(), rig.files(), "w", Duration::from_millis(1));
    let mut service = rig.setup.spawn(&["--interval", "1ms", "--listen", "none"], None);

    // Kexecs at irregular times, so that some land in the middle of a round:
    // between A and D, D then fails with ESTALE and the pending copy goes.
    let kexecs = 25;
    let mut seed = 12345u64;
    for _ in 0..kexecs {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        thread::sleep(Duration::from_millis(5 + (seed >> 33) % 40));
        rig.emulator.kexec();
    }
    let measured = workload.stop();
    thread::sleep(Duration::from_millis(50));
    assert!(
        service.try_exit().is_none(),
        "the collector stopped during the kexecs:
{}",
        service.log()
    );
    assert!(service.stop().success(), "{}", service.log());
    let log = service.log();
    assert!(
        !log.contains("ERROR"),
        "errors during the kexecs:
{log}"
    );
    eprintln!(
        "kexec storm: {kexecs} kexecs, {} files; pending copies dropped on ESTALE {}, staging refused {}",
        measured.len(),
        log.matches("D refused").count(),
        log.matches("staging refused").count()
    );
    rig.setup.clean_round();

    let history = rig.fetch_history();
    let names = event_names(&history);
    let (files, others) = split_names(&names, &rig.files());
    let mut expected_others = vec!["boot_aggregate".to_string()];
    for _ in 0..kexecs {
        expected_others.extend(["kexec_load", "kexec_execute", "boot_aggregate"].map(String::from));
    }
    assert_eq!(others, expected_others, "records other than the workload's");
    assert!(files == measured, "the history's files differ from the measured sequence (lost, duplicated or reordered)");
    rig.assert_replays_to_tpm(&history, "kexec storm");
}

/// Fills the free space of `tmpfs` but `leave` bytes with a filler file.
fn fill(tmpfs: &Tmpfs, leave: u64) -> PathBuf {
    let filler = tmpfs.path().join("filler");
    let size = tmpfs.free_bytes().checked_sub(leave).expect("less free space than the test leaves");
    fs::write(&filler, vec![0u8; size as usize]).expect("failed to write the filler file");
    assert_eq!(tmpfs.free_bytes(), leave, "free bytes after the filler");
    filler
}

/// Waits until `/v1/status` reports `stored` records, or panics.
fn wait_for_stored(address: &str, stored: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(address, "/v1/status");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
        if json["stored"] == stored {
            return;
        }
        assert!(Instant::now() < deadline, "the store did not reach {stored} records: {json}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_store_keeps_records_in_kernel() {
    const PAGE: u64 = 4096;
    let Some(tmpfs) = Tmpfs::mount(256 * 1024) else {
        mount::available_or_skip(false, "mounting a tmpfs failed (needs root)");
        return;
    };
    let Some(rig) = Rig::with_soft_tpm(None, &[], Some(tmpfs.path().join("store"))) else { return };
    let mut expected = vec!["boot_aggregate".to_string()];
    let measure_all = |prefix: &str, count: usize, expected: &mut Vec<String>| {
        for index in 0..count {
            expected.push(rig.measure(&format!("{prefix}-{index}")));
        }
    };
    measure_all("a", 10, &mut expected);
    rig.setup.clean_round();

    // No space for the pending chunk: `A` is done, but the staged records
    // stay in the kernel.
    let filler = fill(&tmpfs, 0);
    measure_all("b", 60, &mut expected);
    let finished = rig.setup.run(&["--once", "--listen", "none"], None, collector::EXIT_TIMEOUT);
    assert!(!finished.status.success(), "a round with a full store succeeded:\n{}", finished.log);
    assert!(finished.log.contains("No space left on device"), "{}", finished.log);
    assert_eq!(rig.counters(), (0, 60, 71), "the kernel keeps the staged records");
    let staged = rig.read_list("binary_runtime_measurements_staged");
    assert_eq!(common::record_offsets(&staged, 20).0.len(), 60, "records in the staged list");
    assert!(pending_files(&rig.setup.store).is_empty(), "a pending file was left on a full store");

    // A service keeps running and retrying, and serves the whole history
    // from the store and the kernel.
    let mut service = rig.setup.start_service("50ms");
    measure_all("c", 10, &mut expected);
    thread::sleep(Duration::from_millis(300));
    assert!(service.try_exit().is_none(), "the collector stopped on a full store:\n{}", service.log());
    let failures = service.log().matches("round failed").count();
    assert!(failures >= 2, "{failures} failed rounds logged:\n{}", service.log());
    assert_eq!(rig.counters(), (10, 60, 81), "the kernel keeps every record while the store is full");
    let (status, history) = http_get(&service.address, "/v1/records?from=0");
    assert_eq!(status, 200);
    assert_eq!(event_names(&history), expected, "history served while the pending chunk cannot be written");
    assert!(service.stop().success(), "{}", service.log());

    // Room for the pending chunk but not for the commit: the kernel deletes
    // the staged records, and the pending file is their only copy.
    fs::remove_file(&filler).expect("remove the filler");
    let pending_size = (staged.len() as u64 + 36).div_ceil(PAGE) * PAGE;
    let filler = fill(&tmpfs, pending_size);
    let finished = rig.setup.run(&["--once", "--listen", "none"], None, collector::EXIT_TIMEOUT);
    assert!(!finished.status.success(), "the commit succeeded on a full store:\n{}", finished.log);
    assert!(finished.log.contains("No space left on device"), "{}", finished.log);
    assert_eq!(pending_files(&rig.setup.store).len(), 1, "the pending chunk is kept:\n{}", finished.log);
    assert_eq!(rig.counters(), (10, 0, 81), "D deleted the staged records only after they were stored");

    // The commit keeps failing; the kernel keeps what is not stored, and
    // the served history still has every record at its index.
    let mut service = rig.setup.start_service("50ms");
    measure_all("d", 5, &mut expected);
    thread::sleep(Duration::from_millis(300));
    assert!(service.try_exit().is_none(), "the collector stopped on a full store:\n{}", service.log());
    assert_eq!(rig.counters(), (15, 0, 86), "the kernel keeps the records after the pending chunk");
    let (status, history) = http_get(&service.address, "/v1/records?from=0");
    assert_eq!(status, 200);
    assert_eq!(event_names(&history), expected, "history served while the pending chunk cannot be committed");

    // Space again: the next rounds commit everything.
    fs::remove_file(&filler).expect("remove the filler");
    wait_for_stored(&service.address, expected.len() as u64);
    assert!(service.stop().success(), "{}", service.log());
    rig.setup.clean_round();
    assert_eq!(rig.counters().0, 0, "records left in the kernel");
    let history = rig.fetch_history();
    assert_eq!(event_names(&history), expected, "history after the store had space again");
    rig.assert_replays_to_tpm(&history, "full store");
}

#[test]
fn read_only_lists_are_copied_not_deleted() {
    let Some(rig) = Rig::with_soft_tpm(None, &["--no-staging", "--read-only-without-staging"], None) else { return };
    let mut expected = vec!["boot_aggregate".to_string()];
    for index in 0..5 {
        expected.push(rig.measure(&format!("a-{index}")));
    }
    let log = rig.setup.clean_round();
    assert!(log.contains("copying records read-only"), "the collector did not report read-only lists:\n{log}");
    assert!(log.contains("capability=ReadOnly"), "{log}");
    assert_eq!(rig.counters(), (6, 0, 6), "the kernel keeps every record");

    for flavor in ["staged", "delete-n"] {
        let finished =
            rig.setup.run(&["--once", "--listen", "none", "--flavor", flavor], None, collector::EXIT_TIMEOUT);
        assert_eq!(finished.status.code(), Some(2), "--flavor {flavor} on read-only lists:\n{}", finished.log);
        assert!(finished.log.contains(&format!("the {flavor} flavour needs")), "{}", finished.log);
    }

    for index in 0..3 {
        expected.push(rig.measure(&format!("b-{index}")));
    }
    rig.setup.clean_round();
    rig.emulator.kexec();
    expected.extend(["kexec_load", "kexec_execute", "boot_aggregate"].map(String::from));
    expected.push(rig.measure("c-0"));
    rig.setup.clean_round();
    assert_eq!(rig.counters().0, expected.len() as u64, "the kernel keeps every record across kexec");

    let history = rig.fetch_history();
    assert_eq!(event_names(&history), expected, "history of read-only lists");
    assert!(history == rig.read_list("binary_runtime_measurements"), "the history is the kernel's list");
    let store = rig.setup.store.join("epochs/1");
    let stored: u64 = fs::read_dir(&store)
        .expect("epoch folder")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("seg-"))
        .map(|entry| entry.metadata().expect("segment metadata").len())
        .sum();
    // Three chunks, each framed by a 32-byte header and a 4-byte CRC.
    assert_eq!(stored, history.len() as u64 + 36 * 3, "bytes of the segment files");
    rig.assert_replays_to_tpm(&history, "read-only lists");
}

#[test]
fn delete_n_without_staged_files() {
    let Some(rig) = Rig::with_soft_tpm(Some("delete-n"), &["--no-staging"], None) else { return };
    assert!(!rig.emulator.ima("binary_runtime_measurements_staged").exists(), "_staged files without staging");

    // The default flavour on such a kernel only copies.
    let mut default = rig.setup.clone();
    default.flavor = None;
    default.store = rig.work.path().join("store-default");
    let log = default.clean_round();
    assert!(log.contains("copying records read-only"), "{log}");
    assert!(log.contains("capability=DeleteOnly"), "{log}");
    assert_eq!(rig.counters(), (1, 0, 1), "the default flavour deleted records");

    let mut expected = vec!["boot_aggregate".to_string()];
    for index in 0..5 {
        expected.push(rig.measure(&format!("a-{index}")));
    }
    rig.setup.clean_round();
    assert_eq!(rig.counters(), (0, 0, 6), "N deleted the exported records");

    for (round, fault) in ["during-read", "after-store", "after-delete", "segment-write"].iter().enumerate() {
        for index in 0..3 {
            expected.push(rig.measure(&format!("{fault}-{index}")));
        }
        let finished = rig.setup.run(&["--once", "--listen", "none"], Some(fault), FAULT_TIMEOUT);
        assert!(finished.killed(), "IMALOG_FAULT={fault}:\n{}", finished.log);
        if round == 1 {
            rig.emulator.kexec();
            expected.extend(["kexec_load", "kexec_execute", "boot_aggregate"].map(String::from));
        }
        rig.setup.clean_round();
    }
    assert_eq!(rig.counters().0, 0, "records left in the kernel");
    let history = rig.fetch_history();
    assert_eq!(event_names(&history), expected, "history with N and no _staged files");
    rig.assert_replays_to_tpm(&history, "N without staging");
}

#[test]
fn served_history_memory_is_bounded() {
    let lists = tempfile::tempdir().expect("failed to create a temporary folder");
    let list = lists.path().join("list.bin");
    let run = common::imalog(["generate", "--records", "200000", "--seed", "3", "-o", arg(&list)]);
    assert_eq!(run.code, 0, "generate: {}", run.stderr);
    let list_bytes = fs::metadata(&list).expect("generated list").len();

    // One export round stores the whole list as a single chunk.
    let Some(rig) = Rig::with_soft_tpm(None, &["--boot-log", arg(&list)], None) else { return };
    rig.setup.clean_round();

    // Opening the store and serving the history stream the chunk, so peak
    // memory stays far below the chunk's size.
    let service = rig.setup.start_service("1h");
    let (status, history) = http_get(&service.address, "/v1/records?from=0");
    assert_eq!(status, 200);
    assert_eq!(history.len() as u64, list_bytes, "bytes served");
    let (status, tail) = http_get(&service.address, "/v1/records?from=199990");
    assert_eq!(status, 200);
    assert_eq!(common::record_offsets(&tail, 20).0.len(), 10, "records served from index 199990");
    let peak = peak_rss_kib(service.pid()) * 1024;
    assert!(peak < list_bytes / 2, "collector VmHWM {peak} bytes while serving a {list_bytes}-byte chunk");
}

/// Returns the peak resident memory (VmHWM) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM value")
}

/// Runs one `imalog collect --once` round under GNU time; returns the wall
/// seconds and the peak RSS in KiB.
fn timed_round(setup: &CollectSetup) -> (f64, u64) {
    let output = std::process::Command::new("/usr/bin/time")
        .args(["-f", "imalog-time %e %M", env!("CARGO_BIN_EXE_imalog"), "collect", "--once", "--listen", "none"])
        .args(["--securityfs", arg(&setup.securityfs), "--store", arg(&setup.store)])
        .args(["--boot-id-file", arg(&setup.boot_id_file)])
        .output()
        .expect("failed to start /usr/bin/time");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "collect round failed:\n{stderr}");
    let line = stderr.lines().find_map(|line| line.strip_prefix("imalog-time ")).expect("GNU time output");
    let mut fields = line.split_whitespace();
    let seconds = fields.next().and_then(|s| s.parse().ok()).expect("seconds");
    let kib = fields.next().and_then(|s| s.parse().ok()).expect("KiB");
    (seconds, kib)
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn collector_benchmark() {
    if !fuse_available() {
        return;
    }
    let lists = tempfile::tempdir().expect("temporary folder");

    // Export throughput: one round from an emulator booted with N records.
    let mut large = None;
    for records in [100_000u64, 1_000_000] {
        let list = lists.path().join(format!("list-{records}.bin"));
        let run = common::imalog(["generate", "--records", &records.to_string(), "--seed", "7", "-o", arg(&list)]);
        assert_eq!(run.code, 0, "generate: {}", run.stderr);
        let bytes = fs::metadata(&list).expect("list").len();
        let rig = Rig::with_soft_tpm(None, &["--boot-log", arg(&list)], None).expect("emulator");
        let (seconds, kib) = timed_round(&rig.setup);
        assert_eq!(rig.counters().0, 0, "records left after the round");
        println!(
            "export {records} records ({bytes} bytes): {seconds:.2} s, {:.0} records/s, peak RSS {:.1} MiB",
            records as f64 / seconds,
            kib as f64 / 1024.0
        );
        if records == 1_000_000 {
            large = Some(rig);
        }
    }

    // Memory while serving the 10^6-record history (one chunk of about
    // 120 MB) from a collector started on the store.
    let rig = large.expect("the 10^6-record rig");
    let mut service = rig.setup.start_service("1h");
    thread::sleep(Duration::from_millis(300));
    let before = peak_rss_kib(service.pid());
    let started = Instant::now();
    let (status, history) = http_get(&service.address, "/v1/records?from=0");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(status, 200);
    assert_eq!(common::record_offsets(&history, 20).0.len(), 1_000_000, "records served");
    let after = peak_rss_kib(service.pid());
    println!(
        "serve 10^6 records ({} bytes) in {seconds:.2} s: VmHWM {:.1} MiB before, {:.1} MiB after",
        history.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    drop(history);
    let (_, tail) = http_get(&service.address, "/v1/records?from=999000");
    assert_eq!(common::record_offsets(&tail, 20).0.len(), 1_000, "records served from index 999000");
    println!("serve from=999000: VmHWM {:.1} MiB", peak_rss_kib(service.pid()) as f64 / 1024.0);
    assert!(service.stop().success());
    drop(rig);

    // Records resident in the kernel (current + staged) at a steady
    // measurement rate, sampled every 10 ms for 5 s after a 1 s warm-up.
    for (interval, pause_ms) in [("100ms", 2u64), ("1s", 2), ("1s", 10)] {
        let rig = Rig::with_soft_tpm(None, &[], None).expect("emulator");
        let mut service = rig.setup.start_service(interval);
        let workload = Workload::start(rig.emulator.control(), rig.files(), "w", Duration::from_millis(pause_ms));
        thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < Duration::from_secs(5) {
            let (current, staged, _) = rig.counters();
            samples.push(current + staged);
            thread::sleep(Duration::from_millis(10));
        }
        let measured = workload.stop().len();
        let rate = measured as f64 / (started.elapsed().as_secs_f64() + 1.0);
        let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
        let max = samples.iter().max().copied().unwrap_or(0);
        println!(
            "interval {interval}, {rate:.0} records/s: resident mean {mean:.1}, max {max} ({} samples)",
            samples.len()
        );
        assert!(service.stop().success());
    }
}

#[test]
fn first_run_after_deletions_warns() {
    let Some(rig) = Rig::with_soft_tpm(Some("staged"), &[], None) else { return };
    rig.measure("early");
    // Someone else exported and deleted the start of the boot's list.
    let staged = rig.emulator.ima("binary_runtime_measurements_staged");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3<>'{0}'; echo A >&3; cat <&3 >/dev/null; echo D >&3", staged.display()))
        .status()
        .expect("failed to run sh");
    assert!(status.success(), "A, read and D on the staged list");
    rig.emulator.wait_for_open_users(0);
    rig.measure("late");
    let log = rig.setup.clean_round();
    assert!(log.contains("the kernel's list does not start with boot_aggregate"), "{log}");
    assert_eq!(event_names(&rig.fetch_history()), vec![rig.files().join("late").display().to_string()]);

    // A collector that saw the boot from its first record does not warn.
    let rig = Rig::with_soft_tpm(Some("staged"), &[], None).expect("FUSE was available a moment ago");
    rig.measure("first");
    let log = rig.setup.clean_round();
    assert!(!log.contains("does not start with boot_aggregate"), "{log}");
}

#[test]
fn read_only_detects_records_deleted_by_another_process() {
    let Some(rig) = Rig::with_soft_tpm(Some("read-only"), &["--no-staging"], None) else { return };
    for index in 0..4 {
        rig.measure(&format!("a-{index}"));
    }
    rig.setup.clean_round();

    // Another process trims the first two records with N.
    let list = rig.emulator.ima("binary_runtime_measurements");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo 2 > '{}'", list.display()))
        .status()
        .expect("failed to run sh");
    assert!(status.success(), "echo 2 > binary_runtime_measurements");
    rig.emulator.wait_for_open_users(0);
    // Three new records make the list longer than the stored history again.
    for index in 0..3 {
        rig.measure(&format!("b-{index}"));
    }

    let finished = rig.setup.run(&["--once", "--listen", "none"], None, collector::EXIT_TIMEOUT);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.log);
    assert!(
        finished.log.contains(
            "records 0 to 4 of the kernel's list differ from the stored ones; another process deleted or replaced \
             records"
        ),
        "{}",
        finished.log
    );
    let stored = common::imalog(["history", arg(&rig.setup.store), "-o", "-"]);
    assert_eq!(stored.code, 0, "{}", stored.stderr);
    assert_eq!(event_names(&stored.stdout).len(), 5, "nothing more was stored");
}
