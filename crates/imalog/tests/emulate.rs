//! `imalog emulate` through real system calls on a real FUSE mount. The
//! tests cover the errnos of the staging interfaces, the reader and writer
//! rules, the bytes every list file serves, `--boot-log` on real lists, PCR
//! replay of the saved history, and unmounting on SIGTERM and SIGINT.
//!
//! Each test starts its own emulator on a fresh temporary mount with
//! `--test-hooks` and a control socket. Without `/dev/fuse` or
//! `fusermount3` the tests print a skip message and pass, unless
//! `IMALOG_REQUIRE_ORACLES=1` is set. The same holds for setpriv (or capsh)
//! and evmctl in the tests that use them. The tests need root, because the
//! emulator mounts with `allow_other` and the errno rows need CAP_SYS_ADMIN.
//!
//! Linux sends FUSE_RELEASE after `close` has returned, so a test that
//! closes a list file waits for the model's open state to change before it
//! opens again.

mod common;
#[path = "common/mount.rs"]
mod mount;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use common::{arg, real, record_offsets, replay_json, IBMTSS_PCR10};
use imalog_core::{ascii, binary, Bank, BinaryDecoder, BinaryLayout, ByteOrder, Record};
use imalog_fs::control::Request;
use mount::{fuse_available, probe, Emulator, Identity, ProbeOp};

/// The banks of the emulator's default software TPM, in slot order.
const BANKS: [(Bank, &str); 4] =
    [(Bank::SHA1, "sha1"), (Bank::SHA256, "sha256"), (Bank::SHA384, "sha384"), (Bank::SHA512, "sha512")];

const SHA1_BINARY: &str = "binary_runtime_measurements_sha1";
const SHA1_ASCII: &str = "ascii_runtime_measurements_sha1";
const SHA1_BINARY_STAGED: &str = "binary_runtime_measurements_sha1_staged";
const SHA256_ASCII_STAGED: &str = "ascii_runtime_measurements_sha256_staged";

/// The child side of the probes that open files as other users; it does
/// nothing in a normal test run.
#[test]
fn probe_child() {
    mount::run_probe_child();
}

