//! TPM access for imalog: the [`Tpm`] trait that the kernel model extends
//! PCRs through, and its implementations:
//!
//! - [`SoftTpm`], an in-process TPM with PCR banks for every algorithm
//!   imalog implements, which signs quotes with a software attestation key;
//! - `TssTpm` (cargo feature `tss`), swtpm or `/dev/tpmrm0` through
//!   tss-esapi, which also signs quotes with an attestation key;
//! - [`proxy::TpmProxy`], which keeps the one connection to swtpm and lets
//!   several TSS clients share it, as the kernel's resource manager does for
//!   a real TPM;
//! - `testing::Swtpm` (cargo feature `swtpm-testing`), which runs swtpm for
//!   tests.
//!
//! [`verify_quote`] checks a quote's signature and signer in pure Rust, for
//! the attestation keys that TPMs and [`SoftTpm`] make (ECDSA on NIST P-256
//! and P-384, RSASSA and RSAPSS with 2048- and 3072-bit keys).
//!
//! A real TPM extends each allocated bank of a PCR with one digest per
//! bank: `PCR_new = H_bank(PCR_old || digest)`. PCRs 0 to 23 exist in every
//! bank. After a reset they hold all zeros, except PCRs 17 to 22, which
//! hold all ones as on a PC client TPM.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod algorithm;
mod marshal;
pub mod proxy;
mod public;
mod quote;
mod signature;
mod soft;
mod soft_ak;
#[cfg(feature = "swtpm-testing")]
pub mod testing;
#[cfg(feature = "tss")]
mod tss;
pub mod verify;

pub use algorithm::{AkAlgorithm, KeyType, SignatureScheme, SigningScheme};
pub use marshal::MarshalError;
pub use public::{attributes, AkPublic, Hierarchy};
pub use quote::{AttestError, Quote, QuoteInfo, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};
pub use signature::TpmSignature;
pub use soft::{SoftTpm, SOFT_TPM_FIRMWARE_VERSION};
#[cfg(feature = "tss")]
pub use tss::TssTpm;
pub use verify::{pcr_digest, verify_quote, QuoteError};

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
    /// A TPM command returned an error.
    #[error("{command} failed: {message}")]
    Command {
        /// The TPM command, such as `TPM2_PCR_Extend`.
        command: &'static str,
        /// The error as the TSS reports it, with its response code.
        message: String,
    },
    /// The TCTI string names no TPM that this backend can open.
    #[error("invalid TCTI '{tcti}': {reason}")]
    InvalidTcti {
        /// The TCTI string as given.
        tcti: String,
        /// The reason it is invalid.
        reason: String,
    },
    /// The nonce does not fit the quote's qualifying data.
    #[error("a quote nonce has at most {max} bytes, got {found}")]
    NonceSize {
        /// The maximum, the size of the largest digest the TPM implements.
        max: usize,
        /// The size given.
        found: usize,
    },
    /// The PCR selection of a quote names a bank twice.
    #[error("the PCR selection names bank {0} more than once")]
    DuplicateBank(Bank),
    /// The TPM implementation cannot do this operation.
    #[error("{0} is not supported by this TPM implementation")]
    Unsupported(&'static str),
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

    /// Signs the PCRs of `selection` and `nonce` with the TPM's attestation
    /// key (TPM2_Quote). The attest lists the banks in the order given, and
    /// each bank's PCRs in ascending order. Implementations without an
    /// attestation key return [`TpmError::Unsupported`].
    fn quote(&mut self, nonce: &[u8], selection: &[(Bank, Vec<u32>)]) -> Result<Quote, TpmError> {
        let _ = (nonce, selection);
        Err(TpmError::Unsupported("TPM2_Quote"))
    }
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

    fn quote(&mut self, nonce: &[u8], selection: &[(Bank, Vec<u32>)]) -> Result<Quote, TpmError> {
        (**self).quote(nonce, selection)
    }
}
