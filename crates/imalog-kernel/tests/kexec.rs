//! The kexec carry-over: sizing the segment and the `ima_kexec` records at
//! load and execute, suspension, the dump of staged then current records,
//! and the restore in the next kernel on the same TPM, including damaged
//! and oversized buffers.

mod common;

use std::sync::Arc;

use common::*;
use imalog_core::{Bank, ByteOrder, Digest, FieldId, HashAlgorithm, ReplayState, Replayer, Template};
use imalog_kernel::{Appended, Entry, Errno, EventData, Ima, KernelConfig, KernelError, RestoreReport};

const PAGE_SIZE: u64 = 4096;
const HEADER_SIZE: usize = 24;
const BINARY_SHA1: &str = "binary_runtime_measurements_sha1";
const BINARY_SHA1_STAGED: &str = "binary_runtime_measurements_sha1_staged";
const STAGED: &str = "binary_runtime_measurements_sha256_staged";
const ORIGINAL: &str = "binary_runtime_measurements_sha256";

/// Boots a kernel whose staged list contains `boot_aggregate` and `rec-0` to
/// `rec-3` and whose current list contains `after-0` to `after-2`.
fn staged_and_current() -> Ima {
    let ima = boot_default();
    measure_many(&ima, "rec", 4);
    write_command(&ima, STAGED, b"A\n").unwrap();
    measure_many(&ima, "after", 3);
    ima
}

/// Runs the old kernel's side of a kexec (load, execute, dump) and returns
/// the dump and every PCR just before the TPM is handed over.
fn load_execute_dump(ima: &Ima) -> (Vec<u8>, Vec<Digest>) {
    ima.kexec_load().expect("kexec_load");
    ima.kexec_execute();
    let dump = ima.kexec_dump();
    (dump, all_pcrs(ima))
}

/// Boots the next kernel on the old kernel's TPM.
fn next_kernel(old: &Ima, config: KernelConfig, buffer: &[u8]) -> (Ima, RestoreReport) {
    let tpm = old.take_tpm();
    Ima::boot_after_kexec(config, tpm, buffer).expect("boot after kexec")
}

fn page_align(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

fn buf_text(entry: &Entry) -> String {
    String::from_utf8(entry.record.field(FieldId::Buf).expect("ima-buf record").to_vec()).expect("ASCII buffer")
}

fn last_entry(ima: &Ima) -> Entry {
    current(ima).pop().expect("a record")
}

fn header_u16(buffer: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(buffer[at..at + 2].try_into().unwrap())
}

fn header_u32(buffer: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buffer[at..at + 4].try_into().unwrap())
}

fn header_u64(buffer: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buffer[at..at + 8].try_into().unwrap())
}

