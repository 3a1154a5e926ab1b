//! The errno of every rule of the staging interfaces, driven through the
//! list file API, with checks that a refused command or measurement changed
//! nothing, and that the checks run in the kernel's order when one write
//! breaks several rules. Also the open and release rules, number parsing,
//! the effects of `A`, `D` and `N`, and seq_file reads.

mod common;

use std::sync::Arc;

use common::*;
use imalog_core::{Bank, Digest, HashAlgorithm, Template};
use imalog_kernel::{Appended, Errno, EventData, KernelConfig, OpenSnapshot};

const ORIGINAL: &str = "binary_runtime_measurements_sha256";
const STAGED: &str = "binary_runtime_measurements_sha256_staged";
const ASCII_ORIGINAL: &str = "ascii_runtime_measurements_sha1";
const ASCII_STAGED: &str = "ascii_runtime_measurements_sha1_staged";

const IDLE: OpenSnapshot = OpenSnapshot { users: 0, writer_task: None, extra_writes: 0 };

/// Boots a default kernel and measures `rec-0` to `rec-4` after its
/// `boot_aggregate`.
fn kernel() -> imalog_kernel::Ima {
    let ima = boot_default();
    measure_many(&ima, "rec", 5);
    ima
}

fn flush_config() -> KernelConfig {
    KernelConfig { flush_htable: true, ..KernelConfig::default() }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|index| format!("{prefix}-{index}")).collect()
}

fn with_boot_aggregate(mut rest: Vec<String>) -> Vec<String> {
    rest.insert(0, "boot_aggregate".to_string());
    rest
}

// EPERM: write open without CAP_SYS_ADMIN.

#[test]
fn write_open_without_cap_is_eperm() {
    let ima = kernel();

    let result = ima.open_list(file(&ima, ORIGINAL), true, UNPRIVILEGED);

    assert_eq!(result.err(), Some(Errno::Eperm));
    assert_eq!(ima.open_state(), IDLE);
}

#[test]
fn read_open_without_cap_is_allowed() {
    let ima = kernel();

    let result = ima.open_list(file(&ima, ORIGINAL), false, UNPRIVILEGED);

    assert!(result.is_ok());
    assert_eq!(ima.open_state().users, 1);
}

#[test]
fn eperm_checked_before_ebusy() {
    let ima = kernel();
    let _reader = ima.open_list(file(&ima, ORIGINAL), false, OTHER).unwrap();

    let result = ima.open_list(file(&ima, STAGED), true, UNPRIVILEGED);

    assert_eq!(result.err(), Some(Errno::Eperm));
    assert_eq!(ima.open_state(), OpenSnapshot { users: 1, writer_task: None, extra_writes: 0 });
}

// EBUSY: incompatible opener present.

#[test]
fn reader_blocks_writer() {
    let ima = kernel();
    let _reader = ima.open_list(file(&ima, ASCII_ORIGINAL), false, OTHER).unwrap();

    let result = ima.open_list(file(&ima, STAGED), true, ROOT);

    assert_eq!(result.err(), Some(Errno::Ebusy));
    assert_eq!(ima.open_state(), OpenSnapshot { users: 1, writer_task: None, extra_writes: 0 });
}

#[test]
fn writer_blocks_reader() {
    let ima = kernel();
    let _writer = open_write(&ima, STAGED);

    let result = ima.open_list(file(&ima, ASCII_ORIGINAL), false, OTHER);

    assert_eq!(result.err(), Some(Errno::Ebusy));
    assert_eq!(ima.open_state(), OpenSnapshot { users: -1, writer_task: Some(ROOT.task), extra_writes: 0 });
}

#[test]
fn writer_blocks_other_writer() {
    let ima = kernel();
    let _writer = open_write(&ima, STAGED);

    let result = ima.open_list(file(&ima, ORIGINAL), true, OTHER);

    assert_eq!(result.err(), Some(Errno::Ebusy));
    assert_eq!(ima.open_state(), OpenSnapshot { users: -1, writer_task: Some(ROOT.task), extra_writes: 0 });
}

#[test]
fn writer_task_read_only_open_is_ebusy() {
    let ima = kernel();
    let _writer = open_write(&ima, STAGED);

    let result = ima.open_list(file(&ima, ORIGINAL), false, ROOT);

    assert_eq!(result.err(), Some(Errno::Ebusy));
    assert_eq!(ima.open_state(), OpenSnapshot { users: -1, writer_task: Some(ROOT.task), extra_writes: 0 });
}

#[test]
fn writer_reads_own_descriptor() {
    let ima = kernel();
    let writer = open_write(&ima, ORIGINAL);

    let bytes = ima.read_list(&writer, 0, 1 << 20);

    assert_eq!(bytes, expected_rendering(&ima, file(&ima, ORIGINAL), &current(&ima)));
}