fn open_write(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

fn open_read_write(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Returns the errno of a failed call, or `None` when it succeeded.
fn errno<T>(result: io::Result<T>) -> Option<i32> {
    result.err().map(|e| e.raw_os_error().expect("error without an errno"))
}

/// Writes `bytes` with one write(2) call and returns the errno, or the
/// count written on success.
fn write_once(file: &File, bytes: &[u8]) -> Result<usize, i32> {
    (&*file).write(bytes).map_err(|e| e.raw_os_error().expect("error without an errno"))
}

fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_text(path: &Path) -> String {
    String::from_utf8(read_all(path)).expect("non-UTF-8 text")
}

/// Reads an open file from offset 0 to EOF.
fn reread(file: &mut File) -> Vec<u8> {
    file.seek(SeekFrom::Start(0)).expect("lseek to 0");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read to EOF");
    bytes
}

/// Runs `open` on a new thread of this process and returns its errno.
fn errno_on_other_thread(path: &Path, open: fn(&Path) -> io::Result<File>) -> Option<i32> {
    let path = path.to_path_buf();
    thread::spawn(move || errno(open(&path))).join().expect("opening thread panicked")
}

fn open_read_only(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Returns the file names in the order securityfs creates them, for the
/// four default banks. Each bank has its ASCII then its binary file, then
/// come the `_staged` set, the links, the counters and `policy`.
fn creation_order() -> Vec<String> {
    let mut names = Vec::new();
    for staged in ["", "_staged"] {
        for (_, bank) in BANKS {
            for format in ["ascii", "binary"] {
                names.push(format!("{format}_runtime_measurements_{bank}{staged}"));
            }
        }
    }
    for name in [
        "binary_runtime_measurements_staged",
        "ascii_runtime_measurements_staged",
        "binary_runtime_measurements",
        "ascii_runtime_measurements",
        "runtime_measurements_count",
        "violations",
        "policy",
    ] {
        names.push(name.to_string());
    }
    names
}

/// Decodes a little-endian binary list with 20-byte template digests.
fn decode_sha1_list(bytes: &[u8]) -> Vec<Record> {
    let layout = BinaryLayout { digest_size: 20, byte_order: ByteOrder::Little };
    BinaryDecoder::new(bytes, layout).collect::<Result<_, _>>().expect("the mount's SHA-1 list does not decode")
}

/// Renders `records` as the binary and ASCII list files of `bank`, with
/// imalog-core's encoders.
fn render(records: &[Record], bank: &Bank) -> (Vec<u8>, Vec<u8>) {
    let mut binary_list = Vec::new();
    let mut ascii_list = Vec::new();
    for record in records {
        let digest = record.bank_digest(bank);
        binary::encode_record(record, &digest, ByteOrder::Little, &mut binary_list);
        ascii::encode_record(record, &digest, &mut ascii_list);
    }
    (binary_list, ascii_list)
}

/// Checks that every original (or `_staged`) file of the mount serves
/// what imalog-core renders from the records of its binary SHA-1 file, and
/// returns the number of records.
fn assert_files_match_core(emulator: &Emulator, suffix: &str, label: &str) -> usize {
    let records = decode_sha1_list(&read_all(&emulator.ima(&format!("{SHA1_BINARY}{suffix}"))));
    for (bank, name) in BANKS {
        let (binary_list, ascii_list) = render(&records, &bank);
        let binary_file = format!("binary_runtime_measurements_{name}{suffix}");
        let ascii_file = format!("ascii_runtime_measurements_{name}{suffix}");
        assert!(
            read_all(&emulator.ima(&binary_file)) == binary_list,
            "{label}: {binary_file} differs from imalog-core"
        );
        assert_eq!(
            read_text(&emulator.ima(&ascii_file)),
            String::from_utf8(ascii_list).unwrap(),
            "{label}: {ascii_file}"
        );
    }
    records.len()
}

// ---------------------------------------------------------------------------
// Errnos of the staging interfaces

#[test]
fn write_open_without_cap_sys_admin_is_eperm() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let ops = [
        ProbeOp::Write(emulator.ima(SHA1_BINARY)),
        ProbeOp::Write(emulator.ima(SHA1_BINARY_STAGED)),
        ProbeOp::Read(emulator.ima(SHA1_ASCII)),
        ProbeOp::Read(emulator.ima("runtime_measurements_count")),
    ];
    let Some(results) = probe(Identity::RootWithoutCapSysAdmin, &ops, &emulator.scratch("")) else { return };
    emulator.wait_for_open_users(0);

    let ascii_len = read_all(&emulator.ima(SHA1_ASCII)).len();
    assert_eq!(results[0], Err(libc::EPERM), "write open of {SHA1_BINARY}");
    assert_eq!(results[1], Err(libc::EPERM), "write open of {SHA1_BINARY_STAGED}");
    assert_eq!(results[2], Ok(ascii_len), "read of {SHA1_ASCII}");
    assert_eq!(results[3], Ok(2), "read of runtime_measurements_count");
}

#[test]
fn non_root_user_gets_eacces() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let names = [SHA1_ASCII, SHA1_BINARY, SHA1_BINARY_STAGED, "runtime_measurements_count", "violations"];
    let mut ops: Vec<ProbeOp> = names.iter().map(|name| ProbeOp::Read(emulator.ima(name))).collect();
    ops.push(ProbeOp::Write(emulator.ima(SHA1_BINARY)));
    let Some(results) = probe(Identity::Nobody, &ops, &emulator.scratch("")) else { return };

    for (op, result) in ops.iter().zip(&results) {
        assert_eq!(*result, Err(libc::EACCES), "{op:?} as uid 65534");
    }
    assert_eq!(emulator.open_users(), 0, "no open reached the model");
}

#[test]
fn file_modes_match_securityfs() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    for name in creation_order() {
        let metadata = fs::symlink_metadata(emulator.ima(&name)).unwrap();
        let expected = match name.as_str() {
            "runtime_measurements_count" | "violations" => 0o100440,
            "policy" => 0o100600,
            _ if metadata.file_type().is_symlink() => 0o120777,
            _ => 0o100660,
        };
        assert_eq!(metadata.mode(), expected, "mode of {name}");
        assert_eq!((metadata.uid(), metadata.gid()), (0, 0), "owner of {name}");
    }
}

#[test]
fn incompatible_opener_is_ebusy() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let reader = File::open(emulator.ima(SHA1_ASCII)).unwrap();
    assert_eq!(errno(open_write(&emulator.ima(SHA1_BINARY_STAGED))), Some(libc::EBUSY));
    drop(reader);
    emulator.wait_for_open_users(0);

    let writer = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_ASCII), open_read_only), Some(libc::EBUSY));
    drop(writer);
}

#[test]
fn reader_overflow_is_enfile() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    emulator.request(&Request::SetReaders { value: i64::MAX });
    assert_eq!(errno(File::open(emulator.ima(SHA1_ASCII))), Some(libc::ENFILE));
    assert_eq!(errno(File::open(emulator.ima(SHA256_ASCII_STAGED))), Some(libc::ENFILE));
    assert_eq!(errno(open_write(&emulator.ima(SHA1_BINARY))), Some(libc::EBUSY), "readers block a writer");

    emulator.request(&Request::SetReaders { value: i64::MAX - 1 });
    let last = File::open(emulator.ima(SHA1_ASCII)).expect("the last reader below the limit");
    assert_eq!(emulator.open_users(), i64::MAX);
    drop(last);
    emulator.wait_for_open_users(i64::MAX - 1);
    emulator.request(&Request::SetReaders { value: 0 });
}