fn set_header_u64(buffer: &mut [u8], at: usize, value: u64) {
    buffer[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Encodes each entry in the SHA-1 binary format, as the dump writes it.
fn encode_sha1_records(ima: &Ima, entries: &[Entry]) -> Vec<Vec<u8>> {
    let sha1 = file(ima, BINARY_SHA1);
    entries.iter().map(|entry| expected_rendering(ima, sha1, std::slice::from_ref(entry))).collect()
}

/// Replays `entries` from a cold boot in every TPM bank of `ima` and returns
/// PCR 10 per bank.
fn replay_pcr10(ima: &Ima, entries: &[Entry]) -> Vec<Digest> {
    let banks = tpm_banks(ima);
    let mut replayer = Replayer::new(Bank::SHA1, &banks, &ReplayState::cold_boot()).expect("replayer");
    for entry in entries {
        replayer.replay(&entry.record).expect("replay");
    }
    let state = replayer.state();
    banks.iter().map(|bank| state.value(bank, 10)).collect()
}

/// Computes PCR 10 per bank after extending `record` into `before`.
fn extend_pcr10(ima: &Ima, before: &[Digest], record: &imalog_core::Record) -> Vec<Digest> {
    tpm_banks(ima).iter().zip(before).map(|(bank, old)| bank.extend(old, &record.extend_value(bank)).unwrap()).collect()
}

/// Returns the index of PCR 10 of bank `bank_index` in [`all_pcrs`].
fn pcr10_index(bank_index: usize) -> usize {
    bank_index * imalog_tpm::PCR_COUNT as usize + 10
}

// kexec_load and kexec_execute.

#[test]
fn kexec_load_sizes_segment() {
    let ima = staged_and_current();
    // For built-in templates the size estimate equals the SHA-1 binary
    // encoding: 4 + 20 + 4 + name + 4 + template data.
    let current_size = ima.render_file(file(&ima, BINARY_SHA1)).len() as u64;
    let staged_size = ima.render_file(file(&ima, BINARY_SHA1_STAGED)).len() as u64;

    let segment = ima.kexec_load().unwrap();

    assert_eq!(segment, page_align(current_size + 24 + staged_size + 24 + 2048));
}

#[test]
fn kexec_load_record_text() {
    let ima = staged_and_current();
    let records = ima.counters().full;
    let size = ima.render_file(file(&ima, BINARY_SHA1)).len() + ima.render_file(file(&ima, BINARY_SHA1_STAGED)).len();

    let segment = ima.kexec_load().unwrap();

    let record = last_entry(&ima);
    assert_eq!(event_name(&record), "kexec_load");
    assert_eq!(record.record.template.name(), "ima-buf");
    assert_eq!(record.record.pcr, 10);
    assert_eq!(records, 8);
    assert_eq!(
        buf_text(&record),
        format!("kexec_segment_size={segment};ima_binary_runtime_size={};ima_runtime_measurements_count=8;", size + 24)
    );
}

#[test]
fn kexec_execute_record_text() {
    let ima = staged_and_current();
    let segment = ima.kexec_load().unwrap();
    let size = ima.render_file(file(&ima, BINARY_SHA1)).len() + ima.render_file(file(&ima, BINARY_SHA1_STAGED)).len();

    ima.kexec_execute();

    let record = last_entry(&ima);
    assert_eq!(event_name(&record), "kexec_execute");
    assert_eq!(
        buf_text(&record),
        format!("kexec_segment_size={segment};ima_binary_runtime_size={};ima_runtime_measurements_count=9;", size + 24)
    );
    assert!(ima.is_suspended());
}

#[test]
fn kexec_record_counts_deleted_records() {
    let ima = staged_and_current();
    let size = ima.render_file(file(&ima, BINARY_SHA1)).len() + ima.render_file(file(&ima, BINARY_SHA1_STAGED)).len();
    write_command(&ima, STAGED, b"D\n").unwrap();
    write_command(&ima, ORIGINAL, b"1\n").unwrap();

    let segment = ima.kexec_load().unwrap();

    let remaining = ima.render_file(file(&ima, BINARY_SHA1)).len() as u64;
    assert_eq!(segment, page_align(remaining + 24 + 24 + 2048));
    assert_eq!(
        buf_text(&last_entry(&ima)),
        format!("kexec_segment_size={segment};ima_binary_runtime_size={};ima_runtime_measurements_count=8;", size + 24)
    );
}

#[test]
fn suspended_after_kexec_execute() {
    let ima = staged_and_current();
    ima.kexec_load().unwrap();
    ima.kexec_execute();
    let before = snapshot(&ima);

    let delete = write_command(&ima, STAGED, b"D\n");
    let count = write_command(&ima, ORIGINAL, b"1\n");
    let stage = write_command(&ima, STAGED, b"A\n");
    let measured = measure(&ima, "late");

    assert_eq!(delete, Err(Errno::Estale));
    assert_eq!(count, Err(Errno::Estale));
    assert_eq!(stage, Err(Errno::Eexist), "the staged list is not empty, which is checked first");
    assert_eq!(measured, Err(Errno::Enodev));
    assert_eq!(ima.audit_counts().measurements_suspended, 1);
    let after = snapshot(&ima);
    assert_eq!(after.counters, before.counters);
    assert_eq!(after.current, before.current);
    assert_eq!(after.staged, before.staged);
    assert_eq!(after.htable_len, before.htable_len);
    assert_eq!(after.pcrs, before.pcrs);
}

#[test]
fn stage_after_kexec_execute_is_eacces() {
    let ima = boot_default();
    measure_many(&ima, "rec", 2);
    ima.kexec_load().unwrap();
    ima.kexec_execute();
    let before = snapshot(&ima);

    let result = write_command(&ima, STAGED, b"A\n");

    assert_eq!(result, Err(Errno::Eacces));
    assert_unchanged(&ima, &before);
}

#[test]
fn kexec_execute_without_critical_data() {
    let ima = boot(KernelConfig { measure_critical_data: false, ..KernelConfig::default() });
    measure_many(&ima, "rec", 2);

    ima.kexec_load().unwrap();
    ima.kexec_execute();

    assert_eq!(current_names(&ima), with_boot_aggregate(&["rec-0", "rec-1"]));
    assert!(ima.is_suspended());
}

fn with_boot_aggregate(rest: &[&str]) -> Vec<String> {
    std::iter::once("boot_aggregate").chain(rest.iter().copied()).map(String::from).collect()
}

// The dump.

#[test]
fn kexec_dump_header() {
    let ima = staged_and_current();

    let (dump, _) = load_execute_dump(&ima);

    assert_eq!(header_u16(&dump, 0), 1, "version");
    assert_eq!(header_u16(&dump, 2), 0, "reserved");
    assert_eq!(header_u32(&dump, 4), 0, "reserved");
    assert_eq!(header_u64(&dump, 8), dump.len() as u64, "buffer_size");
    assert_eq!(header_u64(&dump, 16), 10, "count");
}

#[test]
fn kexec_dump_staged_first() {
    let ima = staged_and_current();

    let (dump, _) = load_execute_dump(&ima);

    let mut expected = ima.render_file(file(&ima, BINARY_SHA1_STAGED));
    expected.extend(ima.render_file(file(&ima, BINARY_SHA1)));
    assert_eq!(&dump[HEADER_SIZE..], expected.as_slice());
    assert_eq!(
        staged_names(&ima),
        with_boot_aggregate(&["rec-0", "rec-1", "rec-2", "rec-3"]),
        "the dump leaves the lists alone"
    );
}

#[test]
fn kexec_dump_without_load_is_empty() {
    let ima = staged_and_current();
    ima.kexec_execute();

    let dump = ima.kexec_dump();

    assert_eq!(dump, Vec::<u8>::new());
}

// Restore in the next kernel.

#[test]
fn restore_report_counts_records() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);

    let (_, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report, RestoreReport { announced: 10, restored: 10, error: None });
}

