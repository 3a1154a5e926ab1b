//! One attestation round: check a quote against the trusted attestation key
//! and the verifier's own state, then replay the new records from that
//! state and certify the prefix that reproduces the quoted PCRs.
//!
//! Nothing the attested machine says is trusted unless the quote proves it:
//! the PCR values it sends must hash to the quoted PCR digest, and records
//! count only when replaying them from the verifier's stored state reaches
//! those values. Records after the matching prefix stay pending and are
//! asked for again next round. A TPM reset (resetCount up) is a reboot,
//! which restarts the history from index 0; a kexec leaves the TPM alone
//! and the history continues.

use std::io::Read;

use imalog_core::{Bank, BinaryLayout, ByteOrder, Digest, ExpectedPcr, HashAlgorithm, ReplayState, Replayer};
use imalog_tpm::QuoteInfo;

use crate::policy::{Policy, PolicyFailure};
use crate::state::MachineState;

/// A quote as the collector serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuoteMaterial {
    /// Marshalled `TPMS_ATTEST`.
    pub attest: Vec<u8>,
    /// Marshalled `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// The quoted PCR values the machine reports (checked against the
    /// quote's PCR digest before use).
    pub pcrs: Vec<(Bank, u32, Digest)>,
    /// The collector's epoch.
    pub epoch: Option<u64>,
    /// The absolute index of the last record the collector saw after
    /// taking the quote. Later records cannot be covered by the quote, so
    /// the round reads no further; it bounds the work, not the trust.
    pub last_index: Option<u64>,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The quote is malformed or not signed by the trusted key.
    #[error("quote rejected: {0}")]
    Quote(String),
    /// The quote carries another nonce: it is not fresh.
    #[error("quote nonce is {found}, expected {expected}: a replayed or foreign quote")]
    Nonce {
        /// The nonce sent.
        expected: String,
        /// The nonce quoted.
        found: String,
    },
    /// resetCount went back.
    #[error("TPM resetCount went back from {before} to {after}")]
    ResetWentBack {
        /// Last verified value.
        before: u32,
        /// Quoted value.
        after: u32,
    },
    /// restartCount went back without a reset.
    #[error("TPM restartCount went back from {before} to {after} without a reset")]
    RestartWentBack {
        /// Last verified value.
        before: u32,
        /// Quoted value.
        after: u32,
    },
    /// The clock did not move forward without a reset.
    #[error("TPM clock did not move forward: {before} ms, then {after} ms")]
    ClockWentBack {
        /// Last verified value.
        before: u64,
        /// Quoted value.
        after: u64,
    },
    /// The reported PCR values do not hash to the quoted digest.
    #[error("the PCR values the machine reported do not match the quoted PCR digest")]
    PcrValues,
    /// A quoted PCR has no reported value.
    #[error("the machine reported no value for quoted PCR {pcr} in bank {bank}")]
    MissingPcrValue {
        /// Bank.
        bank: String,
        /// PCR.
        pcr: u32,
    },
    /// The records could not be decoded or replayed.
    #[error("records: {0}")]
    Records(String),
    /// No prefix of the records reproduces the quoted PCRs.
    #[error(
        "no prefix of the {records} records from index {from} reproduces the quote: {detail}; \
         records are missing, reordered, duplicated or altered"
    )]
    NoPrefix {
        /// First index replayed.
        from: u64,
        /// Records replayed.
        records: u64,
        /// The first mismatching PCR after the last record.
        detail: String,
    },
    /// Quotes stopped catching up with the records.
    #[error("no new record certified for {rounds} rounds while {pending} records wait: the quotes stopped covering the history")]
    Stalled {
        /// Rounds without progress.
        rounds: u32,
        /// Records pending.
        pending: u64,
    },
    /// Certified records break the runtime policy.
    #[error("{total} runtime policy failure(s); first: {}", .failures.first().map(|f| f.to_string()).unwrap_or_default())]
    Policy {
        /// The first failures, in record order (at most
        /// [`MAX_POLICY_FAILURES`]).
        failures: Vec<PolicyFailure>,
        /// How many certified records failed.
        total: u64,
    },
    /// The collector sent more records in one round than the verifier
    /// reads.
    #[error("the collector sent more than {limit} records after index {from} in one round")]
    TooManyRecords {
        /// First index of the round.
        from: u64,
        /// [`Verifier::max_round_records`].
        limit: u64,
    },
}