#[test]
fn bad_writes_are_einval() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let original = open_write(&emulator.ima(SHA1_BINARY)).unwrap();
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();

    let too_long_number = format!("{}1\n", "0".repeat(20));
    let too_long_stage = format!("A{}", "\n".repeat(21));
    let cases: [(&File, &[u8], &str); 20] = [
        (&staged, b"\n", "1 byte, shorter than 2"),
        (&original, b"1", "1 byte without newline"),
        (&original, too_long_number.as_bytes(), "22-byte number, longer than 21"),
        (&staged, too_long_stage.as_bytes(), "22 bytes starting with A"),
        (&staged, b"AA", "A without final newline"),
        (&original, b"12", "number without final newline"),
        (&original, b"A\n", "A on an original file"),
        (&original, b"D\n", "D on an original file"),
        (&staged, b"1\n", "N on a _staged file"),
        (&staged, b"AB\n", "A with an extra byte"),
        (&staged, b"A \n", "A with a space"),
        (&staged, b"D\n\n", "D with a second newline"),
        (&staged, b"DD\n", "D with an extra byte"),
        (&original, b"x\n", "not a number"),
        (&original, b"-1\n", "negative number"),
        (&original, b"0x1\n", "hexadecimal number"),
        (&original, b" 1\n", "leading space"),
        (&original, b"1 \n", "trailing space"),
        (&original, b"0\n", "N = 0"),
        (&original, b"+0\n", "N = +0"),
    ];
    assert_eq!((too_long_number.len(), too_long_stage.len()), (22, 22));

    for (file, bytes, label) in cases {
        assert_eq!(write_once(file, bytes), Err(libc::EINVAL), "{label}: {bytes:?}");
    }

    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "1\n", "nothing was deleted");
    let status = emulator.status();
    assert_eq!(status["staged"], 0, "nothing was staged");
}

#[test]
fn number_above_ulong_max_is_erange() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let original = open_write(&emulator.ima(SHA1_BINARY)).unwrap();
    assert_eq!(write_once(&original, b"18446744073709551616\n"), Err(libc::ERANGE));
    assert_eq!(write_once(&original, b"99999999999999999999\n"), Err(libc::ERANGE));
    assert_eq!(write_once(&original, b"+1844674407370955161\n"), Err(libc::ENOENT), "a 19-digit number parses");
    assert_eq!(write_once(&original, b"18446744073709551615\n"), Err(libc::ENOENT), "ULONG_MAX parses");
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "1\n");
}

#[test]
fn invalid_user_buffer_is_efault() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    // An address in the first page, which is never mapped.
    let invalid = 16usize as *const libc::c_void;
    // SAFETY: the kernel checks the user pointer and fails with EFAULT; no
    // memory of this process is read or written.
    let written = unsafe { libc::write(staged.as_raw_fd(), invalid, 2) };
    let error = io::Error::last_os_error();
    assert_eq!(written, -1);
    assert_eq!(error.raw_os_error(), Some(libc::EFAULT));
    assert_eq!(emulator.status()["staged"], 0, "nothing was staged");
    assert_eq!(write_once(&staged, b"A\n"), Ok(2), "the descriptor still works");
}

#[test]
fn stage_twice_is_eexist() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    assert_eq!(write_once(&staged, b"A\n"), Ok(2));
    emulator.measure_new_file("second", b"measured after A\n");
    assert_eq!(write_once(&staged, b"A\n"), Err(libc::EEXIST));
    let status = emulator.status();
    assert_eq!((status["staged"].as_u64(), status["current"].as_u64()), (Some(1), Some(1)));

    assert_eq!(write_once(&staged, b"D\n"), Ok(2));
    assert_eq!(write_once(&staged, b"A\n"), Ok(2), "A works again once D emptied the staged list");
}

#[test]
fn empty_lists_are_enoent() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let original = open_write(&emulator.ima(SHA1_BINARY)).unwrap();
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    // The boot_aggregate is the only record after boot.
    assert_eq!(write_once(&original, b"1\n"), Ok(2));
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "0\n");

    assert_eq!(write_once(&staged, b"A\n"), Err(libc::ENOENT), "A with an empty current list");
    assert_eq!(write_once(&staged, b"D\n"), Err(libc::ENOENT), "D with an empty staged list");
    assert_eq!(write_once(&original, b"1\n"), Err(libc::ENOENT), "N = 1 with no records");

    emulator.measure_new_file("one", b"1\n");
    emulator.measure_new_file("two", b"2\n");
    assert_eq!(write_once(&original, b"3\n"), Err(libc::ENOENT), "N = 3 with 2 records");
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "2\n", "nothing was deleted");
    assert_eq!(write_once(&original, b"2\n"), Ok(2));
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "0\n");
}

