//! Helpers shared by the errno and kexec integration tests: booting a kernel
//! on a software TPM, measuring named buffers, snapshots of everything a
//! failed command must leave alone, and expected list renderings built with
//! imalog-core's encoders from independently computed digests.

#![allow(dead_code)]

use imalog_core::{ascii, binary, Bank, Digest, ListKind};
use imalog_kernel::{AuditCounts, Caller, Counters, Entry, Errno, Handle, Ima, KernelConfig, ListFile};
use imalog_tpm::SoftTpm;

/// A root task with CAP_SYS_ADMIN.
pub const ROOT: Caller = Caller { task: 1, cap_sys_admin: true };
/// A second root task.
pub const OTHER: Caller = Caller { task: 2, cap_sys_admin: true };
/// A task without CAP_SYS_ADMIN.
pub const UNPRIVILEGED: Caller = Caller { task: 3, cap_sys_admin: false };

/// The banks swtpm allocates by default.
pub const DEFAULT_BANKS: [Bank; 4] = [Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512];

/// Event names starting with this prefix are measured as violations, so
/// that expected digests do not depend on the model's own violation flag.
pub const VIOLATION_PREFIX: &str = "violation-";

/// Creates a software TPM with `banks` and extends PCRs 0 to 9 with
/// simulated firmware measurements.
pub fn booted_tpm(banks: &[Bank]) -> SoftTpm {
    let mut tpm = SoftTpm::new(banks).expect("software TPM with supported banks");
    tpm.simulate_boot(b"imalog kernel tests");
    tpm
}

/// Cold-boots a kernel with `config` on a TPM with the default banks.
pub fn boot(config: KernelConfig) -> Ima {
    Ima::cold_boot(config, Some(Box::new(booted_tpm(&DEFAULT_BANKS)))).expect("cold boot")
}

/// Cold-boots a kernel with the default configuration.
pub fn boot_default() -> Ima {
    boot(KernelConfig::default())
}

/// Measures a buffer whose name and content are both `name`, or records a
/// violation when the name starts with [`VIOLATION_PREFIX`].
pub fn measure(ima: &Ima, name: &str) -> Result<imalog_kernel::Appended, Errno> {
    if name.starts_with(VIOLATION_PREFIX) {
        ima.add_violation(name.as_bytes())
    } else {
        ima.measure_buffer(name.as_bytes(), name.as_bytes(), None)
    }
}

/// Measures `count` buffers named `<prefix>-0`, `<prefix>-1`, ...
pub fn measure_many(ima: &Ima, prefix: &str, count: usize) {
    for index in 0..count {
        let name = format!("{prefix}-{index}");
        measure(ima, &name).unwrap_or_else(|errno| panic!("measuring {name} failed: {errno}"));
    }
}

/// Returns the list file with that securityfs name.
pub fn file(ima: &Ima, name: &str) -> ListFile {
    ima.lookup_file(name).unwrap_or_else(|| panic!("no list file named {name}")).file
}

/// Opens a list file for writing as [`ROOT`].
pub fn open_write(ima: &Ima, name: &str) -> Handle {
    ima.open_list(file(ima, name), true, ROOT).unwrap_or_else(|errno| panic!("write open of {name} failed: {errno}"))
}

/// Opens a list file read-only as [`ROOT`].
pub fn open_read(ima: &Ima, name: &str) -> Handle {
    ima.open_list(file(ima, name), false, ROOT).unwrap_or_else(|errno| panic!("read open of {name} failed: {errno}"))
}

/// Writes a command through a fresh write descriptor of `name`, releases
/// it, and returns the write's result.
pub fn write_command(ima: &Ima, name: &str, command: &[u8]) -> Result<usize, Errno> {
    let handle = open_write(ima, name);
    let result = ima.write_list(&handle, command);
    ima.release_list(handle, ROOT.task);
    result
}

/// Returns the event name of an entry, without its NUL.
pub fn event_name(entry: &Entry) -> String {
    String::from_utf8_lossy(entry.record.event_name().unwrap_or(b"")).into_owned()
}

/// Returns the records of the current list.
pub fn current(ima: &Ima) -> Vec<Entry> {
    ima.current_entries().map(|node| node.entry.clone()).collect()
}

/// Returns the records of the staged list.
pub fn staged(ima: &Ima) -> Vec<Entry> {
    ima.staged_entries().map(|node| node.entry.clone()).collect()
}