#[test]
fn restore_is_staged_then_current() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);
    let mut carried = staged(&old);
    carried.extend(current(&old));

    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);

    let restored = current(&new);
    let expected_names: Vec<String> =
        carried.iter().map(event_name).chain(std::iter::once("boot_aggregate".to_string())).collect();
    assert_eq!(restored.iter().map(event_name).collect::<Vec<_>>(), expected_names);
    for (index, (new_entry, old_entry)) in restored.iter().zip(&carried).enumerate() {
        assert_eq!(new_entry.record.data, old_entry.record.data, "template data of record {index}");
        assert_eq!(new_entry.record.template.name(), old_entry.record.template.name(), "template of record {index}");
        assert_eq!(new_entry.record.pcr, old_entry.record.pcr, "PCR of record {index}");
    }
    assert_eq!(staged(&new), Vec::new());
}

#[test]
fn restore_recomputes_every_slot() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);
    let mut old_sha512 = old.render_file(file(&old, "binary_runtime_measurements_sha512_staged"));
    old_sha512.extend(old.render_file(file(&old, "binary_runtime_measurements_sha512")));

    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);

    let entries = current(&new);
    for info in new.list_files() {
        let expected = if info.file.staged { Vec::new() } else { expected_rendering(&new, info.file, &entries) };
        assert_eq!(new.render_file(info.file), expected, "{}", info.name);
    }
    let new_sha512 = new.render_file(file(&new, "binary_runtime_measurements_sha512"));
    assert_eq!(&new_sha512[..old_sha512.len()], old_sha512.as_slice());
}