#[test]
fn suspended_kernel_is_eacces_and_estale() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    emulator.measure_new_file("before", b"measured before kexec\n");

    // Descriptors held across kexec keep the old instance, which kexec
    // suspended. Its current list is not empty and its staged list is.
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    let original = open_write(&emulator.ima(SHA1_BINARY)).unwrap();
    emulator.kexec();
    assert_eq!(write_once(&staged, b"A\n"), Err(libc::EACCES), "A after suspension");
    assert_eq!(write_once(&original, b"1\n"), Err(libc::ESTALE), "N after suspension");
    assert_eq!(write_once(&staged, b"D\n"), Err(libc::ENOENT), "D with an empty staged list comes first");

    // The new instance is not suspended, and its open rules start idle.
    let status = emulator.status();
    assert_eq!(status["suspended"], false);
    assert_eq!(status["open_users"], 0);
    drop(File::open(emulator.ima(SHA1_ASCII)).expect("a reader of the new instance"));
    drop(staged);
    drop(original);
    emulator.wait_for_open_users(0);

    // Staged records in a suspended instance cannot be deleted.
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    assert_eq!(write_once(&staged, b"A\n"), Ok(2));
    emulator.kexec();
    assert_eq!(write_once(&staged, b"D\n"), Err(libc::ESTALE), "D after suspension");
    assert_eq!(write_once(&staged, b"A\n"), Err(libc::EEXIST), "A with a staged list comes first");
}

#[test]
fn flush_htable_rejects_n_and_reports_enomem() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&["--flush-htable"]);
    let original = open_write(&emulator.ima(SHA1_BINARY)).unwrap();
    let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    assert_eq!(write_once(&original, b"1\n"), Err(libc::EINVAL), "N with ima_flush_htable");

    assert_eq!(write_once(&staged, b"A\n"), Ok(2));
    emulator.request(&Request::FailHtableAllocation);
    assert_eq!(write_once(&staged, b"D\n"), Err(libc::ENOMEM));
    // The staged records were detached before the allocation failed.
    assert_eq!(emulator.status()["staged"], 0);
    assert_eq!(write_once(&staged, b"D\n"), Err(libc::ENOENT));
}

// ---------------------------------------------------------------------------
// Open rules

#[test]
fn reader_blocks_writer() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let readers: Vec<File> = [SHA1_ASCII, SHA1_BINARY, SHA256_ASCII_STAGED]
        .iter()
        .map(|name| File::open(emulator.ima(name)).unwrap())
        .collect();
    assert_eq!(emulator.open_users(), 3);
    assert_eq!(errno(open_write(&emulator.ima(SHA1_BINARY_STAGED))), Some(libc::EBUSY));
    assert_eq!(errno(open_read_write(&emulator.ima(SHA1_BINARY))), Some(libc::EBUSY));
    assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_BINARY), open_write), Some(libc::EBUSY));

    // Close out of order: the middle one, the last, then the first.
    let mut readers: Vec<Option<File>> = readers.into_iter().map(Some).collect();
    for index in [1, 2, 0] {
        readers[index] = None;
    }
    emulator.wait_for_open_users(0);
    drop(open_write(&emulator.ima(SHA1_BINARY_STAGED)).expect("a writer once every reader closed"));
}

#[test]
fn writer_blocks_readers() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let writer = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    assert_eq!(emulator.open_users(), -1);
    assert_eq!(errno(File::open(emulator.ima(SHA1_ASCII))), Some(libc::EBUSY), "the writer's own thread");
    assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_ASCII), open_read_only), Some(libc::EBUSY));
    assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_BINARY), open_write), Some(libc::EBUSY));
    assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_BINARY), open_read_write), Some(libc::EBUSY));

    drop(writer);
    emulator.wait_for_open_users(0);
    drop(File::open(emulator.ima(SHA1_ASCII)).expect("a reader once the writer closed"));
}

#[test]
fn same_thread_opens_second_writer() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    for close_order in [[0, 1], [1, 0]] {
        let mut writers = [
            Some(open_read_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap()),
            Some(open_write(&emulator.ima(SHA1_BINARY)).expect("a second writer on the same thread")),
        ];
        assert_eq!(emulator.open_users(), -1);
        assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_BINARY), open_write), Some(libc::EBUSY));
        assert_eq!(errno_on_other_thread(&emulator.ima(SHA1_ASCII), open_read_only), Some(libc::EBUSY));

        // Both descriptors act on the same lists.
        let staged = writers[0].as_ref().unwrap();
        assert_eq!(write_once(staged, b"A\n"), Ok(2));
        assert_eq!(write_once(staged, b"D\n"), Ok(2));

        for index in close_order {
            writers[index] = None;
        }
        emulator.wait_for_open_users(0);
        drop(File::open(emulator.ima(SHA1_ASCII)).expect("a reader once both writers closed"));
        emulator.wait_for_open_users(0);
        // Something to stage in the next round.
        emulator.measure_new_file(&format!("round-{}", close_order[0]), &close_order.map(|i| i as u8));
    }
}