// ENFILE: the reader count would overflow.

#[test]
fn reader_count_overflow_is_enfile() {
    let ima = kernel();
    ima.mediator().set_readers_for_test(i64::MAX);

    let result = ima.open_list(file(&ima, ORIGINAL), false, ROOT);

    assert_eq!(result.err(), Some(Errno::Enfile));
    assert_eq!(ima.open_state().users, i64::MAX);
}

#[test]
fn reader_count_below_limit_opens() {
    let ima = kernel();
    ima.mediator().set_readers_for_test(i64::MAX - 1);

    let result = ima.open_list(file(&ima, ORIGINAL), false, ROOT);

    assert!(result.is_ok());
    assert_eq!(ima.open_state().users, i64::MAX);
}

#[test]
fn writer_at_reader_limit_is_ebusy() {
    let ima = kernel();
    ima.mediator().set_readers_for_test(i64::MAX);

    let result = ima.open_list(file(&ima, ORIGINAL), true, ROOT);

    assert_eq!(result.err(), Some(Errno::Ebusy));
}

// Open and release rules.

#[test]
fn same_task_opens_second_writer() {
    let ima = kernel();
    let staged = open_write(&ima, STAGED);

    let original = ima.open_list(file(&ima, ORIGINAL), true, ROOT);

    assert!(original.is_ok());
    assert_eq!(ima.open_state(), OpenSnapshot { users: -1, writer_task: Some(ROOT.task), extra_writes: 1 });
    let original = original.unwrap();
    assert_eq!(ima.write_list(&staged, b"A\n"), Ok(2));
    measure_many(&ima, "after", 2);
    assert_eq!(ima.write_list(&original, b"1\n"), Ok(2));
    assert_eq!(current_names(&ima), names("after", 1..2));
}

#[test]
fn release_order_restores_idle() {
    let ima = kernel();
    let first = open_write(&ima, STAGED);
    let second = open_write(&ima, ORIGINAL);

    ima.release_list(first, ROOT.task);
    let after_first = ima.open_state();
    ima.release_list(second, ROOT.task);

    assert_eq!(after_first, OpenSnapshot { users: -1, writer_task: Some(ROOT.task), extra_writes: 0 });
    assert_eq!(ima.open_state(), IDLE);
    assert!(ima.open_list(file(&ima, ORIGINAL), false, OTHER).is_ok());
}

#[test]
fn release_by_other_task_resets_to_idle() {
    let ima = kernel();
    let first = open_write(&ima, STAGED);
    let _second = open_write(&ima, ORIGINAL);

    ima.release_list(first, OTHER.task);

    // The literal algorithm: users and writer_task reset, extra_writes kept,
    // although a write descriptor is still open.
    assert_eq!(ima.open_state(), OpenSnapshot { users: 0, writer_task: None, extra_writes: 1 });
    assert!(ima.open_list(file(&ima, ORIGINAL), false, OTHER).is_ok());
    assert_eq!(ima.open_state().users, 1);
}

#[test]
fn reader_release_restores_idle() {
    let ima = kernel();
    let first = open_read(&ima, ORIGINAL);
    let second = open_read(&ima, ASCII_STAGED);

    ima.release_list(first, ROOT.task);
    let after_first = ima.open_state();
    ima.release_list(second, OTHER.task);

    assert_eq!(after_first.users, 1);
    assert_eq!(ima.open_state(), IDLE);
    assert!(ima.open_list(file(&ima, STAGED), true, OTHER).is_ok());
}

// EACCES from the VFS, and which files exist, with and without staging.

#[test]
fn default_files_and_links() {
    let ima = kernel();

    let modes: Vec<u32> = ima.list_files().iter().map(|f| f.mode).collect();
    let links: Vec<(String, String)> = ima.list_links().into_iter().map(|l| (l.name, l.target)).collect();

    assert_eq!(modes, vec![0o660; 16]);
    assert_eq!(
        links,
        [
            ("binary_runtime_measurements_staged", "binary_runtime_measurements_sha1_staged"),
            ("ascii_runtime_measurements_staged", "ascii_runtime_measurements_sha1_staged"),
            ("binary_runtime_measurements", "binary_runtime_measurements_sha1"),
            ("ascii_runtime_measurements", "ascii_runtime_measurements_sha1"),
        ]
        .map(|(name, target)| (name.to_string(), target.to_string()))
        .to_vec()
    );
}

#[test]
fn staging_off_has_no_staged_files() {
    let config = KernelConfig { staging: false, n_on_original_without_staging: false, ..KernelConfig::default() };
    let ima = boot(config);

    let staged_files: Vec<String> = ima.list_files().into_iter().filter(|f| f.file.staged).map(|f| f.name).collect();
    let staged_links: Vec<String> =
        ima.list_links().into_iter().map(|l| l.name).filter(|name| name.contains("staged")).collect();

    assert_eq!(staged_files, Vec::<String>::new());
    assert_eq!(staged_links, Vec::<String>::new());
    assert_eq!(ima.lookup_file(STAGED), None);
}