#[test]
fn restore_counters_include_restored() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);

    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);

    let size = new.render_file(file(&new, BINARY_SHA1)).len() as u64;
    let counters = new.counters();
    assert_eq!(counters.current, 11);
    assert_eq!(counters.staged, 0);
    assert_eq!(counters.full, 11);
    assert_eq!(counters.current_size, size);
    assert_eq!(counters.staged_size, 0);
    assert_eq!(counters.full_size, size);
    assert_eq!(counters.violations, 0);
    assert_eq!(new.count_file(), "11\n");
}

#[test]
fn restore_leaves_htable_to_new_records() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);

    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(new.htable_len(), 1, "only the new boot_aggregate");
    let entries = current(&new);
    let old_aggregate = &entries[0];
    let new_aggregate = &entries[entries.len() - 1];
    assert_eq!(event_name(new_aggregate), "boot_aggregate");
    assert_eq!(new_aggregate.record.data, old_aggregate.record.data, "PCRs 0 to 9 did not change");
}

#[test]
fn duplicate_of_restored_is_appended() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);
    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);
    let before = pcr10(&new);

    let result = measure(&new, "rec-1");

    assert_eq!(result, Ok(Appended::Yes));
    let record = last_entry(&new);
    assert_eq!(event_name(&record), "rec-1");
    assert_eq!(pcr10(&new), extend_pcr10(&new, &before, &record.record));
    assert_eq!(measure(&new, "rec-1"), Err(Errno::Eexist), "now it is in this kernel's table");
}

#[test]
fn restore_does_not_extend() {
    let old = staged_and_current();
    let (dump, pcrs_before) = load_execute_dump(&old);

    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);

    let aggregate = last_entry(&new);
    let banks = tpm_banks(&new);
    let mut expected = pcrs_before.clone();
    for (index, bank) in banks.iter().enumerate() {
        let at = pcr10_index(index);
        expected[at] = bank.extend(&pcrs_before[at], &aggregate.record.extend_value(bank)).unwrap();
    }
    assert_eq!(all_pcrs(&new), expected);
}

#[test]
fn replay_after_kexec_matches_tpm() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);

    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(replay_pcr10(&new, &current(&new)), pcr10(&new));
}

#[test]
fn full_counter_spans_restore_and_appends() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);
    let (new, _) = next_kernel(&old, KernelConfig::default(), &dump);
    measure(&new, "new-0").unwrap();
    let before_delete = new.render_file(file(&new, BINARY_SHA1)).len();
    write_command(&new, STAGED, b"A\n").unwrap();
    write_command(&new, STAGED, b"D\n").unwrap();
    measure(&new, "new-1").unwrap();
    let after_delete = new.render_file(file(&new, BINARY_SHA1)).len();

    let segment = new.kexec_load().unwrap();

    // 10 restored records, the new boot_aggregate, new-0 and new-1; the
    // deleted ones still count.
    assert_eq!(
        buf_text(&last_entry(&new)),
        format!(
            "kexec_segment_size={segment};ima_binary_runtime_size={};ima_runtime_measurements_count=13;",
            before_delete + after_delete + 24
        )
    );
}

#[test]
fn deleted_records_are_not_carried() {
    let old = boot_default();
    measure_many(&old, "rec", 4);
    let deleted = current(&old)[..3].to_vec();
    write_command(&old, ORIGINAL, b"3\n").unwrap();
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report.restored, 4);
    assert_eq!(
        current_names(&new),
        ["rec-2", "rec-3", "kexec_load", "kexec_execute", "boot_aggregate"].map(String::from).to_vec()
    );
    let mut history = deleted;
    history.extend(current(&new));
    assert_eq!(replay_pcr10(&new, &history), pcr10(&new), "stored chunk then the new list");
}

// Restore with other banks, violations and templates.