/// Returns the event names of the current list, in order.
pub fn current_names(ima: &Ima) -> Vec<String> {
    current(ima).iter().map(event_name).collect()
}

/// Returns the event names of the staged list, in order.
pub fn staged_names(ima: &Ima) -> Vec<String> {
    staged(ima).iter().map(event_name).collect()
}

/// Returns the banks of the TPM the kernel extends, from its slot table.
pub fn tpm_banks(ima: &Ima) -> Vec<Bank> {
    let slots = ima.slots();
    slots.all()[..slots.tpm_banks()].iter().map(|slot| slot.bank).collect()
}

/// Reads PCR 10 in every TPM bank.
pub fn pcr10(ima: &Ima) -> Vec<Digest> {
    tpm_banks(ima).iter().map(|bank| ima.read_pcr(bank, 10).expect("PCR read").expect("kernel has a TPM")).collect()
}

/// Reads every PCR of every TPM bank, bank by bank.
pub fn all_pcrs(ima: &Ima) -> Vec<Digest> {
    let mut values = Vec::new();
    for bank in tpm_banks(ima) {
        for pcr in 0..imalog_tpm::PCR_COUNT {
            values.push(ima.read_pcr(&bank, pcr).expect("PCR read").expect("kernel has a TPM"));
        }
    }
    values
}

/// The kernel state that a failed command or a refused measurement must
/// leave alone.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub counters: Counters,
    pub audit: AuditCounts,
    pub htable_len: usize,
    pub current: Vec<Entry>,
    pub staged: Vec<Entry>,
    pub pcrs: Vec<Digest>,
    pub count_file: String,
    pub violations_file: String,
}

/// Takes a [`Snapshot`].
pub fn snapshot(ima: &Ima) -> Snapshot {
    Snapshot {
        counters: ima.counters(),
        audit: ima.audit_counts(),
        htable_len: ima.htable_len(),
        current: current(ima),
        staged: staged(ima),
        pcrs: all_pcrs(ima),
        count_file: ima.count_file(),
        violations_file: ima.violations_file(),
    }
}

/// Asserts that nothing in `before` changed, one assert per part.
#[track_caller]
pub fn assert_unchanged(ima: &Ima, before: &Snapshot) {
    let after = snapshot(ima);
    assert_eq!(after.counters, before.counters, "counters changed");
    assert_eq!(after.audit, before.audit, "audit counters changed");
    assert_eq!(after.htable_len, before.htable_len, "hash table size changed");
    assert_eq!(after.current, before.current, "current list changed");
    assert_eq!(after.staged, before.staged, "staged list changed");
    assert_eq!(after.pcrs, before.pcrs, "PCR values changed");
    assert_eq!(after.count_file, before.count_file, "runtime_measurements_count changed");
    assert_eq!(after.violations_file, before.violations_file, "violations changed");
}

/// Computes the template digest a bank's slot must contain from the
/// template data with imalog-core: all zero for a violation, else the
/// bank's hash (padded SHA-1 for banks without one).
pub fn expected_digest(entry: &Entry, bank: &Bank) -> Digest {
    if event_name(entry).starts_with(VIOLATION_PREFIX) {
        Digest::zero(bank.digest_size())
    } else {
        entry.record.computed_bank_digest(bank)
    }
}

/// Builds the bytes a list file must contain for `entries` with
/// imalog-core's kernel encoders and [`expected_digest`].
pub fn expected_rendering(ima: &Ima, file: ListFile, entries: &[Entry]) -> Vec<u8> {
    let bank = ima.slots().all()[file.slot].bank;
    let mut out = Vec::new();
    for entry in entries {
        let digest = expected_digest(entry, &bank);
        match file.format {
            ListKind::Binary => binary::encode_record(&entry.record, &digest, ima.byte_order(), &mut out),
            ListKind::Ascii => ascii::encode_record(&entry.record, &digest, &mut out),
        }
    }
    out
}

/// Reads a whole list file through a handle in chunks of `chunk` bytes,
/// starting at offset 0, until a read returns nothing.
pub fn read_all(ima: &Ima, handle: &Handle, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let part = ima.read_list(handle, out.len() as u64, chunk);
        if part.is_empty() {
            return out;
        }
        out.extend_from_slice(&part);
    }
}
