//! The export protocol: take records out of the kernel with either flavour,
//! store them durably before the kernel deletes them, and resolve what a
//! crash or a kexec left half done.
//!
//! One round with staging (`A` then `D`), holding the writer open across
//! read and delete so that no other process can touch the lists:
//!
//! 1. resolve pending chunks left by an earlier round;
//! 2. open `binary_runtime_measurements_staged` read-write, retrying EBUSY;
//! 3. `A`: EEXIST means a staged list is already there (a crashed run left
//!    it), which is read and exported like a fresh one; ENOENT means nothing
//!    new; EACCES means the kernel is suspending for kexec;
//! 4. read the staged list and check that it decodes;
//! 5. store it as a pending chunk (synced);
//! 6. `D`: on success commit the chunk to a segment and remove the pending
//!    file; on ESTALE the kernel is suspending and the chunk will reappear
//!    at the head of the next kernel's list, so the pending copy is dropped.
//!
//! With `N` the round reads the current list instead, stores it as pending,
//! and writes its record count to the original file. A staged list that
//! someone left behind is exported first, because its records are older
//! than the current list (the mixed-flavour ordering rule).
//!
//! A pending chunk P is resolved by comparing it with the kernel's lists:
//! if the staged list is P, the kernel has not deleted it yet (delete, then
//! commit); if the current list starts with P, the kernel still has it or
//! got it back from kexec (drop P, it is exported again); otherwise the
//! kernel deleted it (commit P).

use std::io;
use std::thread;
use std::time::Duration;

use imalog_core::{Bank, ByteOrder, ListKind, ListOptions, ListReader};

use crate::faults::{self, Point};
use crate::securityfs::{Capability, CommandResult, ListFile, Securityfs, BINARY_LIST, BINARY_STAGED};
use crate::store::{Pending, Store, StoreError};

/// How the collector takes records out of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `A` on a `_staged` file, read, then `D`.
    Staged,
    /// Read the current list, then write its record count (`N`).
    DeleteN,
    /// Only read; the kernel keeps everything.
    ReadOnly,
}

impl std::str::FromStr for Flavor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "staged" => Ok(Flavor::Staged),
            "delete-n" => Ok(Flavor::DeleteN),
            "read-only" => Ok(Flavor::ReadOnly),
            _ => Err(format!("invalid flavour '{text}': expected staged, delete-n or read-only")),
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::Staged => "staged",
            Flavor::DeleteN => "delete-n",
            Flavor::ReadOnly => "read-only",
        })
    }
}

/// A round that could not complete. Nothing was deleted in the kernel that
/// is not stored durably.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A securityfs operation failed.
    #[error("{file}: {source}")]
    Securityfs {
        /// The file.
        file: String,
        /// The cause.
        source: io::Error,
    },
    /// A command failed with an unexpected errno.
    #[error("{file}: writing {command:?} failed with errno {errno}")]
    Command {
        /// The file.
        file: String,
        /// The command.
        command: String,
        /// The errno.
        errno: i32,
    },
    /// The list files stayed busy.
    #[error("{file}: still busy after {attempts} attempts; another process has the list files open")]
    Busy {
        /// The file.
        file: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The records read do not decode.
    #[error("{file}: {message}")]
    Decode {
        /// The file.
        file: String,
        /// The decoding error.
        message: String,
    },
    /// The kernel's list no longer matches the stored history.
    #[error("{file}: {message}")]
    Diverged {
        /// The list file.
        file: String,
        /// What differs.
        message: String,
    },
    /// The store failed; the kernel keeps the records.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The flavour needs a capability the kernel does not have.
    #[error("the {flavor} flavour needs {needed}; this kernel offers {offered:?}")]
    Unsupported {
        /// The flavour.
        flavor: Flavor,
        /// What it needs.
        needed: &'static str,
        /// What the kernel offers.
        offered: Capability,
    },
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Records committed by this round (pending resolutions included).
    pub committed: u64,
    /// Pending chunks dropped because the kernel still has, or got back,
    /// their records.
    pub dropped: u64,
    /// True when the kernel refused because it is suspending for kexec.
    pub suspending: bool,
    /// Absolute index of the next record to store, after the round.
    pub next_index: u64,
    /// Epoch after the round.
    pub epoch: u64,
}