#[test]
fn restore_into_sha256_only_kernel() {
    let old = staged_and_current();
    let (dump, _) = load_execute_dump(&old);
    let mut old_sha256 = old.render_file(file(&old, "binary_runtime_measurements_sha256_staged"));
    old_sha256.extend(old.render_file(file(&old, ORIGINAL)));
    let tpm = booted_tpm(&[Bank::SHA256]);
    let tpm_pcr10 = Bank::SHA256.reset_value();

    let (new, report) = Ima::boot_after_kexec(KernelConfig::default(), Some(Box::new(tpm)), &dump).unwrap();

    assert_eq!(report.restored, 10);
    let names: Vec<String> = new.list_files().into_iter().filter(|f| !f.file.staged).map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "ascii_runtime_measurements_sha256",
            "binary_runtime_measurements_sha256",
            "ascii_runtime_measurements_sha1",
            "binary_runtime_measurements_sha1",
        ]
        .map(String::from)
        .to_vec()
    );
    let entries = current(&new);
    for info in new.list_files() {
        let expected = if info.file.staged { Vec::new() } else { expected_rendering(&new, info.file, &entries) };
        assert_eq!(new.render_file(info.file), expected, "{}", info.name);
    }
    let new_sha256 = new.render_file(file(&new, ORIGINAL));
    assert_eq!(&new_sha256[..old_sha256.len()], old_sha256.as_slice());
    let aggregate = last_entry(&new);
    let expected_pcr10 = Bank::SHA256.extend(&tpm_pcr10, &aggregate.record.extend_value(&Bank::SHA256)).unwrap();
    assert_eq!(pcr10(&new), vec![expected_pcr10], "restored records are not extended");
}

#[test]
fn restore_with_unmapped_bank() {
    // SHA3-256 has no kernel hash, so its slot contains padded SHA-1, and a
    // violation extends 20 bytes of 0xFF followed by zeros.
    let banks = [Bank::SHA256, Bank::new(HashAlgorithm::Sha3_256)];
    let old = Ima::cold_boot(KernelConfig::default(), Some(Box::new(booted_tpm(&banks)))).unwrap();
    measure_many(&old, "rec", 2);
    measure(&old, "violation-x").unwrap();
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report.restored, 6);
    let entries = current(&new);
    let sha3 = file(&new, "binary_runtime_measurements_tpm_alg_27");
    assert_eq!(new.render_file(sha3), expected_rendering(&new, sha3, &entries));
    let padded = Bank::new(HashAlgorithm::Sha3_256).pad_sha1(&entries[1].record.computed_bank_digest(&Bank::SHA1));
    assert_eq!(entries[1].slot_digest(new.slots(), 1), padded);
    assert_eq!(replay_pcr10(&new, &entries), pcr10(&new));
}

#[test]
fn violation_survives_kexec() {
    let old = boot_default();
    measure_many(&old, "rec", 2);
    measure(&old, "violation-x").unwrap();
    measure_many(&old, "after", 1);
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report.restored, 7);
    let violation = current(&new).into_iter().find(|e| event_name(e) == "violation-x").unwrap();
    for (index, slot) in new.slots().all().iter().enumerate() {
        assert_eq!(violation.slot_digest(new.slots(), index), Digest::zero(slot.bank.digest_size()), "slot {index}");
    }
    assert_eq!(new.violations_file(), "0\n", "the counter is per kernel instance");
    assert_eq!(replay_pcr10(&new, &current(&new)), pcr10(&new));
}

#[test]
fn custom_template_survives_kexec() {
    let old = boot_default();
    let template = Arc::new(Template::custom("n-ng|d-ng|buf").unwrap());
    let event = EventData {
        name: b"custom",
        digest: Some((HashAlgorithm::Sha256, HashAlgorithm::Sha256.digest(b"payload"))),
        buffer: Some(b"payload"),
        ..Default::default()
    };
    old.measure_event(&template, None, &event).unwrap();
    let carried = last_entry(&old);
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report.restored, 4);
    let restored = current(&new)[1].clone();
    assert_eq!(restored.record.template.name(), "n-ng|d-ng|buf");
    assert_eq!(restored.record.data, carried.record.data);
    let binary = file(&new, ORIGINAL);
    assert_eq!(new.render_file(binary), expected_rendering(&new, binary, &current(&new)));
    assert_eq!(replay_pcr10(&new, &current(&new)), pcr10(&new));
}

