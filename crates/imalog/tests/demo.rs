//! `imalog demo` on a fixed workload: the summary's counts are exact, the
//! stored history holds every record in order (kexec events included), and
//! a runtime policy failure makes the demo exit 1 naming the file.

mod common;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{arg, imalog, imalog_with_stdin};

/// 30 executables `tool1`..`tool30`, one library, and files the workload
/// must ignore (not executable, not a library).
fn workload(dir: &Path) {
    for i in 1..=30 {
        let path = dir.join(format!("tool{i}"));
        std::fs::write(&path, format!("#!/bin/sh\necho tool {i}\n")).expect("write tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(dir.join("libdemo.so.1"), b"not really ELF").expect("write library");
    std::fs::write(dir.join("README"), b"ignored").expect("write text file");
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub").join("notes.txt"), b"ignored too").expect("write text file");
}

fn demo_args<'a>(work: &'a Path, dir: &'a Path, rounds: &'a str) -> Vec<&'a str> {
    vec![
        "demo",
        "--workload",
        arg(work),
        "--dir",
        arg(dir),
        "--rounds",
        rounds,
        "--files-per-round",
        "10",
        "--interval",
        "1ms",
        "--kexec-every",
        "2",
    ]
}

#[test]
fn fixed_workload_summary_and_history() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let work = temp.path().join("workload");
    std::fs::create_dir(&work).expect("mkdir");
    workload(&work);
    let dir = temp.path().join("demo");

    let run = imalog(demo_args(&work, &dir, "4"));
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let stdout = run.stdout_text();
    let lines: Vec<&str> = stdout.lines().collect();
    // Not a terminal: one progress line per round, then the summary.
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(lines[0], "round 1/4 | measured 10 | in kernel 0 | stored 11 | verified 11 | attestation ok");
    // Round 2 measures 10 more, then kexecs: kexec_load, kexec_execute and
    // the new kernel's boot_aggregate.
    assert_eq!(lines[1], "round 2/4 | measured 20 | in kernel 0 | stored 24 | verified 24 | attestation ok");
    assert_eq!(lines[2], "round 3/4 | measured 30 | in kernel 0 | stored 34 | verified 34 | attestation ok");
    assert_eq!(lines[3], "round 4/4 | measured 31 | in kernel 0 | stored 38 | verified 38 | attestation ok");
    assert_eq!(
        lines[4],
        "demo: 4 rounds, 4 attestations passed, 0 failed; 31 files measured (0 unchanged re-measurements refused), \
         2 kexec(s)"
    );
    assert_eq!(
        lines[5],
        "demo: 38 records stored by the collector, 0 still in the kernel; records 0 to 37 verified, 0 pending, 0 not \
         certified"
    );

    // The stored history, record by record.
    let history = imalog(["history", arg(&dir.join("store")), "-o", "-"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    assert!(history.stderr.contains("wrote records 0 to 37 of epoch 1"), "{}", history.stderr);
    let shown = imalog_with_stdin(["show", "-"], &history.stdout);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let names: Vec<String> = shown
        .stdout_text()
        .lines()
        .map(|line| line.split(' ').nth(4).unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    let mut files: Vec<String> = (1..=30).map(|i| format!("tool{i}")).collect();
    files.insert(0, "libdemo.so.1".into());
    files.sort();
    let mut expected = vec!["boot_aggregate".to_string()];
    expected.extend_from_slice(&files[..20]);
    expected.extend(["kexec_load", "kexec_execute", "boot_aggregate"].map(String::from));
    expected.extend_from_slice(&files[20..]);
    expected.extend(["kexec_load", "kexec_execute", "boot_aggregate"].map(String::from));
    assert_eq!(names, expected);

    // Each file digest is the file's SHA-256, as the kernel model measured it.
    let tool1 = shown.stdout_text().lines().find(|l| l.ends_with("/tool1")).map(String::from).expect("tool1 line");
    let content = std::fs::read(work.join("tool1")).expect("read tool1");
    let digest = imalog_core::HashAlgorithm::Sha256.digest(&content);
    assert!(tool1.contains(&format!("ima-ng sha256:{} ", imalog_core::hex::encode(digest.as_bytes()))), "{tool1}");

    // A history read from past the end is a usage error naming the range.
    let beyond = imalog(["history", arg(&dir.join("store")), "--from", "39", "-o", "-"]);
    assert_eq!(beyond.code, 2);
    assert!(beyond.stderr.contains("--from 39: the store holds records 0 to 37 of epoch 1"), "{}", beyond.stderr);

    // A second epoch (as after a reboot): the latest is the default, and
    // --epoch reads the earlier one.
    {
        let mut store = imalog_collector::Store::open(&dir.join("store")).expect("open store");
        store.start_new_epoch().expect("new epoch");
        store.set_meta(imalog_core::ByteOrder::Little, Some("second boot".into())).expect("meta");
        store.commit(0, 11, &history.stdout[..record_end(&history.stdout, 11)]).expect("commit");
    }
    let latest = imalog(["history", arg(&dir.join("store")), "-o", "-"]);
    assert_eq!(latest.code, 0, "{}", latest.stderr);
    assert!(latest.stderr.contains("wrote records 0 to 10 of epoch 2"), "{}", latest.stderr);
    let first = imalog(["history", arg(&dir.join("store")), "--epoch", "1", "-o", "-"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout, history.stdout);
    let unknown = imalog(["history", arg(&dir.join("store")), "--epoch", "3", "-o", "-"]);
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("--epoch 3:") && unknown.stderr.contains("it has 1, 2"), "{}", unknown.stderr);
}

/// The byte offset after the first `count` records of a little-endian
/// SHA-1 binary list.
fn record_end(list: &[u8], count: u64) -> usize {
    let layout = imalog_core::BinaryLayout { digest_size: 20, byte_order: imalog_core::ByteOrder::Little };
    let mut decoder = imalog_core::BinaryDecoder::new(list, layout);
    let mut record = imalog_core::binary::empty_record();
    for _ in 0..count {
        assert!(decoder.read_record(&mut record).expect("decode"), "the list has fewer than {count} records");
    }
    decoder.offset() as usize
}

#[test]
fn policy_failure_fails_the_demo_and_names_the_file() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let work = temp.path().join("workload");
    std::fs::create_dir(&work).expect("mkdir");
    workload(&work);

    // Allow every file's digest except tool2's, and the kexec buffers.
    let mut digests = String::new();
    for entry in std::fs::read_dir(&work).expect("read workload") {
        let path = entry.expect("entry").path();
        if !path.is_file() || path.ends_with("tool2") {
            continue;
        }
        let digest = imalog_core::HashAlgorithm::Sha256.digest(&std::fs::read(&path).expect("read"));
        let _ = write!(
            digests,
            "{}\"{}\": [\"{}\"]",
            if digests.is_empty() { "" } else { ", " },
            path.display(),
            imalog_core::hex::encode(digest.as_bytes())
        );
    }
    let policy = temp.path().join("policy.json");
    std::fs::write(
        &policy,
        format!("{{\"meta\": {{\"version\": 1}}, \"digests\": {{{digests}}}, \"excludes\": [\"kexec_\"]}}"),
    )
    .expect("write policy");

    let dir = temp.path().join("demo");
    let mut args = demo_args(&work, &dir, "2");
    args.extend(["--policy", arg(&policy)]);
    let run = imalog(args);
    assert_eq!(run.code, 1, "stdout: {}\nstderr: {}", run.stdout_text(), run.stderr);
    // Round 1 measures libdemo.so.1, tool1 and tool10 to tool18; tool2 is
    // record 13, measured in round 2.
    let tool2 = work.join("tool2");
    let digest = imalog_core::HashAlgorithm::Sha256.digest(&std::fs::read(&tool2).expect("read tool2"));
    let expected = format!(
        "imalog: round 2: attestation FAILED: 1 runtime policy failure(s); first: record 13: {} (sha256:{}) is not in \
         the runtime policy",
        tool2.display(),
        imalog_core::hex::encode(digest.as_bytes())
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stdout_text().contains("demo: 2 rounds, 1 attestations passed, 1 failed"), "{}", run.stdout_text());
    assert!(run.stderr.contains("imalog: 1 attestation round(s) failed"), "{}", run.stderr);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let work = temp.path().join("workload");
    std::fs::create_dir(&work).expect("mkdir");
    workload(&work);
    let used = temp.path().join("used");
    std::fs::create_dir(&used).expect("mkdir");
    std::fs::write(used.join("verifier.db"), b"left by an earlier run").expect("write");
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let missing = temp.path().join("missing");
    let fresh = temp.path().join("fresh");
    let tool1 = work.join("tool1");

    let cases: [(Vec<&str>, String); 7] = [
        (
            vec!["demo", "--workload", arg(&work), "--dir", arg(&used)],
            format!("--dir {}: the folder is not empty", used.display()),
        ),
        (vec!["demo", "--workload", arg(&missing)], format!("--workload {}: No such file", missing.display())),
        (vec!["demo", "--workload", arg(&tool1)], format!("--workload {}: not a folder", tool1.display())),
        (vec!["demo", "--workload", arg(&empty)], "no executables or shared libraries found under".to_string()),
        (vec!["demo", "--rounds", "0"], "invalid value '0' for '--rounds <N>'".to_string()),
        (vec!["demo", "--kexec-every", "0"], "invalid value '0' for '--kexec-every <N>'".to_string()),
        (vec!["demo", "--interval", "9999999999s"], "it must be at most a week".to_string()),
    ];
    for (args, expected) in cases {
        let mut args = args;
        if !args.contains(&"--dir") {
            args.extend(["--dir", arg(&fresh)]);
        }
        let run = imalog(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(&expected), "{args:?}: expected {expected:?} in {}", run.stderr);
    }
    // Nothing was created for the runs that failed.
    assert!(!fresh.exists());
}