#[test]
fn staging_off_original_write_is_eacces() {
    let config = KernelConfig { staging: false, n_on_original_without_staging: false, ..KernelConfig::default() };
    let ima = boot(config);
    measure_many(&ima, "rec", 2);

    let modes: Vec<u32> = ima.list_files().iter().map(|f| f.mode).collect();
    let as_root = ima.open_list(file(&ima, ORIGINAL), true, ROOT);
    let as_user = ima.open_list(file(&ima, ORIGINAL), true, UNPRIVILEGED);

    assert_eq!(modes, vec![0o440; 8]);
    assert_eq!(as_root.err(), Some(Errno::Eacces));
    assert_eq!(as_user.err(), Some(Errno::Eacces), "the VFS permission check comes before EPERM");
    assert_eq!(ima.open_state(), IDLE);
}

#[test]
fn staging_off_staged_open_is_enoent() {
    let config = KernelConfig { staging: false, ..KernelConfig::default() };
    let ima = boot(config);
    let staged = imalog_kernel::ListFile { staged: true, ..file(&ima, ORIGINAL) };

    let write = ima.open_list(staged, true, ROOT);
    let read = ima.open_list(staged, false, ROOT);

    assert_eq!(write.err(), Some(Errno::Enoent));
    assert_eq!(read.err(), Some(Errno::Enoent));
    assert_eq!(ima.open_state(), IDLE);
}

#[test]
fn unexported_slot_open_is_enoent() {
    // With a SHA-1-only TPM and the sha256 IMA hash, slot 1 contains the IMA
    // hash digests and has no file.
    let tpm = booted_tpm(&[Bank::SHA1]);
    let ima = imalog_kernel::Ima::cold_boot(KernelConfig::default(), Some(Box::new(tpm))).unwrap();
    let hidden = imalog_kernel::ListFile { slot: 1, ..file(&ima, "binary_runtime_measurements_sha1") };

    let result = ima.open_list(hidden, false, ROOT);

    assert_eq!(result.err(), Some(Errno::Enoent));
}

#[test]
fn staging_off_count_on_original_works() {
    let ima = boot(KernelConfig { staging: false, ..KernelConfig::default() });
    measure_many(&ima, "rec", 3);

    let modes: Vec<u32> = ima.list_files().iter().map(|f| f.mode).collect();
    let result = write_command(&ima, ORIGINAL, b"2\n");

    assert_eq!(modes, vec![0o660; 8]);
    assert_eq!(result, Ok(2));
    assert_eq!(current_names(&ima), names("rec", 1..3));
    assert_eq!(ima.count_file(), "2\n");
}

// EINVAL: write length, final newline, wrong file, extra bytes.

