//! imalog-collector: keeps every IMA record since boot while the kernel
//! exports and deletes them.
//!
//! - [`Securityfs`] reaches a securityfs `ima` folder through file
//!   operations only.
//! - [`Store`] keeps records durably in append-only, checksummed segments,
//!   with pending chunks for exports not yet confirmed.
//! - [`Exporter`] runs the export protocol with either flavour, or reads
//!   only, and resolves what a crash or a kexec left half done.
//!
//! The collector trusts nothing it did not store durably, and the kernel
//! never deletes a record before the collector has stored it.

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod export;
pub mod faults;
pub mod http;
pub mod securityfs;
pub mod service;
pub mod store;

pub use export::{ExportError, Exporter, Flavor, RoundReport};
pub use securityfs::{Capability, ListBackend, ListIo, Securityfs};
pub use store::{Pending, Store, StoreError};
