//! The measurement list of one kernel instance: the current and staged
//! lists, the hash table, the counters, and the commands that move and
//! delete records (`ima_queue.c` and the staging parts of `ima_fs.c`).
//!
//! # Locking
//!
//! The list mutex (`ima_extend_list_mutex`) guards everything in
//! [`ListState`]: both lists' tails and lengths, the hash table, the size
//! counters, the suspend flag and the TPM. It is held for every append
//! together with the TPM extend, so that the order of records equals the
//! order of extends. For `A`, `D` and `N` it is held only for O(1) pointer
//! swaps: finding the N-th record happens before it is taken, and freeing
//! records and the old hash table after it is released.
//!
//! Readers do not take it. They load list heads and `next` pointers
//! atomically (see [`crate::list`]). That is safe against appends, which
//! only link a new node after the tail. The commands that move list
//! pointers are safe because no reader can have a list file open while a
//! writer does (see [`crate::open`]), except the writer itself on its own
//! read-write descriptor, which then reads the list as changed.

use std::collections::HashSet;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use imalog_core::{Bank, ByteOrder, Digest, HashAlgorithm, Template};
use imalog_tpm::Tpm;

use crate::config::{KernelConfig, Slots};
use crate::entry::{build_record, Entry, EventData};
use crate::errno::Errno;
use crate::list::{Head, Node, NodeIter, Tail};
use crate::open::OpenMediator;

/// Size of `struct ima_kexec_hdr`, added to every size counter read.
pub const KEXEC_HEADER_SIZE: u64 = 24;

/// The name of the boot aggregate record.
pub const BOOT_AGGREGATE_NAME: &[u8] = b"boot_aggregate";

/// Key of the hash table: the template digest in the IMA hash slot, and the
/// PCR.
type HashKey = (Digest, u32);

/// The counters of `ima_num_records[]` and `binary_runtime_size[]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records in the current list (`BINARY`).
    pub current: u64,
    /// Records in the staged list (`BINARY_STAGED`).
    pub staged: u64,
    /// Records appended or restored in this kernel instance (`BINARY_FULL`).
    pub full: u64,
    /// Estimated serialized size of the current list.
    pub current_size: u64,
    /// Estimated serialized size of the staged list.
    pub staged_size: u64,
    /// Estimated serialized size of everything appended or restored.
    pub full_size: u64,
    /// Violations since boot (`ima_num_violations`).
    pub violations: u64,
}

/// The outcome of an appended measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Appended to the current list and extended into the TPM.
    Yes,
    /// Appended, but the TPM extend failed (audit cause `TPM_error`); the
    /// PCRs now disagree with the list.
    TpmFailed,
}

/// Audit counters of measurements that were not appended or not extended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditCounts {
    /// Refused as duplicates (`hash_exists`).
    pub hash_exists: u64,
    /// Refused after suspension (`measurements_suspended`).
    pub measurements_suspended: u64,
    /// Appended but not extended (`TPM_error`).
    pub tpm_errors: u64,
}

/// State under the list mutex.
pub(crate) struct ListState {
    pub(crate) current: Tail<Entry>,
    pub(crate) staged: Tail<Entry>,
    pub(crate) full: u64,
    pub(crate) current_size: u64,
    pub(crate) staged_size: u64,
    pub(crate) full_size: u64,
    pub(crate) htable: HashSet<HashKey>,
    pub(crate) suspended: bool,
    /// Segment size computed by the last `kexec_load`, 0 if none.
    pub(crate) kexec_segment_size: u64,
    /// Whether a kexec segment is loaded, so that a dump will happen.
    pub(crate) kexec_loaded: bool,
    pub(crate) tpm: Option<Box<dyn Tpm>>,
    pub(crate) audit: AuditCounts,
    /// Makes the next `D` with `ima_flush_htable` fail to allocate its new
    /// table, to reproduce that error path.
    pub(crate) fail_next_htable_allocation: bool,
}