#[test]
fn release_by_other_thread_resets_to_idle() {
    // The kernel's release trusts whichever task closes a write descriptor:
    // when it is not the writer task, the state goes back to idle even
    // though the writer task still holds a write descriptor.
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let first = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
    let second = open_write(&emulator.ima(SHA1_BINARY)).unwrap();
    thread::spawn(move || drop(second)).join().expect("closing thread panicked");
    emulator.wait_for_open_users(0);
    drop(first);
}

// ---------------------------------------------------------------------------
// Content

/// Measures files, a buffer and a violation into a running emulator.
fn measure_sample(emulator: &Emulator) {
    for index in 0..4 {
        emulator.measure_new_file(&format!("file-{index}"), format!("content {index}\n").repeat(index + 1).as_bytes());
    }
    let control = emulator.control();
    let buffer =
        common::imalog(["measure", "--control", arg(&control), "--buffer", "kernel_version", "--data", "362e31322e30"]);
    assert_eq!(buffer.code, 0, "measure --buffer: {}", buffer.stderr);
    let violation = common::imalog(["measure", "--control", arg(&control), "--violation", "/tmp/open-writers"]);
    assert_eq!(violation.code, 0, "measure --violation: {}", violation.stderr);
}

#[test]
fn measure_reports_each_outcome() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let control = emulator.control();
    let folder = emulator.scratch("a folder");
    fs::create_dir_all(&folder).expect("create a folder");
    let run = common::imalog(["measure", "--control", arg(&control), arg(&folder)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!("imalog: {}: not a regular file\nimalog: 1 measurement(s) failed\n", folder.display())
    );

    let run = common::imalog(["measure", "--control", arg(&control), "--violation", "/tmp/new\nline"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_text(), "violation /tmp/new\\nline\n");
    assert_eq!(read_text(&emulator.ima("violations")), "1\n");
}

#[test]
fn mount_matches_core_rendering() {
    if !fuse_available() {
        return;
    }
    let configurations: [&[&str]; 3] =
        [&[], &["--template", "ima", "--ima-hash", "sha1"], &["--template", "d-ng|n-ng|sig", "--ima-hash", "sha512"]];
    for extra in configurations {
        let emulator = Emulator::start(extra);
        measure_sample(&emulator);
        let label = format!("{extra:?}");
        // boot_aggregate, 4 files, the buffer and the violation.
        assert_eq!(assert_files_match_core(&emulator, "", &label), 7, "{label}: records");
        assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "7\n");
        assert_eq!(read_text(&emulator.ima("violations")), "1\n");

        let original = read_all(&emulator.ima(SHA1_BINARY));
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("echo A > '{}'", emulator.ima("ascii_runtime_measurements_staged").display()))
            .status()
            .expect("failed to run sh");
        assert!(status.success(), "{label}: echo A > ascii_runtime_measurements_staged");
        emulator.wait_for_open_users(0);
        assert_eq!(read_all(&emulator.ima(SHA1_BINARY_STAGED)), original, "{label}: staged list");
        assert_eq!(assert_files_match_core(&emulator, "_staged", &label), 7, "{label}: staged records");
        assert_eq!(assert_files_match_core(&emulator, "", &label), 0, "{label}: current records after A");
    }
}

#[test]
fn partial_reads_reassemble() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&["--boot-log", arg(&real("ibmtss/sha1.log"))]);
    for name in [SHA1_BINARY, "ascii_runtime_measurements_sha512"] {
        let path = emulator.ima(name);
        let whole = read_all(&path);
        assert!(whole.len() > 3 * 4096, "{name} is only {} bytes", whole.len());

        for chunk in [1usize, 7, 4096] {
            let mut file = File::open(&path).unwrap();
            let mut buffer = vec![0u8; chunk];
            let mut joined = Vec::new();
            loop {
                let read = file.read(&mut buffer).unwrap();
                if read == 0 {
                    break;
                }
                assert!(read <= chunk);
                joined.extend_from_slice(&buffer[..read]);
            }
            assert!(joined == whole, "{name}: reads of {chunk} bytes give {} of {} bytes", joined.len(), whole.len());
        }

        let mut file = File::open(&path).unwrap();
        for offset in [0, 1, 13, 4095, 4096, whole.len() / 2, whole.len() - 1, whole.len(), whole.len() + 100] {
            file.seek(SeekFrom::Start(offset as u64)).unwrap();
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).unwrap();
            let expected = whole.get(offset..).unwrap_or_default();
            assert!(rest == expected, "{name}: read after lseek to {offset}");
        }

        // A short read, a seek back into the bytes already read, then the rest.
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut head = [0u8; 7];
        file.read_exact(&mut head).unwrap();
        assert_eq!(head, whole[..7]);
        file.seek(SeekFrom::Start(3)).unwrap();
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).unwrap();
        assert!(rest == whole[3..], "{name}: read after seeking back to 3");
        drop(file);
        emulator.wait_for_open_users(0);
    }
}