#[test]
fn write_shorter_than_two_bytes_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);
    let handle = open_write(&ima, STAGED);

    assert_eq!(ima.write_list(&handle, b"\n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b""), Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn write_over_21_bytes_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"1                           \n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn write_without_newline_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let stage = write_command(&ima, STAGED, b"A ");
    let delete = write_command(&ima, STAGED, b"DD");

    assert_eq!(stage, Err(Errno::Einval));
    assert_eq!(delete, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn stage_on_original_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"A\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn delete_on_original_is_einval() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    let before = snapshot(&ima);

    let result = write_command(&ima, ASCII_ORIGINAL, b"D\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_on_staged_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ASCII_STAGED, b"1\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn stage_with_extra_bytes_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);
    let handle = open_write(&ima, STAGED);

    assert_eq!(ima.write_list(&handle, b"AA\n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b"A \n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b"A\n\n"), Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn delete_with_extra_bytes_is_einval() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    let before = snapshot(&ima);
    let handle = open_write(&ima, STAGED);

    assert_eq!(ima.write_list(&handle, b"DA\n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b"D\n\n"), Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn unknown_command_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let staged = write_command(&ima, STAGED, b"X\n");
    let original = write_command(&ima, ORIGINAL, b"X\n");

    assert_eq!(staged, Err(Errno::Einval));
    assert_eq!(original, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn bad_number_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);
    let handle = open_write(&ima, ORIGINAL);

    assert_eq!(ima.write_list(&handle, b" 5\n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b"5 \n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b"+\n"), Err(Errno::Einval));
    assert_eq!(ima.write_list(&handle, b"5\n\n\n"), Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_with_flush_htable_is_einval() {
    let ima = boot(flush_config());
    measure_many(&ima, "rec", 5);
    let before = snapshot(&ima);

    let valid = write_command(&ima, ORIGINAL, b"1\n");
    let too_many = write_command(&ima, ORIGINAL, b"99\n");

    assert_eq!(valid, Err(Errno::Einval));
    assert_eq!(too_many, Err(Errno::Einval), "the flush check comes before ENOENT");
    assert_unchanged(&ima, &before);
}

#[test]
fn read_only_descriptor_write_is_ebadf() {
    let ima = kernel();
    let before = snapshot(&ima);
    let reader = open_read(&ima, STAGED);

    assert_eq!(ima.write_list(&reader, b"A\n"), Err(Errno::Ebadf));
    assert_unchanged(&ima, &before);
}

// Number parsing (kstrtoul, base 10) through the original file, with the
// ERANGE rows.

#[test]
fn count_with_plus_sign_deletes() {
    let ima = kernel();

    let result = write_command(&ima, ORIGINAL, b"+5\n");

    assert_eq!(result, Ok(3));
    assert_eq!(current_names(&ima), names("rec", 4..5));
}

#[test]
fn count_with_second_newline_deletes() {
    let ima = kernel();

    let result = write_command(&ima, ORIGINAL, b"5\n\n");

    assert_eq!(result, Ok(3));
    assert_eq!(current_names(&ima), names("rec", 4..5));
}

#[test]
fn count_with_leading_zeros_deletes() {
    let ima = kernel();

    let result = write_command(&ima, ORIGINAL, b"002\n");

    assert_eq!(result, Ok(4));
    assert_eq!(current_names(&ima), names("rec", 1..5));
}

#[test]
fn count_zero_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"0\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_negative_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"-1\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_above_ulong_max_is_erange() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"18446744073709551616\n");

    assert_eq!(result, Err(Errno::Erange));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_of_20_nines_is_erange() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"99999999999999999999\n");

    assert_eq!(result, Err(Errno::Erange));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_of_21_digits_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);
    let command = b"100000000000000000000\n";

    let result = write_command(&ima, ORIGINAL, command);

    assert_eq!(command.len(), 22);
    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_in_hex_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"0x10\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_without_newline_is_einval() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"12");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_beyond_list_is_enoent() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"7\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_ulong_max_is_enoent() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"18446744073709551615\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_of_whole_list_empties_it() {
    let ima = kernel();

    let result = write_command(&ima, ORIGINAL, b"6\n");

    assert_eq!(result, Ok(2));
    assert_eq!(current_names(&ima), Vec::<String>::new());
    assert_eq!(ima.count_file(), "0\n");
    assert_eq!(write_command(&ima, ORIGINAL, b"1\n"), Err(Errno::Enoent));
}

#[test]
fn append_after_emptying_list() {
    let ima = kernel();
    write_command(&ima, ORIGINAL, b"6\n").unwrap();

    measure(&ima, "next").unwrap();

    assert_eq!(current_names(&ima), vec!["next".to_string()]);
    assert_eq!(ima.render_file(file(&ima, ORIGINAL)), expected_rendering(&ima, file(&ima, ORIGINAL), &current(&ima)));
}

#[test]
fn writer_reads_after_own_count() {
    let ima = kernel();
    let writer = open_write(&ima, ORIGINAL);
    let entries = current(&ima);
    let first_two = expected_rendering(&ima, file(&ima, ORIGINAL), &entries[..2]);
    let head = ima.read_list(&writer, 0, first_two.len() + 5);

    ima.write_list(&writer, b"3\n").unwrap();
    let rest = ima.read_list(&writer, head.len() as u64, 1 << 20);

    // seq_file resumes by record index: the rest of record 2, then the
    // records after index 3 of the shortened list.
    let third = expected_rendering(&ima, file(&ima, ORIGINAL), &entries[2..3]);
    let mut expected = third[5..].to_vec();
    expected.extend(expected_rendering(&ima, file(&ima, ORIGINAL), &entries[6..]));
    assert_eq!(rest, expected);
}

// EFAULT: copying the written bytes fails.

#[test]
fn faulting_copy_is_efault() {
    let ima = kernel();
    let before = snapshot(&ima);
    let handle = open_write(&ima, STAGED);

    assert_eq!(ima.write_list_faulting(&handle, 2), Err(Errno::Efault));
    assert_eq!(ima.write_list_faulting(&handle, 21), Err(Errno::Efault));
    assert_unchanged(&ima, &before);
}

#[test]
fn faulting_copy_checks_length_first() {
    let ima = kernel();
    let before = snapshot(&ima);
    let handle = open_write(&ima, ORIGINAL);

    assert_eq!(ima.write_list_faulting(&handle, 1), Err(Errno::Einval));
    assert_eq!(ima.write_list_faulting(&handle, 22), Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

// EEXIST: `A` while the staged list is not empty.

#[test]
fn stage_with_staged_list_is_eexist() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure_many(&ima, "after", 2);
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Err(Errno::Eexist));
    assert_unchanged(&ima, &before);
}

#[test]
fn stage_eexist_before_enoent() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(before.counters.current, 0);
    assert_eq!(result, Err(Errno::Eexist));
    assert_unchanged(&ima, &before);
}

#[test]
fn stage_eexist_before_eacces() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure_many(&ima, "after", 1);
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Err(Errno::Eexist));
    assert_unchanged(&ima, &before);
}