/// Retries of EBUSY within one round, with doubling waits from 10 ms.
const BUSY_ATTEMPTS: u32 = 8;

/// The collector's export side.
pub struct Exporter {
    fs: Securityfs,
    store: Store,
    flavor: Flavor,
    capability: Capability,
    boot_identity: Box<dyn Fn() -> Option<String> + Send>,
}

fn fs_error(file: &str) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Securityfs { file: file.to_string(), source }
}

/// Counts the records of a SHA-1 binary list and finds its byte order; an
/// error names the offset and record.
fn decode_chunk(file: &str, payload: &[u8], order: Option<ByteOrder>) -> Result<(u64, ByteOrder), ExportError> {
    if payload.is_empty() {
        return Ok((0, order.unwrap_or_default()));
    }
    let options =
        ListOptions { kind: Some(ListKind::Binary), bank: Some(Bank::SHA1), byte_order: order, bank_hint: None };
    let decode = |message: String| ExportError::Decode { file: file.to_string(), message };
    let mut reader = ListReader::open(payload, options).map_err(|e| decode(e.to_string()))?;
    let found_order = reader.format().map(|f| f.byte_order).unwrap_or_default();
    let mut record = imalog_core::binary::empty_record();
    let mut count = 0;
    while reader.read_record(&mut record).map_err(|e| decode(e.to_string()))? {
        count += 1;
    }
    Ok((count, found_order))
}

/// Splits off the first `count` records of a binary list; returns their
/// bytes, or `None` when the list holds fewer.
fn prefix_bytes(payload: &[u8], count: u64, order: ByteOrder) -> Option<&[u8]> {
    let layout = imalog_core::BinaryLayout { digest_size: 20, byte_order: order };
    let mut decoder = imalog_core::BinaryDecoder::new(payload, layout);
    let mut record = imalog_core::binary::empty_record();
    for _ in 0..count {
        if !decoder.read_record(&mut record).ok()? {
            return None;
        }
    }
    payload.get(..decoder.offset() as usize)
}