#[test]
fn files_stat_size_zero_and_cat_reads_all() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    measure_sample(&emulator);
    for name in creation_order() {
        let path = emulator.ima(&name);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "size of {name}");
        if name == "policy" {
            continue;
        }
        let output = Command::new("cat").arg(&path).output().expect("failed to run cat");
        assert!(output.status.success(), "cat {name}: {}", String::from_utf8_lossy(&output.stderr));
        emulator.wait_for_open_users(0);
        assert!(output.stdout == read_all(&path), "cat {name} differs from read(2)");
        let empty = name.ends_with("staged");
        assert_eq!(output.stdout.is_empty(), empty, "{name}: is the output empty");
        emulator.wait_for_open_users(0);
    }
}

#[test]
fn open_descriptor_sees_new_records() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let path = emulator.ima(SHA1_ASCII);
    let mut file = File::open(&path).unwrap();
    let mut first = Vec::new();
    file.read_to_end(&mut first).unwrap();
    assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 1, "the boot_aggregate line");

    let measured = emulator.measure_new_file("later", b"measured while a reader is open\n");
    let mut more = Vec::new();
    file.read_to_end(&mut more).unwrap();
    let line = String::from_utf8(more.clone()).unwrap();
    assert!(line.starts_with("10 "), "new line: {line:?}");
    assert!(line.ends_with(&format!(" {}\n", measured.display())), "new line: {line:?}");
    let mut empty = Vec::new();
    assert_eq!(file.read_to_end(&mut empty).unwrap(), 0, "EOF again");

    let whole = reread(&mut file);
    assert_eq!(whole, [first, more].concat());
}

#[test]
fn staged_files_empty_until_stage() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    measure_sample(&emulator);
    let staged_names: Vec<String> = creation_order().into_iter().filter(|name| name.contains("_staged")).collect();
    assert_eq!(staged_names.len(), 10);
    for name in &staged_names {
        assert_eq!(read_all(&emulator.ima(name)), b"", "{name} before A");
    }
    let original: Vec<Vec<u8>> =
        BANKS.iter().map(|(_, bank)| read_all(&emulator.ima(&format!("ascii_runtime_measurements_{bank}")))).collect();
    emulator.wait_for_open_users(0);

    let mut staged = open_read_write(&emulator.ima(SHA256_ASCII_STAGED)).unwrap();
    assert_eq!(write_once(&staged, b"A\n"), Ok(2));
    assert_eq!(reread(&mut staged), original[1], "the writer reads its own O_RDWR descriptor");
    drop(staged);
    emulator.wait_for_open_users(0);

    for ((_, bank), before) in BANKS.iter().zip(&original) {
        let staged = read_all(&emulator.ima(&format!("ascii_runtime_measurements_{bank}_staged")));
        assert!(staged == *before, "{bank}: staged list after A");
        assert_eq!(read_all(&emulator.ima(&format!("ascii_runtime_measurements_{bank}"))), b"", "{bank} after A");
    }
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "0\n");
}

#[test]
fn symlinks_resolve() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let links = [
        ("binary_runtime_measurements", SHA1_BINARY),
        ("ascii_runtime_measurements", SHA1_ASCII),
        ("binary_runtime_measurements_staged", SHA1_BINARY_STAGED),
        ("ascii_runtime_measurements_staged", "ascii_runtime_measurements_sha1_staged"),
    ];
    for (link, target) in links {
        assert_eq!(fs::read_link(emulator.ima(link)).unwrap(), PathBuf::from(target), "{link}");
        assert_eq!(read_all(&emulator.ima(link)), read_all(&emulator.ima(target)), "{link}");
    }
    let top = emulator.mount_point().join("ima");
    assert_eq!(fs::read_link(&top).unwrap(), PathBuf::from("integrity/ima"));
    assert_eq!(read_all(&top.join("ascii_runtime_measurements")), read_all(&emulator.ima(SHA1_ASCII)));
}

#[test]
fn readdir_lists_creation_order() {
    if !fuse_available() {
        return;
    }
    let emulator = Emulator::start(&[]);
    let names: Vec<String> = fs::read_dir(emulator.ima(""))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, creation_order());
}

// ---------------------------------------------------------------------------
// --boot-log

/// Starts an emulator on a logged list and returns it.
fn boot_from(list: &str, extra: &[&str]) -> Emulator {
    let path = real(list);
    let mut args = vec!["--boot-log", arg(&path)];
    args.extend_from_slice(extra);
    Emulator::start(&args)
}

fn assert_pcr10(emulator: &Emulator, expected: &[(&str, &str)]) {
    let values = emulator.pcr10();
    for (bank, value) in expected {
        let found = values.iter().find(|(b, _)| b == bank).map(|(_, v)| v.as_str());
        assert_eq!(found, Some(*value), "PCR 10 in bank {bank}");
    }
}