#[test]
fn stage_on_original_einval_before_eexist() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"A\n");

    assert_eq!(result, Err(Errno::Einval));
    assert_unchanged(&ima, &before);
}

// ENOENT: `A` with an empty current list, `D` with an empty staged list,
// `N` beyond the current list.

#[test]
fn stage_with_empty_current_is_enoent() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    write_command(&ima, STAGED, b"D\n").unwrap();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn stage_enoent_before_eacces() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    write_command(&ima, STAGED, b"D\n").unwrap();
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn delete_with_empty_staged_is_enoent() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"D\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn delete_enoent_before_estale() {
    let ima = kernel();
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"D\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_enoent_before_estale() {
    let ima = kernel();
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"7\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_on_empty_current_is_enoent() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"1\n");

    assert_eq!(result, Err(Errno::Enoent));
    assert_unchanged(&ima, &before);
}

// EACCES: `A` after suspension.

#[test]
fn stage_after_suspend_is_eacces() {
    let ima = kernel();
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Err(Errno::Eacces));
    assert_unchanged(&ima, &before);
}

// ESTALE: `D` or `N` after suspension.

#[test]
fn delete_after_suspend_is_estale() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"D\n");

    assert_eq!(result, Err(Errno::Estale));
    assert_unchanged(&ima, &before);
}

#[test]
fn count_after_suspend_is_estale() {
    let ima = kernel();
    ima.suspend();
    let before = snapshot(&ima);

    let result = write_command(&ima, ORIGINAL, b"6\n");

    assert_eq!(result, Err(Errno::Estale));
    assert_unchanged(&ima, &before);
}

// ENOMEM: `D` with ima_flush_htable when the new table cannot be allocated.

#[test]
fn delete_with_failed_table_allocation_is_enomem() {
    let ima = boot(flush_config());
    measure_many(&ima, "rec", 3);
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure_many(&ima, "after", 1);
    let before = snapshot(&ima);
    ima.fail_next_htable_allocation();

    let result = write_command(&ima, STAGED, b"D\n");

    assert_eq!(result, Err(Errno::Enomem));
    // The staged records were already detached and counted out, so they are
    // lost.
    assert_eq!(staged(&ima), Vec::new());
    assert_eq!(ima.counters().staged, 0);
    assert_eq!(ima.counters().staged_size, 0);
    assert_eq!(ima.render_file(file(&ima, ASCII_STAGED)), b"");
    assert_eq!(current(&ima), before.current);
    assert_eq!(ima.counters().current, before.counters.current);
    assert_eq!(ima.counters().full, before.counters.full);
    assert_eq!(ima.htable_len(), before.htable_len, "the old table stays");
    assert_eq!(all_pcrs(&ima), before.pcrs);
    assert_eq!(measure(&ima, "rec-0"), Err(Errno::Eexist), "a lost record still suppresses its duplicate");
    assert_eq!(write_command(&ima, STAGED, b"D\n"), Err(Errno::Enoent));
}

// ENODEV: measurement after suspension (audit only).

#[test]
fn measure_after_suspend_is_enodev() {
    let ima = kernel();
    ima.suspend();
    let before = snapshot(&ima);

    let result = measure(&ima, "late");

    assert_eq!(result, Err(Errno::Enodev));
    assert_eq!(ima.audit_counts().measurements_suspended, 1);
    let expected_audit = imalog_kernel::AuditCounts { measurements_suspended: 1, ..before.audit };
    assert_eq!(ima.audit_counts(), expected_audit);
    let after = snapshot(&ima);
    assert_eq!(after.counters, before.counters);
    assert_eq!(after.htable_len, before.htable_len);
    assert_eq!(after.current, before.current);
    assert_eq!(after.staged, before.staged);
    assert_eq!(after.pcrs, before.pcrs);
}

#[test]
fn suspended_duplicate_is_enodev() {
    let ima = kernel();
    ima.suspend();

    let result = measure(&ima, "rec-0");

    assert_eq!(result, Err(Errno::Enodev), "suspension is checked before the hash table");
    assert_eq!(ima.audit_counts().hash_exists, 0);
}

