//! imalog-kernel: a model of the Linux 7.2 IMA measurement list with its
//! export and delete interfaces.
//!
//! # Main types
//!
//! - [`Ima`] is one kernel instance: the current and staged lists, the hash
//!   table, the counters, and the TPM it extends. [`Ima::cold_boot`] starts
//!   one with a `boot_aggregate`; [`Ima::boot_after_kexec`] starts one from
//!   a kexec buffer.
//! - Measurements: [`Ima::measure_event`], [`Ima::measure_buffer`],
//!   [`Ima::add_violation`], and [`Ima::measure_path`] for files on disk.
//! - The securityfs list files: [`Ima::list_files`], [`Ima::open_list`],
//!   [`Ima::read_list`], [`Ima::write_list`] and [`Ima::release_list`], with
//!   the errno of every rule as an [`Errno`].
//! - Commands: [`Ima::stage`] (`A`), [`Ima::delete_staged`] (`D`) and
//!   [`Ima::delete_first`] (`N`); kexec: [`Ima::kexec_load`],
//!   [`Ima::kexec_execute`], [`Ima::kexec_dump`].
//!
//! The model knows nothing about FUSE, HTTP or storage.

// The only unsafe code is one FFI call in `memory`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod command;
pub mod config;
pub mod entry;
pub mod errno;
pub mod files;
pub mod kernel;
pub mod kexec;
pub mod list;
pub mod measure;
mod memory;
pub mod open;

pub use config::{KernelConfig, Slot, Slots};
pub use entry::{Entry, EventData};
pub use errno::Errno;
pub use files::{FileInfo, Handle, LinkInfo, ListFile};
pub use kernel::{Appended, AuditCounts, Counters, Ima, KernelError};
pub use kexec::RestoreReport;
pub use measure::FileOutcome;
pub use open::{Caller, OpenSnapshot, TaskId};