#[test]
fn ima_template_stops_restore() {
    let old = boot_default();
    measure_many(&old, "rec", 1);
    let legacy = Template::builtin("ima").unwrap();
    let event = EventData {
        name: b"legacy",
        digest: Some((HashAlgorithm::Sha1, HashAlgorithm::Sha1.digest(b"legacy"))),
        ..Default::default()
    };
    old.measure_event(&legacy, None, &event).unwrap();
    measure_many(&old, "after", 1);
    let offset = HEADER_SIZE + encode_sha1_records(&old, &current(&old)[..2]).concat().len();
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(
        report,
        RestoreReport {
            announced: 6,
            restored: 2,
            error: Some(format!("record 2 at offset {offset}: template ima is not supported in a kexec buffer")),
        }
    );
    assert_eq!(current_names(&new), with_boot_aggregate(&["rec-0", "boot_aggregate"]));
}

#[test]
fn restore_skips_field_content_checks() {
    // The kernel splits template data by the length words only, so a name
    // without its NUL is restored as it is.
    let old = staged_and_current();
    let (mut dump, _) = load_execute_dump(&old);
    let at = dump.windows(6).position(|w| w == b"rec-0\0").expect("rec-0 in the dump");
    dump[at + 5] = b'x';

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report, RestoreReport { announced: 10, restored: 10, error: None });
    let altered = current(&new)[1].clone();
    assert_eq!(altered.record.field(FieldId::NNg), Some(&b"rec-0x"[..]));
    let binary = file(&new, ORIGINAL);
    assert_eq!(new.render_file(binary), expected_rendering(&new, binary, &current(&new)));
}

// Oversized, truncated and damaged buffers.

#[test]
fn oversized_list_fails_kexec_load() {
    let config = KernelConfig { kexec_extra_memory_kb: 1, ram_bytes: 16 << 10, ..KernelConfig::default() };
    let old = boot(config.clone());
    measure_many(&old, "rec", 100);
    let records = old.counters().full;

    let result = old.kexec_load();

    assert_eq!(result, Err(KernelError::KexecLoad("Binary measurement list too large".into())));
    assert_eq!(old.counters().full, records, "no kexec_load record");
    old.kexec_execute();
    let dump = old.kexec_dump();
    assert_eq!(dump, Vec::<u8>::new());
    let (new, report) = next_kernel(&old, config, &dump);
    assert_eq!(report, RestoreReport::default());
    assert_eq!(current_names(&new), with_boot_aggregate(&[]));
}

/// Boots a kernel, sizes its kexec segment for `boot_aggregate` and `rec-0`
/// to `rec-2`, then measures 40 records named `<prefix>-<i>`, more than the
/// segment has room for, and dumps. Returns the kernel, its dump, the
/// segment size, the SHA-1 encodings of the records in dump order, and how
/// many of them fit whole with the byte that seq_file writes keep spare.
fn overflowing_dump(config: &KernelConfig, prefix: &str) -> (Ima, Vec<u8>, usize, Vec<Vec<u8>>, usize) {
    let old = boot(config.clone());
    measure_many(&old, "rec", 3);
    let segment = old.kexec_load().unwrap() as usize;
    measure_many(&old, prefix, 40);
    old.kexec_execute();
    let dump = old.kexec_dump();
    let encoded = encode_sha1_records(&old, &current(&old));
    let mut whole = 0;
    let mut end = HEADER_SIZE;
    while end + encoded[whole].len() < segment {
        end += encoded[whole].len();
        whole += 1;
    }
    (old, dump, segment, encoded, whole)
}

