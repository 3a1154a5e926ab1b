//! TPM access for imalog: the [`Tpm`] trait that the kernel model extends
//! PCRs through, and [`SoftTpm`], an in-process TPM with PCR banks for every
//! algorithm imalog implements.
//!
//! A real TPM extends each allocated bank of a PCR with one digest per
//! bank: `PCR_new = H_bank(PCR_old || digest)`. PCRs 0 to 23 exist in every
//! bank and start at all zeros after a reset, as on a PC client TPM.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod soft;

pub use soft::SoftTpm;

use imalog_core::{Bank, Digest};

/// Number of PCRs per bank on a PC client TPM.
pub const PCR_COUNT: u32 = 24;

/// A failed TPM operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The PCR index is beyond what the TPM has.
    #[error("PCR {pcr} does not exist; the TPM has PCRs 0 to {}", PCR_COUNT - 1)]
    NoSuchPcr {
        /// The index requested.
        pcr: u32,
    },
    /// The bank is not allocated.
    #[error("bank {0} is not allocated in this TPM")]
    NoSuchBank(Bank),
    /// The digests given to an extend do not match the banks.
    #[error("extend needs one digest per bank ({expected}), got {found}")]
    DigestCount {
        /// Allocated banks.
        expected: usize,
        /// Digests given.
        found: usize,
    },
    /// A digest has the wrong size for its bank.
    #[error("a {found}-byte digest cannot extend bank {bank}, which needs {expected} bytes")]
    DigestSize {
        /// The bank.
        bank: Bank,
        /// The bank's digest size.
        expected: usize,
        /// The size given.
        found: usize,
    },
    /// The TPM or the connection to it failed.
    #[error("TPM command failed: {0}")]
    Device(String),
}

/// A TPM that can extend and read PCRs.
pub trait Tpm: Send {
    /// The allocated PCR banks, in the TPM's order.
    fn banks(&self) -> Vec<Bank>;

    /// Extends `pcr` in every allocated bank; `digests[i]` goes to
    /// `banks()[i]` and must have that bank's size.
    fn extend(&mut self, pcr: u32, digests: &[Digest]) -> Result<(), TpmError>;

    /// Reads one PCR of one bank.
    fn read(&mut self, bank: &Bank, pcr: u32) -> Result<Digest, TpmError>;
}

impl<T: Tpm + ?Sized> Tpm for Box<T> {
    fn banks(&self) -> Vec<Bank> {
        (**self).banks()
    }

    fn extend(&mut self, pcr: u32, digests: &[Digest]) -> Result<(), TpmError> {
        (**self).extend(pcr, digests)
    }

    fn read(&mut self, bank: &Bank, pcr: u32) -> Result<Digest, TpmError> {
        (**self).read(bank, pcr)
    }
}