#[test]
fn violation_after_suspend_counts_only() {
    let ima = kernel();
    ima.suspend();
    let before = snapshot(&ima);

    let result = measure(&ima, "violation-late");

    assert_eq!(result, Err(Errno::Enodev));
    assert_eq!(ima.violations_file(), "1\n", "the counter goes up before the record is appended");
    assert_eq!(ima.counters().violations, 1);
    assert_eq!(ima.counters().current, before.counters.current);
    assert_eq!(current(&ima), before.current);
    assert_eq!(all_pcrs(&ima), before.pcrs);
}

// EEXIST: duplicate measurement (audit only).

#[test]
fn duplicate_measurement_is_eexist() {
    let ima = kernel();
    let before = snapshot(&ima);

    let result = measure(&ima, "rec-2");

    assert_eq!(result, Err(Errno::Eexist));
    assert_eq!(ima.audit_counts().hash_exists, 1);
    let after = snapshot(&ima);
    assert_eq!(after.counters, before.counters);
    assert_eq!(after.htable_len, before.htable_len);
    assert_eq!(after.current, before.current);
    assert_eq!(after.pcrs, before.pcrs);
}

#[test]
fn duplicate_in_other_pcr_is_appended() {
    let ima = kernel();
    let htable_before = ima.htable_len();

    let result = ima.measure_buffer(b"rec-2", b"rec-2", Some(11));

    assert_eq!(result, Ok(Appended::Yes));
    assert_eq!(ima.counters().current, 7);
    assert_eq!(ima.htable_len(), htable_before + 1);
}

#[test]
fn duplicate_violation_is_appended() {
    let ima = kernel();
    measure(&ima, "violation-a").unwrap();

    let result = measure(&ima, "violation-a");

    assert_eq!(result, Ok(Appended::Yes));
    assert_eq!(ima.counters().current, 8);
    assert_eq!(ima.violations_file(), "2\n");
    assert_eq!(ima.audit_counts().hash_exists, 0);
}

#[test]
fn htable_disabled_appends_duplicates() {
    let ima = boot(KernelConfig { htable_disabled: true, ..KernelConfig::default() });
    measure(&ima, "rec").unwrap();

    let result = measure(&ima, "rec");

    assert_eq!(result, Ok(Appended::Yes));
    assert_eq!(ima.htable_len(), 0);
    assert_eq!(current_names(&ima), with_boot_aggregate(vec!["rec".into(), "rec".into()]));
}

// Effects of `A`, `D` and `N`.

#[test]
fn stage_moves_current_to_staged() {
    let ima = kernel();
    let before = snapshot(&ima);
    let renderings: Vec<Vec<u8>> =
        ima.list_files().iter().filter(|f| !f.file.staged).map(|f| ima.render_file(f.file)).collect();

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Ok(2));
    assert_eq!(staged(&ima), before.current);
    assert_eq!(current(&ima), Vec::new());
    assert_eq!(ima.count_file(), "0\n");
    assert_eq!(all_pcrs(&ima), before.pcrs);
    assert_eq!(ima.htable_len(), before.htable_len);
    let counters = ima.counters();
    assert_eq!(counters.staged, 6);
    assert_eq!(counters.current, 0);
    assert_eq!(counters.full, before.counters.full);
    assert_eq!(counters.staged_size, before.counters.current_size);
    assert_eq!(counters.current_size, 0);
    let staged_renderings: Vec<Vec<u8>> =
        ima.list_files().iter().filter(|f| f.file.staged).map(|f| ima.render_file(f.file)).collect();
    assert_eq!(staged_renderings, renderings);
}

#[test]
fn stage_then_measure_appends_to_current() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();

    measure_many(&ima, "after", 2);

    assert_eq!(current_names(&ima), names("after", 0..2));
    assert_eq!(staged_names(&ima), with_boot_aggregate(names("rec", 0..5)));
    assert_eq!(ima.count_file(), "2\n");
}

#[test]
fn deleted_staged_records_never_reappear() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure_many(&ima, "after", 2);
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"D\n");

    assert_eq!(result, Ok(2));
    for info in ima.list_files() {
        let expected = if info.file.staged { Vec::new() } else { expected_rendering(&ima, info.file, &before.current) };
        assert_eq!(ima.render_file(info.file), expected, "{}", info.name);
    }
    let counters = ima.counters();
    assert_eq!(counters.staged, 0);
    assert_eq!(counters.staged_size, 0);
    assert_eq!(counters.current, 2);
    assert_eq!(counters.full, before.counters.full);
    assert_eq!(ima.count_file(), "2\n");
    assert_eq!(all_pcrs(&ima), before.pcrs);
    assert_eq!(ima.htable_len(), before.htable_len);
}

