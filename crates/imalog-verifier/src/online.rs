//! Attesting a machine through its collector, round after round, with the
//! state in the verifier's own store.

use std::io::Read;

use crate::attest::{Rejection, RoundResult, Verifier};
use crate::client::{ClientError, CollectorClient};
use crate::state::{MachineState, StateError, StateStore, VerdictRecord};

/// The PCRs imalog quotes: the IMA PCR.
pub const QUOTED_PCRS: [u32; 1] = [10];

/// Why a round could not reach a verdict (as opposed to a failed one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundError {
    /// The collector could not be reached or answered badly.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// No randomness for the nonce.
    #[error("cannot read /dev/urandom for a nonce: {0}")]
    Random(std::io::Error),
}

/// The verdict of one round.
#[derive(Debug)]
pub enum Verdict {
    /// The quote is good and the certified records pass the policy.
    Passed(RoundResult),
    /// The machine failed attestation.
    Failed(Rejection),
}

/// A fresh random nonce.
pub fn nonce() -> Result<[u8; 20], RoundError> {
    let mut nonce = [0u8; 20];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut nonce)).map_err(RoundError::Random)?;
    Ok(nonce)
}

/// Runs one round for `machine` and records its verdict in `store`. A
/// failed round keeps the previous state, so the next round checks the same
/// records again. When another verifier saved the machine during the round,
/// the round saves nothing and fails with [`StateError::Conflict`] in
/// [`RoundError::State`]. The next round then starts from that verifier's
/// state.
pub fn attest_once(
    verifier: &Verifier,
    store: &mut dyn StateStore,
    client: &CollectorClient,
    machine: &str,
) -> Result<Verdict, RoundError> {
    let loaded = store.load(machine)?;
    let state = loaded.clone().unwrap_or_else(|| MachineState::new(machine));
    let nonce = nonce()?;
    let quote = client.quote(&nonce, &QUOTED_PCRS)?;
    let verdict = match verifier.check_quote(&state, &nonce, &quote) {
        Err(rejection) => Verdict::Failed(rejection),
        Ok((info, start, rebooted)) => {
            let body = client.records(start.replay.next_index)?;
            let byte_order = match body.byte_order() {
                Ok(order) => order,
                Err(message) => {
                    return Err(RoundError::Client(ClientError::Invalid { url: client.url().to_string(), message }))
                }
            };
            match verifier.replay_round(&start, &info, &quote, body, byte_order, rebooted) {
                Ok(result) => Verdict::Passed(result),
                Err(rejection) => Verdict::Failed(rejection),
            }
        }
    };
    let record = match &verdict {
        Verdict::Passed(result) => {
            let message = format!(
                "certified records {} to {}; {} pending{}",
                result.certified_from,
                result.certified_to,
                result.pending,
                if result.rebooted { "; the machine rebooted" } else { "" }
            );
            store.save_if_unchanged(
                loaded.as_ref(),
                &result.state,
                &VerdictRecord {
                    machine: machine.to_string(),
                    ok: true,
                    certified_from: result.certified_from,
                    certified_to: result.certified_to,
                    message,
                },
            )?;
            tracing::info!(
                machine,
                from = result.certified_from,
                to = result.certified_to,
                pending = result.pending,
                "attestation passed"
            );
            return Ok(verdict);
        }
        Verdict::Failed(rejection) => VerdictRecord {
            machine: machine.to_string(),
            ok: false,
            certified_from: state.replay.next_index,
            certified_to: state.replay.next_index,
            message: rejection.to_string(),
        },
    };
    tracing::warn!(machine, reason = %record.message, "attestation failed");
    store.save_if_unchanged(loaded.as_ref(), &state, &record)?;
    Ok(verdict)
}