#[test]
fn failed_kexec_load_keeps_computed_size() {
    // The kexec records carry the segment size computed at the last load,
    // also when that load failed because the size was too large.
    let config = KernelConfig { kexec_extra_memory_kb: 1, ram_bytes: 16 << 10, ..KernelConfig::default() };
    let ima = boot(config);
    measure_many(&ima, "rec", 100);
    let size = ima.render_file(file(&ima, BINARY_SHA1)).len() as u64;
    let full = ima.counters().full;
    ima.kexec_load().unwrap_err();

    ima.kexec_execute();

    let computed = page_align(size + 24 + 24 + 1024);
    assert_eq!(
        buf_text(&last_entry(&ima)),
        format!(
            "kexec_segment_size={computed};ima_binary_runtime_size={};ima_runtime_measurements_count={full};",
            size + 24
        )
    );
}

#[test]
fn kexec_execute_without_load_reports_zero() {
    let ima = boot_default();
    let size = ima.render_file(file(&ima, BINARY_SHA1)).len();

    ima.kexec_execute();

    assert_eq!(
        buf_text(&last_entry(&ima)),
        format!("kexec_segment_size=0;ima_binary_runtime_size={};ima_runtime_measurements_count=1;", size + 24)
    );
}

#[test]
fn overflowing_dump_keeps_whole_records() {
    let config = KernelConfig { kexec_extra_memory_kb: 1, ..KernelConfig::default() };
    let (old, dump, segment, encoded, whole) = overflowing_dump(&config, "later");
    let end = HEADER_SIZE + encoded[..whole].concat().len();
    let entries = current(&old);

    let (new, report) = next_kernel(&old, config, &dump);

    assert!(end + encoded[whole].len() > segment, "setup: the cut record must not end at the segment end");
    assert_eq!(dump.len(), segment);
    assert_eq!(header_u64(&dump, 8), segment as u64, "buffer_size");
    assert_eq!(header_u64(&dump, 16), whole as u64 + 1, "count includes the cut record");
    assert_eq!(&dump[HEADER_SIZE..end], encoded[..whole].concat().as_slice());
    assert_eq!(report.announced, whole as u64 + 1);
    assert_eq!(report.restored, whole as u64);
    let error = report.error.unwrap_or_default();
    let prefix = format!("record {whole} at offset {end}: ");
    assert!(error.starts_with(&prefix), "error {error:?} should start with {prefix:?}");
    let restored_data: Vec<_> = current(&new)[..whole].iter().map(|e| e.record.data.clone()).collect();
    let old_data: Vec<_> = entries[..whole].iter().map(|e| e.record.data.clone()).collect();
    assert_eq!(restored_data, old_data);
    assert_eq!(new.counters().current, whole as u64 + 1);
}

#[test]
fn dump_cut_at_segment_end_restores_zeros() {
    // The cut record would end exactly at the segment end, so only its last
    // piece (the buf bytes) misses the spare byte. The zero bytes in its
    // place parse, and the next kernel restores the record with them.
    let config = KernelConfig { kexec_extra_memory_kb: 1, ..KernelConfig::default() };
    let (old, dump, segment, encoded, whole) = overflowing_dump(&config, "late");
    let end = HEADER_SIZE + encoded[..whole].concat().len();
    let cut = current(&old)[whole].clone();

    let (new, report) = next_kernel(&old, config, &dump);

    assert_eq!(end + encoded[whole].len(), segment, "setup: the cut record must end at the segment end");
    assert_eq!(report, RestoreReport { announced: whole as u64 + 1, restored: whole as u64 + 1, error: None });
    let restored = current(&new)[whole].clone();
    let buffer = cut.record.field(FieldId::Buf).unwrap();
    assert_eq!(event_name(&restored), event_name(&cut));
    assert_eq!(restored.record.field(FieldId::Buf), Some(vec![0u8; buffer.len()].as_slice()));
    assert_ne!(replay_pcr10(&new, &current(&new)), pcr10(&new), "the zeroed record does not replay");
}

#[test]
fn truncated_buffer_keeps_parsed_records() {
    let old = staged_and_current();
    let carried: Vec<Entry> = staged(&old).into_iter().chain(current(&old)).collect();
    let (mut dump, _) = load_execute_dump(&old);
    let encoded = encode_sha1_records(&old, &carried);
    let offset = HEADER_SIZE + encoded[..3].concat().len();
    dump.truncate(offset + 10);
    let size = dump.len() as u64;
    set_header_u64(&mut dump, 8, size);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(
        report,
        RestoreReport {
            announced: 10,
            restored: 3,
            error: Some(format!("record 3 at offset {offset}: truncated template digest")),
        }
    );
    assert_eq!(current_names(&new), with_boot_aggregate(&["rec-0", "rec-1", "boot_aggregate"]));
}