#[test]
fn deleted_first_records_never_reappear() {
    let ima = kernel();
    let before = snapshot(&ima);
    let removed_size: u64 = before.current[..3].iter().map(|e| e.record.kexec_size_estimate()).sum();

    let result = write_command(&ima, ASCII_ORIGINAL, b"3\n");

    assert_eq!(result, Ok(2));
    for info in ima.list_files() {
        let expected =
            if info.file.staged { Vec::new() } else { expected_rendering(&ima, info.file, &before.current[3..]) };
        assert_eq!(ima.render_file(info.file), expected, "{}", info.name);
    }
    let counters = ima.counters();
    assert_eq!(counters.current, 3);
    assert_eq!(counters.current_size, before.counters.current_size - removed_size);
    assert_eq!(counters.full, before.counters.full);
    assert_eq!(counters.full_size, before.counters.full_size);
    assert_eq!(ima.count_file(), "3\n");
    assert_eq!(all_pcrs(&ima), before.pcrs);
    assert_eq!(ima.htable_len(), before.htable_len);
}

#[test]
fn count_leaves_staged_list_alone() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure_many(&ima, "after", 3);

    let result = write_command(&ima, ORIGINAL, b"2\n");

    assert_eq!(result, Ok(2));
    assert_eq!(staged_names(&ima), with_boot_aggregate(names("rec", 0..5)));
    assert_eq!(current_names(&ima), names("after", 2..3));
}

#[test]
fn delete_with_flush_empties_table() {
    let ima = boot(flush_config());
    measure_many(&ima, "rec", 3);
    write_command(&ima, STAGED, b"A\n").unwrap();

    let result = write_command(&ima, STAGED, b"D\n");

    assert_eq!(result, Ok(2));
    assert_eq!(ima.htable_len(), 0);
}

#[test]
fn delete_with_flush_allows_duplicate() {
    let ima = boot(flush_config());
    measure_many(&ima, "rec", 3);
    write_command(&ima, STAGED, b"A\n").unwrap();
    write_command(&ima, STAGED, b"D\n").unwrap();
    let pcrs_before = pcr10(&ima);

    let result = measure(&ima, "rec-1");

    assert_eq!(result, Ok(Appended::Yes));
    assert_eq!(current_names(&ima), vec!["rec-1".to_string()]);
    assert_eq!(ima.htable_len(), 1);
    let record = &current(&ima)[0].record;
    let expected: Vec<Digest> = tpm_banks(&ima)
        .iter()
        .zip(&pcrs_before)
        .map(|(bank, old)| bank.extend(old, &record.extend_value(bank)).unwrap())
        .collect();
    assert_eq!(pcr10(&ima), expected);
}

#[test]
fn delete_with_flush_forgets_unstaged_records() {
    let ima = boot(flush_config());
    measure_many(&ima, "rec", 2);
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure(&ima, "between").unwrap();
    write_command(&ima, STAGED, b"D\n").unwrap();

    let result = measure(&ima, "between");

    assert_eq!(result, Ok(Appended::Yes));
    assert_eq!(current_names(&ima), vec!["between".to_string(), "between".to_string()]);
}

#[test]
fn delete_without_flush_suppresses_duplicate() {
    let ima = kernel();
    write_command(&ima, STAGED, b"A\n").unwrap();
    write_command(&ima, STAGED, b"D\n").unwrap();
    let before = snapshot(&ima);

    let result = measure(&ima, "rec-3");

    assert_eq!(result, Err(Errno::Eexist));
    assert_eq!(ima.audit_counts().hash_exists, 1);
    assert_eq!(current(&ima), before.current);
    assert_eq!(ima.htable_len(), before.htable_len);
    assert_eq!(all_pcrs(&ima), before.pcrs);
}

#[test]
fn count_without_flush_suppresses_duplicate() {
    let ima = kernel();
    write_command(&ima, ORIGINAL, b"4\n").unwrap();
    let before = snapshot(&ima);

    let result = measure(&ima, "rec-0");

    assert_eq!(result, Err(Errno::Eexist));
    assert_eq!(current(&ima), before.current);
    assert_eq!(all_pcrs(&ima), before.pcrs);
}

// Reading: seq_file semantics.

#[test]
fn chunked_reads_reassemble_rendering() {
    let ima = kernel();
    measure(&ima, "violation-x").unwrap();
    for name in [ORIGINAL, ASCII_ORIGINAL] {
        let expected = ima.render_file(file(&ima, name));
        for chunk in (1..=40).chain([63, 64, 65, 99, 100, 101, 4096]) {
            let handle = open_read(&ima, name);
            let bytes = read_all(&ima, &handle, chunk);
            ima.release_list(handle, ROOT.task);
            assert_eq!(bytes, expected, "{name} in chunks of {chunk}");
        }
    }
}

