//! The replay state file of `--from-state` and `--save-state`:
//!
//! ```json
//! {
//!   "next_index": 362,
//!   "pcrs": { "sha1": { "10": "9be6..." }, "sha256": { "10": "7fac..." } }
//! }
//! ```
//!
//! `next_index` is the absolute index (0-based since the cold boot) of the
//! first record the list being replayed holds. PCRs not listed are at their
//! reset value. Every record extends every bank, so a state with
//! `next_index` above 0 must list at least one PCR in each bank replayed
//! from it. `replay` rejects the other banks.

use std::collections::BTreeMap;

use imalog_core::{Bank, Digest, ReplayState};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    next_index: u64,
    #[serde(default)]
    pcrs: BTreeMap<String, BTreeMap<String, String>>,
}

/// Parses a state file; the error names the bad entry.
pub fn parse_state(text: &str) -> Result<ReplayState, String> {
    let file: StateFile = serde_json::from_str(text).map_err(|e| format!("invalid state file: {e}"))?;
    if file.next_index > imalog_core::replay::MAX_START_INDEX {
        return Err(format!(
            "invalid state file: next_index {} is beyond {}, the largest index a list can reach",
            file.next_index,
            imalog_core::replay::MAX_START_INDEX
        ));
    }
    let mut state = ReplayState { next_index: file.next_index, values: BTreeMap::new() };
    for (bank_name, pcrs) in file.pcrs {
        let bank: Bank = bank_name.parse().map_err(|e| format!("invalid state file: {e}"))?;
        for (pcr_text, hex) in pcrs {
            let pcr: u32 = pcr_text.parse().ok().filter(|p| *p <= 63).ok_or_else(|| {
                format!("invalid state file: PCR index {pcr_text:?} in bank {bank_name} is not 0 to 63")
            })?;
            let value = Digest::from_hex(&hex).filter(|d| d.len() == bank.digest_size()).ok_or_else(|| {
                format!("invalid state file: PCR {pcr} in bank {bank_name} is not {} bytes of hex", bank.digest_size())
            })?;
            state.values.insert((bank, pcr), value);
        }
    }
    Ok(state)
}

/// Renders a state in the same format.
pub fn render_state(state: &ReplayState) -> String {
    let mut pcrs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for ((bank, pcr), value) in &state.values {
        pcrs.entry(bank.to_string()).or_default().insert(pcr.to_string(), value.to_hex());
    }
    let file = StateFile { next_index: state.next_index, pcrs };
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip() {
        let text = format!(r#"{{"next_index": 7, "pcrs": {{"sha1": {{"10": "{}"}}}}}}"#, "ab".repeat(20));
        let state = parse_state(&text).unwrap();
        assert_eq!(state.next_index, 7);
        assert_eq!(parse_state(&render_state(&state)).unwrap(), state);
    }

    #[test]
    fn state_errors_name_the_entry() {
        let error = parse_state(r#"{"next_index": 0, "pcrs": {"sha1": {"10": "abcd"}}}"#).unwrap_err();
        assert!(error.contains("PCR 10 in bank sha1 is not 20 bytes"), "{error}");
        assert!(parse_state(r#"{"next_index": -1}"#).is_err());
        assert!(parse_state(r#"{"next_index": 0, "extra": 1}"#).is_err());
    }
}