#[test]
fn boot_log_ibmtss_sha1() {
    if !fuse_available() {
        return;
    }
    let emulator = boot_from("ibmtss/sha1.log", &[]);
    for (_, bank) in BANKS {
        let logged = read_all(&real(&format!("ibmtss/{bank}.log")));
        let served = read_all(&emulator.ima(&format!("binary_runtime_measurements_{bank}")));
        assert!(served == logged, "binary_runtime_measurements_{bank} differs from ibmtss/{bank}.log");
    }
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "362\n");
    assert_pcr10(&emulator, &IBMTSS_PCR10);
}

#[test]
fn boot_log_ibmtss_sha256() {
    if !fuse_available() {
        return;
    }
    let emulator = boot_from("ibmtss/sha256.log", &["--input-bank", "sha256"]);
    for (_, bank) in BANKS {
        let logged = read_all(&real(&format!("ibmtss/{bank}.log")));
        let served = read_all(&emulator.ima(&format!("binary_runtime_measurements_{bank}")));
        assert!(served == logged, "binary_runtime_measurements_{bank} differs from ibmtss/{bank}.log");
    }
    assert_pcr10(&emulator, &IBMTSS_PCR10);
}

#[test]
fn boot_log_embrave_binary() {
    if !fuse_available() {
        return;
    }
    let list = "embrave/37d16c0f/binary_runtime_measurements";
    let emulator = boot_from(list, &[]);
    assert!(read_all(&emulator.ima("binary_runtime_measurements")) == read_all(&real(list)));
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "922\n");
    assert_pcr10(
        &emulator,
        &[
            ("sha1", "f38695bbd9479953543813fb13bb88235440504e"),
            ("sha256", "0d204f41041c48fe0d2e1ef0a6c308412c27304a68519d3ce3568a692d3fea83"),
        ],
    );
}

#[test]
fn boot_log_keylime_ima_template() {
    if !fuse_available() {
        return;
    }
    let list = "keylime/ascii_runtime_measurements_ima";
    let emulator = boot_from(list, &["--template", "ima", "--ima-hash", "sha1"]);
    assert_eq!(read_text(&emulator.ima("ascii_runtime_measurements")), read_text(&real(list)));
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "867\n");
    assert_eq!(read_text(&emulator.ima("violations")), "9\n");
    // PCR 10 from a replay of this list by an implementation other than imalog.
    assert_pcr10(
        &emulator,
        &[
            ("sha1", "93aacc9ec455c429c1a2d291650e40e7655565d8"),
            ("sha256", "48fe08ab3cfdb485e61ac6cc6d4c40a09eef0dce7ddfc93dce6f18a955fd61d4"),
        ],
    );
}

#[test]
fn boot_log_global_trust_authority_sha256() {
    if !fuse_available() {
        return;
    }
    let list = "global-trust-authority/ima.bin";
    let emulator = boot_from(list, &[]);
    assert!(read_all(&emulator.ima("binary_runtime_measurements_sha256")) == read_all(&real(list)));
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "2\n");
    assert_pcr10(&emulator, &[("sha256", "8c4fb94d4d15f6069aad176dace62a2ec0720ae864473d6419978da5b168ce11")]);
}

// ---------------------------------------------------------------------------
// PCR replay of the history

/// Writes evmctl's PCR file for one bank: PCR-00 to PCR-09 zero, then PCR-10.
fn write_evmctl_pcrs(path: &Path, pcr10: &str) {
    let mut text = String::new();
    for pcr in 0..10 {
        text.push_str(&format!("PCR-{pcr:02}: {}\n", "0".repeat(pcr10.len())));
    }
    text.push_str(&format!("PCR-10: {pcr10}\n"));
    fs::write(path, text).expect("failed to write the evmctl PCR file");
}

/// Checks that the saved history followed by the live SHA-1 list
/// reproduces PCR 10 of every bank, with `imalog replay` and, when
/// `evmctl` is given, with evmctl in sha1 and sha256.
fn assert_history_reproduces_pcrs(emulator: &Emulator, history: &[u8], evmctl: Option<&Path>, label: &str) {
    let mut full = history.to_vec();
    full.extend_from_slice(&read_all(&emulator.ima(SHA1_BINARY)));
    emulator.wait_for_open_users(0);
    let list = emulator.scratch("history.bin");
    fs::write(&list, &full).expect("failed to write the history");
    let (offsets, end) = record_offsets(&full, 20);
    assert_eq!(end, full.len(), "{label}: the history ends inside a record");

    let tpm = emulator.pcr10();
    assert_eq!(tpm.len(), 4, "{label}: banks of the TPM");
    let report = replay_json(&list, &["--bank", "sha1,sha256,sha384,sha512"]);
    assert_eq!(report["records"], offsets.len(), "{label}: records replayed");
    for (bank, value) in &tpm {
        assert_eq!(common::json_pcr10(&report, bank), *value, "{label}: PCR 10 in bank {bank}");
    }

    let Some(evmctl) = evmctl else { return };
    for bank in ["sha1", "sha256"] {
        let value = &tpm.iter().find(|(b, _)| b == bank).expect("bank in the TPM").1;
        let pcr_file = emulator.scratch(&format!("pcrs-{bank}.txt"));
        write_evmctl_pcrs(&pcr_file, value);
        let output = Command::new(evmctl)
            .args(["-v", "ima_measurement", "--ignore-violations", &format!("--verify-bank={bank}"), "--pcrs"])
            .arg(format!("{bank},{}", arg(&pcr_file)))
            .arg(&list)
            .output()
            .expect("failed to start evmctl");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.status.code(), Some(0), "{label}: evmctl {bank}\n{text}");
        let success = format!("{bank} PCR-10: succeed at entry {}", offsets.len());
        assert!(text.lines().any(|line| line == success), "{label}: evmctl {bank} lacks `{success}`\n{text}");
    }
}