#[test]
fn reads_at_offsets_match_rendering() {
    let ima = kernel();
    let expected = ima.render_file(file(&ima, ASCII_ORIGINAL));
    let end = expected.len() as u64;
    let handle = open_read(&ima, ASCII_ORIGINAL);

    for offset in [0, 100, 5, 250, 251, 250, end - 1, 0, end, end + 10, 17, 1] {
        let bytes = ima.read_list(&handle, offset, 37);
        let start = (offset as usize).min(expected.len());
        let stop = (start + 37).min(expected.len());
        assert_eq!(bytes, &expected[start..stop], "37 bytes at offset {offset}");
    }
}

#[test]
fn read_sees_records_appended_between_reads() {
    let ima = kernel();
    let binary = file(&ima, ORIGINAL);
    let handle = open_read(&ima, ORIGINAL);
    let first = ima.read_list(&handle, 0, 30);

    measure_many(&ima, "later", 2);
    let rest = read_all_from(&ima, &handle, first.len(), 50);

    let mut whole = first;
    whole.extend_from_slice(&rest);
    assert_eq!(whole, expected_rendering(&ima, binary, &current(&ima)));
    assert_eq!(current_names(&ima).last().map(String::as_str), Some("later-1"));
}

#[test]
fn read_at_end_sees_later_records() {
    let ima = kernel();
    let handle = open_read(&ima, ASCII_ORIGINAL);
    let before = read_all(&ima, &handle, 1000);
    let end = before.len() as u64;

    measure(&ima, "later").unwrap();
    let appended = ima.read_list(&handle, end, 1000);

    let entries = current(&ima);
    let expected = expected_rendering(&ima, file(&ima, ASCII_ORIGINAL), &entries[entries.len() - 1..]);
    assert_eq!(appended, expected);
}

fn read_all_from(ima: &imalog_kernel::Ima, handle: &imalog_kernel::Handle, start: usize, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let part = ima.read_list(handle, (start + out.len()) as u64, chunk);
        if part.is_empty() {
            return out;
        }
        out.extend_from_slice(&part);
    }
}

#[test]
fn every_file_renders_its_bank() {
    let ima = kernel();
    measure(&ima, "violation-x").unwrap();
    measure_many(&ima, "more", 2);
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure(&ima, "violation-y").unwrap();
    measure_many(&ima, "latest", 2);
    let current_entries = current(&ima);
    let staged_entries = staged(&ima);

    let files = ima.list_files();

    assert_eq!(files.len(), 16);
    for info in files {
        let entries = if info.file.staged { &staged_entries } else { &current_entries };
        let expected = expected_rendering(&ima, info.file, entries);
        let handle = open_read(&ima, &info.name);
        assert_eq!(read_all(&ima, &handle, 333), expected, "{}", info.name);
        ima.release_list(handle, ROOT.task);
    }
}

#[test]
fn violation_renders_zero_digest() {
    let ima = boot_default();
    measure(&ima, "violation-x").unwrap();

    let lines = String::from_utf8(ima.render_file(file(&ima, "ascii_runtime_measurements_sha256"))).unwrap();

    let expected = format!("10 {} ima-ng sha256:{} violation-x\n", "0".repeat(64), "0".repeat(64));
    assert_eq!(lines.lines().nth(1).map(|l| format!("{l}\n")), Some(expected));
}

#[test]
fn count_and_violations_files() {
    let ima = kernel();
    measure(&ima, "violation-x").unwrap();
    let count = ima.count_file();
    let violations = ima.violations_file();

    write_command(&ima, STAGED, b"A\n").unwrap();
    measure(&ima, "after").unwrap();

    assert_eq!(count, "7\n");
    assert_eq!(violations, "1\n");
    assert_eq!(ima.count_file(), "1\n");
    assert_eq!(ima.violations_file(), "1\n");
    write_command(&ima, STAGED, b"D\n").unwrap();
    assert_eq!(ima.count_file(), "1\n", "D does not change the count");
    assert_eq!(ima.violations_file(), "1\n", "staging never lowers the violation count");
}

#[test]
fn custom_template_renders_format_name() {
    let ima = boot_default();
    let template = Arc::new(Template::custom("n-ng|d-ng|buf").unwrap());
    let digest = HashAlgorithm::Sha256.digest(b"payload");
    let event = EventData {
        name: b"custom",
        digest: Some((HashAlgorithm::Sha256, digest)),
        buffer: Some(b"payload"),
        ..Default::default()
    };

    ima.measure_event(&template, None, &event).unwrap();

    let binary = file(&ima, ORIGINAL);
    assert_eq!(ima.render_file(binary), expected_rendering(&ima, binary, &current(&ima)));
    let ascii = String::from_utf8(ima.render_file(file(&ima, ASCII_ORIGINAL))).unwrap();
    let line = ascii.lines().nth(1).unwrap();
    assert_eq!(line.split(' ').nth(2), Some("n-ng|d-ng|buf"));
}