impl Exporter {
    /// An exporter from `fs` into `store`. `boot_identity` returns the
    /// current boot's identity (a real kernel's boot_id), which changes on
    /// every boot including kexec.
    pub fn new(
        fs: Securityfs,
        store: Store,
        flavor: Flavor,
        boot_identity: Box<dyn Fn() -> Option<String> + Send>,
    ) -> Result<Self, ExportError> {
        let capability = fs.capability();
        match (flavor, capability) {
            (Flavor::Staged, Capability::Staging) | (Flavor::ReadOnly, _) => {}
            (Flavor::DeleteN, Capability::Staging | Capability::DeleteOnly) => {}
            (Flavor::Staged, offered) => {
                return Err(ExportError::Unsupported { flavor, needed: "the _staged files", offered })
            }
            (Flavor::DeleteN, offered) => {
                return Err(ExportError::Unsupported { flavor, needed: "writable list files", offered })
            }
        }
        Ok(Exporter { fs, store, flavor, capability, boot_identity })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The securityfs directory.
    pub fn securityfs(&self) -> &Securityfs {
        &self.fs
    }

    /// The flavour.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Opens a list file for writing, retrying EBUSY with backoff.
    fn open_writer(&self, name: &str) -> Result<ListFile, ExportError> {
        self.open_with_retry(name, true)
    }

    fn open_with_retry(&self, name: &str, write: bool) -> Result<ListFile, ExportError> {
        let mut wait = Duration::from_millis(10);
        for attempt in 1..=BUSY_ATTEMPTS {
            let opened = if write { self.fs.open_writer(name) } else { self.fs.open_reader(name) };
            match opened {
                Ok(file) => return Ok(file),
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::info!(
                        file = name,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "list files busy; retrying"
                    );
                    thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(fs_error(name)(error)),
            }
        }
        Err(ExportError::Busy { file: name.to_string(), attempts: BUSY_ATTEMPTS })
    }

    /// Runs one export round.
    pub fn round(&mut self) -> Result<RoundReport, ExportError> {
        let mut report = RoundReport::default();
        match self.flavor {
            Flavor::Staged => self.round_staged(&mut report)?,
            Flavor::DeleteN => self.round_delete_n(&mut report)?,
            Flavor::ReadOnly => self.round_read_only(&mut report)?,
        }
        report.next_index = self.store.next_index();
        report.epoch = self.store.epoch();
        Ok(report)
    }

    /// Checks the boot identity; a new boot whose current list starts with
    /// a `boot_aggregate` is a cold boot and starts a new epoch, any other
    /// new boot is a kexec, which continues the history. A read-only
    /// collector deletes nothing, so after a kexec its list still starts
    /// with the first boot's `boot_aggregate`. For it, a list that begins
    /// with the whole stored history means a kexec.
    fn check_boot(&mut self, current: &[u8]) -> Result<(), ExportError> {
        let identity = (self.boot_identity)();
        let known = self.store.meta().boot_identity.clone();
        if identity.is_none() || identity == known {
            return Ok(());
        }
        let order = self.store.byte_order();
        let carried_history = self.flavor == Flavor::ReadOnly && {
            let mut stored = Vec::new();
            self.store.write_records(0, &mut stored)?;
            current.starts_with(&stored)
        };
        // NOTE: a kexec that carries no record (no critical-data policy and
        // an empty list, or a failed kexec_load) also starts with
        // boot_aggregate, and is taken for a cold boot.
        let cold_boot = known.is_some()
            && self.store.next_index() > 0
            && starts_with_boot_aggregate(current, order)
            && !carried_history;
        if cold_boot {
            tracing::info!(old = ?known, new = ?identity, epoch = self.store.epoch(), "boot identity changed and the list starts with boot_aggregate: cold boot");
            self.store.start_new_epoch()?;
        } else if known.is_some() {
            tracing::info!(old = ?known, new = ?identity, next_index = self.store.next_index(), "boot identity changed: kexec, history continues");
        }
        self.store.set_meta(order, identity)?;
        Ok(())
    }

    fn round_staged(&mut self, report: &mut RoundReport) -> Result<(), ExportError> {
        let mut staged = self.open_writer(BINARY_STAGED)?;
        // The writer task may open the original list too (read-write).
        let mut original = self.open_writer(BINARY_LIST)?;
        let current = original.read_all().map_err(fs_error(BINARY_LIST))?;
        self.resolve_pending(Some(&mut staged), &current, report)?;
        self.check_boot(&current)?;
        drop(original);
        self.export_staged(&mut staged, report)
    }

    /// Stages (or takes an existing staged list), stores, deletes, commits.
    fn export_staged(&mut self, staged: &mut ListFile, report: &mut RoundReport) -> Result<(), ExportError> {
        match staged.command("A") {
            CommandResult::Done => {
                faults::check(Point::AfterStage, || {});
            }
            CommandResult::StagedExists => {
                tracing::info!("a staged list is already there; exporting it first");
            }
            CommandResult::NothingThere => return Ok(()),
            CommandResult::Suspending => {
                tracing::info!("kernel is suspending for kexec; staging refused");
                report.suspending = true;
                return Ok(());
            }
            result => return Err(command_error(BINARY_STAGED, "A", result)),
        }
        let payload = staged.read_all().map_err(fs_error(BINARY_STAGED))?;
        faults::check(Point::DuringRead, || {});
        self.store_then_delete(staged, BINARY_STAGED, payload, ("D", |_| "D".to_string()), report)
    }

    /// Stores `payload`, read from `list`, as a durable pending chunk, then
    /// writes the delete command and commits the chunk. `delete` names the
    /// command (`D` or `N`) and builds its text from the record count. When
    /// the kernel is suspending for kexec it keeps the records, so the
    /// pending copy is dropped.
    fn store_then_delete(
        &mut self,
        list: &mut ListFile,
        name: &str,
        payload: Vec<u8>,
        delete: (&str, impl FnOnce(u64) -> String),
        report: &mut RoundReport,
    ) -> Result<(), ExportError> {
        let (count, order) = decode_chunk(name, &payload, self.store.known_byte_order())?;
        if count == 0 {
            return Ok(());
        }
        self.store.set_meta(order, self.store.meta().boot_identity.clone())?;
        let first_index = self.store.next_index();
        let pending = Pending { first_index, count, payload };
        warn_if_partial(&pending, order);
        self.store.write_pending(&pending)?;
        faults::check(Point::AfterStore, || {});
        let (label, build) = delete;
        let command = build(count);
        match list.command(&command) {
            CommandResult::Done => {
                faults::check(Point::AfterDelete, || {});
                self.commit(pending, report)
            }
            CommandResult::Stale => {
                tracing::info!(
                    first_index,
                    count,
                    "kernel is suspending for kexec; {label} refused, dropping the pending copy"
                );
                self.store.remove_pending(first_index)?;
                report.dropped += 1;
                report.suspending = true;
                Ok(())
            }
            result => Err(command_error(name, &command, result)),
        }
    }

    fn commit(&mut self, pending: Pending, report: &mut RoundReport) -> Result<(), ExportError> {
        self.store.commit(pending.first_index, pending.count, &pending.payload)?;
        self.store.remove_pending(pending.first_index)?;
        tracing::info!(
            first_index = pending.first_index,
            last_index = pending.first_index + pending.count - 1,
            flavor = %self.flavor,
            "records committed"
        );
        report.committed += pending.count;
        Ok(())
    }

    /// Resolves every pending chunk against the kernel's lists. `staged`
    /// is a writer on the staged file when the kernel has one.
    fn resolve_pending(
        &mut self,
        mut staged: Option<&mut ListFile>,
        current: &[u8],
        report: &mut RoundReport,
    ) -> Result<(), ExportError> {
        for pending in self.store.pending()? {
            let order = self.store.byte_order();
            if pending.first_index < self.store.next_index() {
                // Committed just before a crash; only the removal is missing.
                tracing::info!(first_index = pending.first_index, "pending chunk already committed; removing it");
                self.store.remove_pending(pending.first_index)?;
                continue;
            }
            if pending.first_index > self.store.next_index() {
                return Err(ExportError::Store(StoreError::Gap {
                    expected: self.store.next_index(),
                    found: pending.first_index,
                }));
            }
            let staged_now = match staged.as_deref_mut() {
                Some(file) => file.read_all().map_err(fs_error(BINARY_STAGED))?,
                None => Vec::new(),
            };
            if let (Some(file), false) = (staged.as_deref_mut(), staged_now.is_empty() || staged_now != pending.payload)
            {
                tracing::info!(
                    first_index = pending.first_index,
                    count = pending.count,
                    "pending chunk is still staged; deleting it now"
                );
                match file.command("D") {
                    CommandResult::Done => self.commit(pending, report)?,
                    CommandResult::Stale => {
                        tracing::info!(first_index = pending.first_index, "kexec under way; dropping the pending copy");
                        self.store.remove_pending(pending.first_index)?;
                        report.dropped += 1;
                    }
                    result => return Err(command_error(BINARY_STAGED, "D", result)),
                }
            } else if prefix_bytes(current, pending.count, order) == Some(pending.payload.as_slice()) {
                tracing::info!(
                    first_index = pending.first_index,
                    count = pending.count,
                    "the kernel's current list starts with the pending chunk (not deleted, or carried by kexec); dropping the copy"
                );
                self.store.remove_pending(pending.first_index)?;
                report.dropped += 1;
            } else {
                tracing::info!(
                    first_index = pending.first_index,
                    count = pending.count,
                    "the kernel no longer has the pending chunk; committing it"
                );
                self.commit(pending, report)?;
            }
        }
        Ok(())
    }

    /// Returns the pending chunks whose records are in neither of the
    /// kernel's lists (`staged`, `current`). The kernel deleted them, and a
    /// failed or interrupted commit left the pending file as their only
    /// copy, so a history must place them right after the committed records.
    pub fn pending_outside_kernel(&self, staged: &[u8], current: &[u8]) -> Result<Vec<Pending>, ExportError> {
        if self.flavor == Flavor::ReadOnly {
            return Ok(Vec::new());
        }
        let order = self.store.byte_order();
        let mut next_index = self.store.next_index();
        let mut chunks = Vec::new();
        for pending in self.store.pending()? {
            if pending.first_index < next_index {
                continue;
            }
            let still_staged = !staged.is_empty() && staged == pending.payload.as_slice();
            let still_current = prefix_bytes(current, pending.count, order) == Some(pending.payload.as_slice());
            if still_staged || still_current {
                continue;
            }
            if pending.first_index > next_index {
                return Err(ExportError::Store(StoreError::Gap { expected: next_index, found: pending.first_index }));
            }
            next_index += pending.count;
            chunks.push(pending);
        }
        Ok(chunks)
    }

    fn round_delete_n(&mut self, report: &mut RoundReport) -> Result<(), ExportError> {
        let mut original = self.open_writer(BINARY_LIST)?;
        let mut staged =
            if self.capability == Capability::Staging { Some(self.open_writer(BINARY_STAGED)?) } else { None };
        let current = original.read_all().map_err(fs_error(BINARY_LIST))?;
        self.resolve_pending(staged.as_mut(), &current, report)?;
        self.check_boot(&current)?;

        // Records someone staged are older than the current list: export
        // them first, or the history would be out of order.
        if let Some(staged) = staged.as_mut() {
            if !staged.read_all().map_err(fs_error(BINARY_STAGED))?.is_empty() {
                tracing::info!("a staged list is present; exporting it before deleting from the current list");
                self.export_staged(staged, report)?;
            }
        }

        let payload = original.read_all().map_err(fs_error(BINARY_LIST))?;
        faults::check(Point::DuringRead, || {});
        self.store_then_delete(&mut original, BINARY_LIST, payload, ("N", |count| count.to_string()), report)
    }

    fn round_read_only(&mut self, report: &mut RoundReport) -> Result<(), ExportError> {
        // A pending chunk left by an interrupted commit contains the records
        // that follow the stored ones: commit it. One behind is committed
        // already.
        for pending in self.store.pending()? {
            let first_index = pending.first_index;
            if first_index == self.store.next_index() {
                tracing::info!(
                    first_index,
                    count = pending.count,
                    "committing a pending chunk left by an interrupted round"
                );
                self.store.commit(first_index, pending.count, &pending.payload)?;
                report.committed += pending.count;
            } else if first_index > self.store.next_index() {
                return Err(ExportError::Store(StoreError::Gap {
                    expected: self.store.next_index(),
                    found: first_index,
                }));
            }
            self.store.remove_pending(first_index)?;
        }
        let mut reader = self.open_with_retry(BINARY_LIST, false)?;
        let payload = reader.read_all().map_err(fs_error(BINARY_LIST))?;
        drop(reader);
        self.check_boot(&payload)?;
        let (total, order) = decode_chunk(BINARY_LIST, &payload, self.store.known_byte_order())?;
        let stored = self.store.next_index();
        if total < stored {
            return Err(ExportError::Diverged {
                file: BINARY_LIST.to_string(),
                message: format!(
                    "the kernel's list has {total} records, fewer than the {stored} stored; another process \
                     deleted records, which a read-only collector cannot account for"
                ),
            });
        }
        let skip = self.check_stored_prefix(&payload, order)?;
        if total == stored {
            return Ok(());
        }
        self.store.set_meta(order, self.store.meta().boot_identity.clone())?;
        let chunk = Pending { first_index: stored, count: total - stored, payload: payload[skip..].to_vec() };
        warn_if_partial(&chunk, order);
        self.commit_direct(chunk, report)
    }

    /// Checks that the kernel's list still begins with the stored history,
    /// by comparing the last stored chunk with the same records of the
    /// list. A read-only collector deletes nothing, so a difference means
    /// another process deleted or replaced records. Returns the byte offset
    /// of the first record not stored yet.
    fn check_stored_prefix(&self, payload: &[u8], order: ByteOrder) -> Result<usize, ExportError> {
        let Some(first) = self.store.last_chunk_start() else { return Ok(0) };
        let stored = self.store.next_index();
        let mut expected = Vec::new();
        self.store.write_records(first, &mut expected)?;
        // One pass over the list finds where record `first` and record
        // `stored` start.
        let layout = imalog_core::BinaryLayout { digest_size: 20, byte_order: order };
        let mut decoder = imalog_core::BinaryDecoder::new(payload, layout);
        let mut record = imalog_core::binary::empty_record();
        let mut bounds = (None, None);
        for index in 0..=stored {
            if index == first {
                bounds.0 = Some(decoder.offset() as usize);
            }
            if index == stored {
                bounds.1 = Some(decoder.offset() as usize);
            } else if !matches!(decoder.read_record(&mut record), Ok(true)) {
                break;
            }
        }
        match bounds {
            (Some(start), Some(end)) if payload[start..end] == expected[..] => Ok(end),
            _ => Err(ExportError::Diverged {
                file: BINARY_LIST.to_string(),
                message: format!(
                    "records {first} to {} of the kernel's list differ from the stored ones; another process \
                     deleted or replaced records, which a read-only collector cannot account for",
                    stored - 1
                ),
            }),
        }
    }

    /// Commits records that stay in the kernel. The pending copy written
    /// first is what lets the store tell an interrupted append from damage.
    fn commit_direct(&mut self, chunk: Pending, report: &mut RoundReport) -> Result<(), ExportError> {
        self.store.write_pending(&chunk)?;
        self.store.commit(chunk.first_index, chunk.count, &chunk.payload)?;
        self.store.remove_pending(chunk.first_index)?;
        report.committed += chunk.count;
        tracing::info!(first_index = chunk.first_index, count = chunk.count, "records copied (read-only)");
        Ok(())
    }
}

fn command_error(file: &str, command: &str, result: CommandResult) -> ExportError {
    let errno = match result {
        CommandResult::Other(errno) => errno,
        CommandResult::Busy => libc::EBUSY,
        CommandResult::StagedExists => libc::EEXIST,
        CommandResult::NothingThere => libc::ENOENT,
        CommandResult::Suspending => libc::EACCES,
        CommandResult::Stale => libc::ESTALE,
        CommandResult::Done => 0,
    };
    ExportError::Command { file: file.to_string(), command: command.to_string(), errno }
}

/// Whether the first record of a SHA-1 binary list is a `boot_aggregate`.
/// Warns when the first chunk of an epoch does not start with
/// `boot_aggregate`: records of this boot were deleted before the collector
/// first ran, so the history it numbers from 0 lacks them and cannot be
/// replayed from a cold boot.
fn warn_if_partial(chunk: &Pending, order: ByteOrder) {
    if chunk.first_index == 0 && !starts_with_boot_aggregate(&chunk.payload, order) {
        tracing::warn!(
            count = chunk.count,
            "the kernel's list does not start with boot_aggregate: records of this boot were exported or deleted \
             before this collector first ran; the history numbers the first record present as 0 and cannot be \
             replayed from a cold boot"
        );
    }
}

fn starts_with_boot_aggregate(list: &[u8], order: ByteOrder) -> bool {
    let layout = imalog_core::BinaryLayout { digest_size: 20, byte_order: order };
    let mut decoder = imalog_core::BinaryDecoder::new(list, layout);
    let mut record = imalog_core::binary::empty_record();
    matches!(decoder.read_record(&mut record), Ok(true)) && record.event_name() == Some(b"boot_aggregate")
}