#[test]
fn history_replay_matches_pcrs() {
    if !fuse_available() {
        return;
    }
    let evmctl = mount::find_tool("evmctl");
    if !mount::available_or_skip(evmctl.is_some(), "evmctl is not on PATH (install ima-evm-utils)") {
        eprintln!("history_replay_matches_pcrs: checking with imalog replay only");
    }
    let evmctl = evmctl.as_deref();
    let emulator = Emulator::start(&[]);
    let mut history = Vec::new();

    measure_sample(&emulator);
    assert_history_reproduces_pcrs(&emulator, &history, evmctl, "after measurements");

    // Export and delete as an agent does, on one read-write descriptor:
    // stage, read the staged records, save them, delete them.
    {
        let mut staged = open_read_write(&emulator.ima("binary_runtime_measurements_staged")).unwrap();
        assert_eq!(write_once(&staged, b"A\n"), Ok(2));
        let chunk = reread(&mut staged);
        assert_eq!(record_offsets(&chunk, 20).0.len(), 7, "staged records");
        history.extend_from_slice(&chunk);
        assert_eq!(write_once(&staged, b"D\n"), Ok(2));
    }
    emulator.wait_for_open_users(0);
    assert_history_reproduces_pcrs(&emulator, &history, evmctl, "after A and D");

    // Trim: read the current list, save its first two records, delete them.
    emulator.measure_new_file("after-delete-1", b"one\n");
    emulator.measure_new_file("after-delete-2", b"two\n");
    emulator.measure_new_file("after-delete-3", b"three\n");
    {
        let mut original = open_read_write(&emulator.ima("binary_runtime_measurements")).unwrap();
        let current = reread(&mut original);
        let (offsets, _) = record_offsets(&current, 20);
        assert_eq!(offsets.len(), 3, "current records before N");
        history.extend_from_slice(&current[..offsets[2]]);
        assert_eq!(write_once(&original, b"2\n"), Ok(2));
    }
    emulator.wait_for_open_users(0);
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "1\n");
    assert_history_reproduces_pcrs(&emulator, &history, evmctl, "after N");

    // Stage without deleting, then kexec: the staged records come back at
    // the head of the new kernel's list, with kexec_load, kexec_execute and
    // a new boot_aggregate.
    emulator.measure_new_file("before-kexec", b"before kexec\n");
    {
        let staged = open_write(&emulator.ima(SHA1_BINARY_STAGED)).unwrap();
        assert_eq!(write_once(&staged, b"A\n"), Ok(2));
    }
    emulator.wait_for_open_users(0);
    let report = emulator.kexec();
    assert!(report.starts_with("kexec: restored 4 records"), "kexec output: {report}");
    emulator.measure_new_file("after-kexec", b"after kexec\n");
    assert_eq!(read_text(&emulator.ima("runtime_measurements_count")), "6\n");
    assert_history_reproduces_pcrs(&emulator, &history, evmctl, "after kexec");
}

// ---------------------------------------------------------------------------
// Lifecycle

fn assert_signal_unmounts(signal: i32) {
    let mut emulator = Emulator::start(&[]);
    let mount_point = emulator.mount_point();
    assert!(mount::is_mounted(&mount_point));
    let status = emulator.stop(signal);
    assert_eq!(status.code(), Some(0), "exit status after signal {signal}\n{}", emulator.log());
    assert!(!mount::is_mounted(&mount_point), "still mounted after signal {signal}");
    assert_eq!(fs::read_dir(&mount_point).unwrap().count(), 0, "mount point not empty after signal {signal}");
    assert!(!emulator.control().exists(), "control socket left after signal {signal}");
}

#[test]
fn sigterm_unmounts() {
    if !fuse_available() {
        return;
    }
    assert_signal_unmounts(libc::SIGTERM);
}

#[test]
fn sigint_unmounts() {
    if !fuse_available() {
        return;
    }
    assert_signal_unmounts(libc::SIGINT);
}