/// One kernel instance's measurement list.
pub struct Ima {
    pub(crate) config: KernelConfig,
    pub(crate) slots: Slots,
    pub(crate) current: Head<Entry>,
    pub(crate) staged: Head<Entry>,
    pub(crate) state: Mutex<ListState>,
    pub(crate) open: OpenMediator,
    pub(crate) violations: AtomicU64,
    /// Incremented by every command that moves or deletes records, so that
    /// readers can tell whether a cached position is still valid.
    pub(crate) generation: AtomicU64,
    /// How long the last `A`, `D` or `N` held the list mutex, in ns.
    last_command_hold_ns: AtomicU64,
    /// Records freed by `D` and `N` since the last
    /// [`Ima::release_free_memory`].
    freed_records: AtomicU64,
    /// The template descriptors of this instance, custom ones included.
    pub(crate) templates: Mutex<Vec<Arc<Template>>>,
}

/// One PCR value of one bank.
pub type PcrValue = (Bank, u32, Digest);

/// Saturating addition, as the kernel's size counters do.
fn add_size(counter: &mut u64, value: u64) {
    *counter = counter.saturating_add(value);
}

impl Ima {
    /// Creates an instance with empty lists and no boot aggregate yet.
    pub(crate) fn empty(config: KernelConfig, tpm: Option<Box<dyn Tpm>>) -> Self {
        let banks = tpm.as_ref().map(|t| t.banks()).unwrap_or_default();
        let slots = Slots::new(&banks, config.ima_hash);
        let templates = vec![Arc::clone(&config.template), Arc::clone(&config.buffer_template)];
        let initial_size = if config.kexec { 0 } else { u64::MAX };
        Ima {
            slots,
            current: Head::default(),
            staged: Head::default(),
            state: Mutex::new(ListState {
                current: Tail::default(),
                staged: Tail::default(),
                full: 0,
                current_size: initial_size,
                staged_size: initial_size,
                full_size: initial_size,
                htable: HashSet::new(),
                suspended: false,
                kexec_segment_size: 0,
                kexec_loaded: false,
                tpm,
                audit: AuditCounts::default(),
                fail_next_htable_allocation: false,
            }),
            open: OpenMediator::default(),
            violations: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_command_hold_ns: AtomicU64::new(0),
            freed_records: AtomicU64::new(0),
            templates: Mutex::new(templates),
            config,
        }
    }

    /// Boots a kernel from cold: empty lists, then the `boot_aggregate`
    /// record over the TPM's PCRs 0 to 9. `tpm` is `None` for a machine
    /// without a TPM.
    pub fn cold_boot(config: KernelConfig, tpm: Option<Box<dyn Tpm>>) -> Result<Self, KernelError> {
        let ima = Ima::empty(config, tpm);
        ima.add_boot_aggregate()?;
        Ok(ima)
    }

    /// The configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Returns the template digest slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ListState> {
        // The state stays consistent across a panic in another thread: no
        // update below leaves an invariant broken between two statements
        // that could panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the byte order of records.
    pub fn byte_order(&self) -> ByteOrder {
        self.config.list_byte_order()
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        let state = self.lock();
        Counters {
            current: state.current.len,
            staged: state.staged.len,
            full: state.full,
            current_size: state.current_size,
            staged_size: state.staged_size,
            full_size: state.full_size,
            violations: self.violations.load(Ordering::Relaxed),
        }
    }

    /// Returns the audit counters.
    pub fn audit_counts(&self) -> AuditCounts {
        self.lock().audit
    }

    /// Number of (digest, PCR) keys in the hash table.
    pub fn htable_len(&self) -> usize {
        self.lock().htable.len()
    }

    /// True once the reboot notifier has suspended measurement.
    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// `runtime_measurements_count`: records in the current list.
    pub fn runtime_measurements_count(&self) -> u64 {
        self.lock().current.len
    }

    /// Returns how long the last `A`, `D` or `N` held the list mutex.
    pub fn last_command_lock_hold(&self) -> Duration {
        Duration::from_nanos(self.last_command_hold_ns.load(Ordering::Relaxed))
    }

