//! imalog-verifier: attests IMA histories against TPM quotes, with state the
//! verifier keeps itself.
//!
//! - [`attest::Verifier`] checks a quote against the trusted attestation key
//!   and the stored state (nonce, resetCount, restartCount, clock), then
//!   replays the new records and certifies the prefix that reproduces the
//!   quoted PCRs.
//! - [`state`] keeps per-machine state in SQLite, with migrations.
//! - `postgres` (cargo feature `postgres`) keeps the same state in
//!   PostgreSQL, for verifiers on several hosts that share it.
//! - [`policy`] checks certified records against a runtime policy,
//!   Keylime's JSON included.
//! - [`client`] and [`online`] fetch quotes and history from a collector.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod attest;
pub mod client;
pub mod online;
pub mod policy;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod state;