#[test]
fn short_count_reports_trailing_bytes() {
    let old = staged_and_current();
    let carried: Vec<Entry> = staged(&old).into_iter().chain(current(&old)).collect();
    let (mut dump, _) = load_execute_dump(&old);
    let offset = HEADER_SIZE + encode_sha1_records(&old, &carried)[..2].concat().len();
    set_header_u64(&mut dump, 16, 2);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    let trailing = dump.len() - offset;
    assert_eq!(
        report,
        RestoreReport {
            announced: 2,
            restored: 2,
            error: Some(format!("offset {offset}: {trailing} bytes after the last announced record")),
        }
    );
    assert_eq!(current_names(&new), with_boot_aggregate(&["rec-0", "boot_aggregate"]));
}

#[test]
fn header_version_2_is_rejected() {
    let old = staged_and_current();
    let (mut dump, _) = load_execute_dump(&old);
    dump[0..2].copy_from_slice(&2u16.to_le_bytes());

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(
        report,
        RestoreReport {
            announced: 10,
            restored: 0,
            error: Some("offset 0: incompatible kexec buffer version 2; expected 1".into()),
        }
    );
    assert_eq!(current_names(&new), with_boot_aggregate(&[]));
}

#[test]
fn header_size_beyond_buffer_is_rejected() {
    let old = staged_and_current();
    let (mut dump, _) = load_execute_dump(&old);
    let size = dump.len() as u64 + 1;
    set_header_u64(&mut dump, 8, size);

    let (new, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(
        report,
        RestoreReport {
            announced: 10,
            restored: 0,
            error: Some(format!("offset 8: buffer_size {size} does not fit the {}-byte buffer", dump.len())),
        }
    );
    assert_eq!(current_names(&new), with_boot_aggregate(&[]));
}

#[test]
fn header_count_ulong_max_is_rejected() {
    let old = staged_and_current();
    let (mut dump, _) = load_execute_dump(&old);
    set_header_u64(&mut dump, 16, u64::MAX);

    let (_, report) = next_kernel(&old, KernelConfig::default(), &dump);

    assert_eq!(report.restored, 0);
    assert_eq!(report.error, Some("offset 16: record count is ULONG_MAX".into()));
}

// Byte order of the buffer.

#[test]
fn big_endian_round_trip() {
    let config = KernelConfig { byte_order: ByteOrder::Big, ..KernelConfig::default() };
    let old = boot(config.clone());
    measure_many(&old, "rec", 2);
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, config, &dump);

    assert_eq!(u16::from_be_bytes([dump[0], dump[1]]), 1, "version");
    assert_eq!(u64::from_be_bytes(dump[8..16].try_into().unwrap()), dump.len() as u64, "buffer_size");
    assert_eq!(u64::from_be_bytes(dump[16..24].try_into().unwrap()), 5, "count");
    assert_eq!(report, RestoreReport { announced: 5, restored: 5, error: None });
    assert_eq!(replay_pcr10(&new, &current(&new)), pcr10(&new));
}

#[test]
fn canonical_format_dump_is_little_endian() {
    let config = KernelConfig { byte_order: ByteOrder::Big, canonical_format: true, ..KernelConfig::default() };
    let old = boot(config.clone());
    measure_many(&old, "rec", 2);
    let (dump, _) = load_execute_dump(&old);

    let (new, report) = next_kernel(&old, config, &dump);

    assert_eq!(header_u16(&dump, 0), 1, "version");
    assert_eq!(header_u64(&dump, 8), dump.len() as u64, "buffer_size");
    assert_eq!(report, RestoreReport { announced: 5, restored: 5, error: None });
    assert_eq!(replay_pcr10(&new, &current(&new)), pcr10(&new));
}