    fn note_hold(&self, start: Instant) {
        self.last_command_hold_ns.store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Serialized size of a record for the kexec size counters, which are
    /// kept only with `CONFIG_IMA_KEXEC` (otherwise they stay at their
    /// `ULONG_MAX` initial value).
    fn size_of(&self, entry: &Entry) -> u64 {
        entry.record.kexec_size_estimate()
    }

    /// Appends an entry and extends the TPM (`ima_add_template_entry`).
    /// Violations skip the duplicate check but are still inserted into the
    /// hash table. `restored` entries (from a kexec buffer) skip both the
    /// hash table and the extend.
    pub(crate) fn append(&self, entry: Entry, violation: bool, restored: bool) -> Result<Appended, Errno> {
        let key = (entry.slot_digest(&self.slots, self.slots.ima_hash()), entry.record.pcr);
        let size = self.size_of(&entry);
        let pcr = entry.record.pcr;
        let extend: Vec<Digest> = if restored {
            Vec::new()
        } else {
            let banks = self.slots.tpm_banks();
            (0..banks)
                .map(|i| {
                    let bank = self.slots.all()[i].bank;
                    if violation {
                        bank.violation_digest()
                    } else {
                        entry.slot_digest(&self.slots, i)
                    }
                })
                .collect()
        };

        let mut state = self.lock();
        if state.suspended && !restored {
            state.audit.measurements_suspended += 1;
            return Err(Errno::Enodev);
        }
        let hashed = !self.config.htable_disabled && !restored;
        if hashed && !violation && state.htable.contains(&key) {
            state.audit.hash_exists += 1;
            return Err(Errno::Eexist);
        }
        state.current.append(&self.current, Node::new(entry));
        if hashed {
            state.htable.insert(key);
        }
        state.full += 1;
        if self.config.kexec {
            add_size(&mut state.current_size, size);
            add_size(&mut state.full_size, size);
        }
        if restored {
            return Ok(Appended::Yes);
        }
        let extended = match state.tpm.as_mut() {
            Some(tpm) => tpm.extend(pcr, &extend).is_ok(),
            None => true,
        };
        if extended {
            Ok(Appended::Yes)
        } else {
            state.audit.tpm_errors += 1;
            Ok(Appended::TpmFailed)
        }
    }

    /// Boots a kernel whose list already holds `records`, as if it had
    /// measured them itself: each record is appended, inserted into the hash
    /// table and extended into the TPM, in order. Nothing is refused as a
    /// duplicate, because a logged list is what it is. No `boot_aggregate`
    /// is added: a logged list starts with its own.
    pub fn boot_with_log(
        config: KernelConfig,
        tpm: Option<Box<dyn Tpm>>,
        records: impl IntoIterator<Item = imalog_core::Record>,
    ) -> Result<Self, KernelError> {
        let ima = Ima::empty(config, tpm);
        for mut record in records {
            let violation = record.is_violation();
            record.byte_order = ima.byte_order();
            let entry = Entry::new(record, &ima.slots, violation);
            ima.append_logged(entry, violation).map_err(KernelError::BootAggregate)?;
        }
        Ok(ima)
    }

    /// Appends a record of a logged list: no duplicate check, but the hash
    /// table learns it and the TPM is extended.
    fn append_logged(&self, entry: Entry, violation: bool) -> Result<Appended, Errno> {
        let key = (entry.slot_digest(&self.slots, self.slots.ima_hash()), entry.record.pcr);
        let mut state = self.lock();
        if !self.config.htable_disabled {
            state.htable.insert(key);
        }
        drop(state);
        if violation {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        // The key is now in the table, so the normal path would refuse the
        // record; append it as a non-duplicate.
        self.append_unchecked(entry, violation)
    }

    /// Appends and extends without the duplicate check.
    fn append_unchecked(&self, entry: Entry, violation: bool) -> Result<Appended, Errno> {
        let size = self.size_of(&entry);
        let pcr = entry.record.pcr;
        let extend: Vec<Digest> = (0..self.slots.tpm_banks())
            .map(|i| {
                if violation {
                    self.slots.all()[i].bank.violation_digest()
                } else {
                    entry.slot_digest(&self.slots, i)
                }
            })
            .collect();
        let mut state = self.lock();
        if state.suspended {
            return Err(Errno::Enodev);
        }
        state.current.append(&self.current, Node::new(entry));
        state.full += 1;
        if self.config.kexec {
            add_size(&mut state.current_size, size);
            add_size(&mut state.full_size, size);
        }
        let extended = match state.tpm.as_mut() {
            Some(tpm) => tpm.extend(pcr, &extend).is_ok(),
            None => true,
        };
        if extended {
            Ok(Appended::Yes)
        } else {
            state.audit.tpm_errors += 1;
            Ok(Appended::TpmFailed)
        }
    }

    /// Measures an event with `template` into `pcr`.
    pub fn measure_event(
        &self,
        template: &Arc<Template>,
        pcr: Option<u32>,
        event: &EventData<'_>,
    ) -> Result<Appended, Errno> {
        let pcr = pcr.unwrap_or(self.config.default_pcr);
        // The policy parser accepts PCRs 0 to 63 (a bit each in the inode's
        // measured_pcrs), and no list reader takes a larger record.
        if pcr > imalog_core::binary::MAX_PCR_INDEX {
            return Err(Errno::Einval);
        }
        if event.violation {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        let record = build_record(template, pcr, event, self.config.ima_hash, self.byte_order());
        if record.data.template_data_len() > u64::from(imalog_core::binary::MAX_TEMPLATE_DATA_LEN) {
            return Err(Errno::Einval);
        }
        let entry = Entry::new(record, &self.slots, event.violation);
        self.append(entry, event.violation, false)
    }

    /// Measures a buffer with the buffer template (`ima-buf` by default),
    /// its digest in the IMA hash, as `process_buffer_measurement` does.
    pub fn measure_buffer(&self, name: &[u8], data: &[u8], pcr: Option<u32>) -> Result<Appended, Errno> {
        let digest = self.config.ima_hash.digest(data);
        let event = EventData {
            name,
            digest: Some((self.config.ima_hash, digest)),
            sha1: Some(HashAlgorithm::Sha1.digest(data)),
            buffer: Some(data),
            ..Default::default()
        };
        let template = Arc::clone(&self.config.buffer_template);
        self.measure_event(&template, pcr, &event)
    }

    /// Records a violation for `name` (`ima_add_violation`): the counter
    /// goes up first, then a record with zero digests is appended, and the
    /// PCR is extended with the 0xFF pattern.
    pub fn add_violation(&self, name: &[u8]) -> Result<Appended, Errno> {
        let event = EventData { name, violation: true, ..Default::default() };
        let template = Arc::clone(&self.config.template);
        self.measure_event(&template, None, &event)
    }

    /// Appends the `boot_aggregate` record (`ima_add_boot_aggregate`).
    pub(crate) fn add_boot_aggregate(&self) -> Result<Appended, KernelError> {
        let (algorithm, digest) = self.boot_aggregate_digest()?;
        let template = Arc::clone(&self.config.template);
        let legacy_digest = if algorithm == HashAlgorithm::Sha1 { Some(digest) } else { None };
        let event = EventData {
            name: BOOT_AGGREGATE_NAME,
            digest: Some((algorithm, digest)),
            // The legacy `d` field carries a SHA-1 aggregate only, and is
            // zero with another bank.
            sha1: Some(legacy_digest.unwrap_or_else(|| Digest::zero(20))),
            ..Default::default()
        };
        let record = build_record(&template, self.config.default_pcr, &event, self.config.ima_hash, self.byte_order());
        let entry = Entry::new(record, &self.slots, false);
        self.append(entry, false, false).map_err(KernelError::BootAggregate)
    }

    /// Computes the boot aggregate (`ima_calc_boot_aggregate`): a hash over
    /// PCRs 0 to 7 of one bank, plus 8 and 9 unless the bank is SHA-1. The bank is the
    /// one of the IMA hash if allocated, else the last SHA-256 or SHA-384
    /// bank, else SHA-1. Without a TPM it is a zero digest of the IMA hash.
    fn boot_aggregate_digest(&self) -> Result<(HashAlgorithm, Digest), KernelError> {
        let tpm_slots = &self.slots.all()[..self.slots.tpm_banks()];
        let mut chosen: Option<Bank> = None;
        for slot in tpm_slots {
            if slot.bank.kernel_algorithm() == Some(self.config.ima_hash) {
                chosen = Some(slot.bank);
                break;
            }
        }
        if chosen.is_none() {
            for slot in tpm_slots {
                if matches!(slot.bank.kernel_algorithm(), Some(HashAlgorithm::Sha256 | HashAlgorithm::Sha384)) {
                    chosen = Some(slot.bank);
                }
            }
        }
        if chosen.is_none() {
            chosen = tpm_slots.iter().map(|s| s.bank).find(|b| b.kernel_algorithm() == Some(HashAlgorithm::Sha1));
        }
        let (bank, algorithm) = match chosen.and_then(|b| b.kernel_algorithm().map(|a| (b, a))) {
            Some(found) => found,
            None => return Ok((self.config.ima_hash, Digest::zero(self.config.ima_hash.digest_size()))),
        };
        let last_pcr = if algorithm == HashAlgorithm::Sha1 { 7 } else { 9 };
        let mut state = self.lock();
        let Some(tpm) = state.tpm.as_mut() else {
            return Ok((self.config.ima_hash, Digest::zero(self.config.ima_hash.digest_size())));
        };
        let mut values = Vec::with_capacity(10);
        for pcr in 0..=last_pcr {
            values.push(tpm.read(&bank, pcr).map_err(|e| KernelError::Tpm(e.to_string()))?);
        }
        let parts: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        Ok((algorithm, algorithm.digest_parts(&parts)))
    }

    /// `A`: moves the whole current list to the staged list.
    pub fn stage(&self) -> Result<(), Errno> {
        let mut state = self.lock();
        let start = Instant::now();
        let result = (|| {
            if state.staged.len > 0 {
                return Err(Errno::Eexist);
            }
            if state.current.len == 0 {
                return Err(Errno::Enoent);
            }
            if state.suspended {
                return Err(Errno::Eacces);
            }
            self.staged.replace(self.current.replace(None));
            state.staged = mem::take(&mut state.current);
            if self.config.kexec {
                state.staged_size = mem::take(&mut state.current_size);
            }
            self.generation.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })();
        self.note_hold(start);
        drop(state);
        result
    }

    /// `D`: deletes every staged record. The records (and with
    /// `ima_flush_htable` the old hash table) are freed after the mutex is
    /// released.
    pub fn delete_staged(&self) -> Result<(), Errno> {
        let mut old_table = HashSet::new();
        let old_list;
        let freed;
        {
            let mut state = self.lock();
            let start = Instant::now();
            let state_records = state.staged.len;
            if state.staged.len == 0 {
                self.note_hold(start);
                return Err(Errno::Enoent);
            }
            if state.suspended {
                self.note_hold(start);
                return Err(Errno::Estale);
            }
            old_list = self.staged.replace(None);
            state.staged = Tail::default();
            if self.config.kexec {
                state.staged_size = 0;
            }
            self.generation.fetch_add(1, Ordering::Relaxed);
            if self.config.flushes_htable() {
                if mem::take(&mut state.fail_next_htable_allocation) {
                    // The staged records are already detached and counted
                    // out: they are lost, as in the kernel.
                    self.note_hold(start);
                    drop(state);
                    drop(old_list);
                    return Err(Errno::Enomem);
                }
                old_table = mem::take(&mut state.htable);
            }
            self.note_hold(start);
            freed = state_records;
        }
        drop(old_table);
        drop(old_list);
        self.freed_records.fetch_add(freed, Ordering::Relaxed);
        Ok(())
    }

    /// `N`: deletes the first `count` records of the current list. The N-th
    /// record is found by a walk without the mutex, which only appends can
    /// race with; they touch only the tail.
    pub fn delete_first(&self, count: u64) -> Result<(), Errno> {
        if count == 0 {
            return Err(Errno::Einval);
        }
        let mut freed_size = 0u64;
        let mut last = None;
        for (seen, node) in self.current.iter().enumerate() {
            freed_size = freed_size.saturating_add(self.size_of(&node.entry));
            if seen as u64 + 1 == count {
                last = Some(node);
                break;
            }
        }
        let Some(last) = last else {
            return Err(Errno::Enoent);
        };

        let old_head;
        {
            let mut state = self.lock();
            let start = Instant::now();
            if state.suspended {
                self.note_hold(start);
                return Err(Errno::Estale);
            }
            let rest = last.next();
            if rest.is_none() {
                state.current.last = None;
            }
            old_head = self.current.replace(rest);
            state.current.len -= count;
            if self.config.kexec {
                state.current_size = state.current_size.saturating_sub(freed_size);
            }
            self.generation.fetch_add(1, Ordering::Relaxed);
            self.note_hold(start);
        }
        drop(last);
        drop(old_head);
        self.freed_records.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// Benchmark variant of `N` as the March 2026 v3 series did it: under the
    /// mutex, stage the whole current list, walk to the N-th record, cut, and
    /// splice the rest back. Returns how long the mutex was held. Not part of
    /// the merged interface.
    #[doc(hidden)]
    pub fn delete_first_v3_variant(&self, count: u64) -> Result<Duration, Errno> {
        let old_head;
        let held;
        {
            let mut state = self.lock();
            let start = Instant::now();
            if count == 0 || count > state.current.len {
                return Err(Errno::Enoent);
            }
            // Stage everything: the current list moves aside.
            let staged_head = self.current.replace(None);
            let mut staged_tail = mem::take(&mut state.current);
            // Walk to the N-th record under the mutex.
            let mut freed_size = 0u64;
            let mut last = None;
            for (seen, node) in NodeIter::from(staged_head.clone()).enumerate() {
                freed_size = freed_size.saturating_add(self.size_of(&node.entry));
                if seen as u64 + 1 == count {
                    last = Some(node);
                    break;
                }
            }
            let last = last.ok_or(Errno::Enoent)?;
            // Splice what follows back to the head of the current list.
            let rest = last.next();
            if rest.is_none() {
                staged_tail.last = None;
            }
            staged_tail.len -= count;
            self.current.replace(rest);
            state.current = staged_tail;
            if self.config.kexec {
                state.current_size = state.current_size.saturating_sub(freed_size);
            }
            old_head = staged_head;
            self.generation.fetch_add(1, Ordering::Relaxed);
            held = start.elapsed();
        }
        drop(old_head);
        Ok(held)
    }

    /// Benchmark variant of `N` as the trimming proposals did it: walk to
    /// the N-th record with the mutex held, then cut. Returns how long the
    /// mutex was held. Not part of the merged interface.
    #[doc(hidden)]
    pub fn delete_first_locked_walk_variant(&self, count: u64) -> Result<Duration, Errno> {
        let old_head;
        let held;
        {
            let mut state = self.lock();
            let start = Instant::now();
            let mut freed_size = 0u64;
            let mut last = None;
            for (seen, node) in self.current.iter().enumerate() {
                freed_size = freed_size.saturating_add(self.size_of(&node.entry));
                if seen as u64 + 1 == count {
                    last = Some(node);
                    break;
                }
            }
            let last = last.ok_or(Errno::Enoent)?;
            let rest = last.next();
            if rest.is_none() {
                state.current.last = None;
            }
            old_head = self.current.replace(rest);
            state.current.len -= count;
            if self.config.kexec {
                state.current_size = state.current_size.saturating_sub(freed_size);
            }
            self.generation.fetch_add(1, Ordering::Relaxed);
            held = start.elapsed();
        }
        drop(old_head);
        Ok(held)
    }

    /// Gives the memory of records freed by `D` and `N` back to the
    /// operating system, when enough were freed since the last call to make
    /// it worth a pass over the heap. `kfree` returns memory at once, but
    /// glibc keeps freed blocks in its heap until asked. The commands do not
    /// call this themselves, because the pass locks the allocator and would
    /// delay concurrent measurements, which the kernel's frees do not. A
    /// long-running host of the model calls it after deletions.
    pub fn release_free_memory(&self) -> bool {
        if self.freed_records.load(Ordering::Relaxed) < crate::memory::RELEASE_THRESHOLD {
            return false;
        }
        self.freed_records.store(0, Ordering::Relaxed);
        crate::memory::release_free_memory();
        true
    }

    /// Makes the next `D` with `ima_flush_htable` fail as if allocating the
    /// new hash table had failed (ENOMEM).
    #[doc(hidden)]
    pub fn fail_next_htable_allocation(&self) {
        self.lock().fail_next_htable_allocation = true;
    }

    /// Iterates over the current list from its head.
    pub fn current_entries(&self) -> NodeIter<Entry> {
        self.current.iter()
    }

    /// Iterates over the staged list from its head.
    pub fn staged_entries(&self) -> NodeIter<Entry> {
        self.staged.iter()
    }

    /// Reads a PCR of the TPM this kernel extends.
    pub fn read_pcr(&self, bank: &Bank, pcr: u32) -> Result<Option<Digest>, KernelError> {
        let mut state = self.lock();
        match state.tpm.as_mut() {
            Some(tpm) => tpm.read(bank, pcr).map(Some).map_err(|e| KernelError::Tpm(e.to_string())),
            None => Ok(None),
        }
    }

    /// Quotes `pcrs` in every bank of the TPM this kernel extends, and reads
    /// their values, both with the list mutex held so that no extend falls
    /// between them: the values are exactly the ones the quote covers.
    pub fn quote_with_values(
        &self,
        nonce: &[u8],
        pcrs: &[u32],
    ) -> Result<(imalog_tpm::Quote, Vec<PcrValue>), KernelError> {
        let mut state = self.lock();
        let tpm = state.tpm.as_mut().ok_or_else(|| KernelError::Tpm("this kernel has no TPM to quote".into()))?;
        let banks = tpm.banks();
        let mut values = Vec::new();
        for bank in &banks {
            for pcr in pcrs {
                values.push((*bank, *pcr, tpm.read(bank, *pcr).map_err(|e| KernelError::Tpm(e.to_string()))?));
            }
        }
        let selection: Vec<(Bank, Vec<u32>)> = banks.iter().map(|b| (*b, pcrs.to_vec())).collect();
        let quote = tpm.quote(nonce, &selection).map_err(|e| KernelError::Tpm(e.to_string()))?;
        Ok((quote, values))
    }

    /// Takes the TPM out, for example to hand it to the next kernel after a
    /// kexec.
    pub fn take_tpm(&self) -> Option<Box<dyn Tpm>> {
        self.lock().tpm.take()
    }

    /// Returns the mediation state of the list files.
    pub fn open_state(&self) -> crate::open::OpenSnapshot {
        self.open.snapshot()
    }

    /// Returns the open-file mediator.
    pub fn mediator(&self) -> &OpenMediator {
        &self.open
    }

    /// Runs `f` with the list mutex held, as a concurrent kernel path that
    /// holds it would. Benchmarks use it to model lock contention.
    #[doc(hidden)]
    pub fn with_list_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _state = self.lock();
        f()
    }
}

/// A failure that stops a kernel instance from booting or acting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The TPM failed.
    #[error("TPM: {0}")]
    Tpm(String),
    /// The boot aggregate could not be appended.
    #[error("boot_aggregate was not appended: {0}")]
    BootAggregate(Errno),
    /// Reading a file to measure failed.
    #[error("{path}: {message}")]
    File {
        /// The path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The kexec segment could not be sized.
    #[error("kexec_load: {0}")]
    KexecLoad(String),
}