/// Policy failures kept for the report of one round; the rest are counted.
pub const MAX_POLICY_FAILURES: usize = 1000;

/// The default of [`Verifier::max_round_records`].
pub const DEFAULT_MAX_ROUND_RECORDS: u64 = 50_000_000;

/// The result of a passed round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundResult {
    /// First index certified this round.
    pub certified_from: u64,
    /// One past the last index certified.
    pub certified_to: u64,
    /// Records received after the certified prefix.
    pub pending: u64,
    /// The state to keep.
    pub state: MachineState,
    /// True when the quote showed a reboot and the history restarted.
    pub rebooted: bool,
}

/// The verifier's settings.
pub struct Verifier {
    /// The trusted attestation key (marshalled `TPM2B_PUBLIC`).
    pub ak_public: Vec<u8>,
    /// Runtime policy, if any.
    pub policy: Option<Policy>,
    /// Rounds without progress tolerated while records wait.
    pub stall_limit: u32,
    /// Maximum number of records one round reads; a collector that sends more is
    /// rejected rather than replayed without end.
    pub max_round_records: u64,
}

impl Verifier {
    /// Returns a verifier trusting `ak_public`, without runtime policy, with the
    /// default limits (a stall limit of 3 rounds).
    pub fn new(ak_public: Vec<u8>) -> Self {
        Verifier { ak_public, policy: None, stall_limit: 3, max_round_records: DEFAULT_MAX_ROUND_RECORDS }
    }
}

/// The hash of a PCR digest, from its length (TPM quotes use the signing
/// scheme's hash, SHA-256 for the usual keys).
fn digest_algorithm(len: usize) -> Option<HashAlgorithm> {
    match len {
        20 => Some(HashAlgorithm::Sha1),
        32 => Some(HashAlgorithm::Sha256),
        48 => Some(HashAlgorithm::Sha384),
        64 => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

impl Verifier {
    /// Verifies the quote and its freshness against `state`. Returns the
    /// parsed quote and the state to replay from: `state`, or a fresh one
    /// when the TPM was reset (a reboot).
    pub fn check_quote(
        &self,
        state: &MachineState,
        nonce: &[u8],
        quote: &QuoteMaterial,
    ) -> Result<(QuoteInfo, MachineState, bool), Rejection> {
        let info = imalog_tpm::verify::verify_quote(&self.ak_public, &quote.attest, &quote.signature)
            .map_err(|e| Rejection::Quote(e.to_string()))?;
        if info.extra_data != nonce {
            return Err(Rejection::Nonce {
                expected: imalog_core::hex::encode(nonce),
                found: imalog_core::hex::encode(&info.extra_data),
            });
        }
        let mut start = state.clone();
        let mut rebooted = false;
        if let Some(before) = state.reset_count {
            if info.reset_count < before {
                return Err(Rejection::ResetWentBack { before, after: info.reset_count });
            }
            if info.reset_count > before {
                tracing::info!(machine = %state.machine, before, after = info.reset_count, "TPM reset: the machine rebooted; verifying its new history from index 0");
                start = MachineState::new(&state.machine);
                rebooted = true;
            } else {
                if let Some(restart) = state.restart_count {
                    if info.restart_count < restart {
                        return Err(Rejection::RestartWentBack { before: restart, after: info.restart_count });
                    }
                }
                if let Some(clock) = state.clock {
                    if info.clock <= clock {
                        return Err(Rejection::ClockWentBack { before: clock, after: info.clock });
                    }
                }
            }
        }
        Ok((info, start, rebooted))
    }

    /// The quoted PCR values, checked against the quote's PCR digest.
    fn quoted_values(info: &QuoteInfo, quote: &QuoteMaterial) -> Result<Vec<ExpectedPcr>, Rejection> {
        let mut expected = Vec::new();
        let mut concatenated = Vec::new();
        for (bank, pcrs) in &info.pcr_selection {
            for pcr in pcrs {
                let value = quote
                    .pcrs
                    .iter()
                    .find(|(b, p, _)| b.tpm_alg_id() == bank.tpm_alg_id() && p == pcr)
                    .map(|(_, _, v)| *v)
                    .ok_or_else(|| Rejection::MissingPcrValue { bank: bank.to_string(), pcr: *pcr })?;
                concatenated.extend_from_slice(value.as_bytes());
                expected.push(ExpectedPcr { bank: *bank, pcr: *pcr, value });
            }
        }
        let algorithm = digest_algorithm(info.pcr_digest.len()).ok_or(Rejection::PcrValues)?;
        if algorithm.digest(&concatenated).as_bytes() != info.pcr_digest.as_slice() {
            return Err(Rejection::PcrValues);
        }
        Ok(expected)
    }

    /// Replays `records` (the SHA-1 binary list from `start.replay.next_index`)
    /// and certifies the prefix that reproduces the quote.
    pub fn replay_round(
        &self,
        start: &MachineState,
        info: &QuoteInfo,
        quote: &QuoteMaterial,
        records: impl Read,
        byte_order: ByteOrder,
        rebooted: bool,
    ) -> Result<RoundResult, Rejection> {
        let expected = Self::quoted_values(info, quote)?;
        let banks: Vec<Bank> = expected.iter().map(|e| e.bank).collect();
        let mut replayer =
            Replayer::new(Bank::SHA1, &banks, &start.replay).map_err(|e| Rejection::Records(e.to_string()))?;
        replayer.expect(&expected).map_err(|e| Rejection::Records(e.to_string()))?;

        let from = start.replay.next_index;
        let layout = BinaryLayout { digest_size: 20, byte_order };
        let mut decoder = imalog_core::BinaryDecoder::new(std::io::BufReader::with_capacity(1 << 16, records), layout);
        let mut record = imalog_core::binary::empty_record();
        let mut certified: Option<ReplayState> =
            if replayer.prefix_match().is_some() { Some(start.replay.clone()) } else { None };
        // The quote cannot cover records the collector saw only after it.
        let end = quote.last_index.map_or(u64::MAX, |last| last.saturating_add(1));
        let mut failures: Vec<PolicyFailure> = Vec::new();
        let (mut failed, mut failed_certified) = (0u64, 0u64);
        loop {
            let index = replayer.next_index();
            if index >= end {
                break;
            }
            match decoder.read_record(&mut record) {
                Ok(true) if index - from >= self.max_round_records => {
                    return Err(Rejection::TooManyRecords { from, limit: self.max_round_records });
                }
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    return Err(Rejection::Records(format!(
                        "history record {} ({error}; the record and offset count from index {from})",
                        from + error.record
                    )))
                }
            }
            replayer.replay(&record).map_err(|e| {
                Rejection::Records(format!("record {index} at {}: {e}", decoder.last_record_location()))
            })?;
            if let Some(policy) = &self.policy {
                if let Err(failure) = policy.check(index, &record) {
                    failed += 1;
                    if failures.len() < MAX_POLICY_FAILURES {
                        failures.push(failure);
                    }
                }
            }
            if replayer.prefix_match().is_some_and(|run| run.last == replayer.next_index()) {
                certified = Some(replayer.state());
                failed_certified = failed;
            }
        }
        let received = replayer.next_index() - from;
        let Some(certified) = certified else {
            let detail = replayer.mismatches().first().map(|m| m.to_string()).unwrap_or_else(|| "no match".into());
            return Err(Rejection::NoPrefix { from, records: received, detail });
        };
        let certified_to = certified.next_index;
        failures.retain(|f| f.index() < certified_to);
        if failed_certified > 0 {
            return Err(Rejection::Policy { failures, total: failed_certified });
        }
        let pending = replayer.next_index() - certified_to;
        let stalled = if pending > 0 && certified_to == from { start.stalled_rounds + 1 } else { 0 };
        if stalled > self.stall_limit {
            return Err(Rejection::Stalled { rounds: stalled, pending });
        }
        let state = MachineState {
            machine: start.machine.clone(),
            epoch: quote.epoch.or(start.epoch),
            reset_count: Some(info.reset_count),
            restart_count: Some(info.restart_count),
            clock: Some(info.clock),
            replay: certified,
            stalled_rounds: stalled,
        };
        Ok(RoundResult { certified_from: from, certified_to, pending, state, rebooted })
    }
}
