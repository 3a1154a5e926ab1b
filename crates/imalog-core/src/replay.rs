//! PCR replay: recompute PCR values from records, from an explicit starting
//! state, in any number of banks, and find the prefix of the list that
//! reproduces quoted PCR values.
//!
//! A replay starts from a [`ReplayState`]: the absolute index of the next
//! record and the PCR values before it. From a cold boot that is index 0 and
//! every PCR at its reset value; a verifier that already verified the first
//! records of a list whose head the kernel has since deleted resumes from
//! the state it kept itself.
//!
//! For each record and bank, the value extended is the record's template
//! digest in that bank (recomputed from the template data, padded SHA-1 for
//! banks the kernel cannot hash), or the bank's 0xFF pattern when the logged
//! digest is all zero (a violation). The logged digest is checked against
//! the recomputed one for the list's own bank, so a record whose template
//! data was altered is caught even in a bank that is not replayed.

use std::collections::BTreeMap;
use std::fmt;

use crate::bank::Bank;
use crate::binary::MAX_PCR_INDEX;
use crate::hash::{Digest, HashAlgorithm};
use crate::record::Record;

/// PCR values per (bank, PCR index) and the absolute index of the next
/// record: everything a replay needs to continue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayState {
    /// Absolute index (0-based since the cold boot) of the next record.
    pub next_index: u64,
    /// PCR values; a PCR missing here is at its reset value.
    pub values: BTreeMap<(Bank, u32), Digest>,
}

impl ReplayState {
    /// The state after a cold boot: index 0, every PCR reset.
    pub fn cold_boot() -> Self {
        ReplayState::default()
    }

    /// The value of one PCR, or the reset value.
    pub fn value(&self, bank: &Bank, pcr: u32) -> Digest {
        self.values.get(&(*bank, pcr)).copied().unwrap_or_else(|| bank.reset_value())
    }
}

/// A PCR value a TPM quote (or `tpm2_pcrread`) attests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedPcr {
    /// Bank.
    pub bank: Bank,
    /// PCR index.
    pub pcr: u32,
    /// Value.
    pub value: Digest,
}

/// Why a replay could not continue. Display text reads after "record 12 at
/// offset 4096: ".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A logged template digest differs from the one recomputed from the
    /// template data.
    #[error("logged template digest {logged} does not match the {bank} digest of its template data, {computed}")]
    DigestMismatch {
        /// Absolute record index.
        index: u64,
        /// The list's bank.
        bank: Bank,
        /// Digest in the list.
        logged: Digest,
        /// Digest recomputed from the template data.
        computed: Digest,
    },
    /// The logged digest has another size than the list's bank.
    #[error("logged template digest is {found} bytes; bank {bank} has {expected}")]
    DigestSize {
        /// Absolute record index.
        index: u64,
        /// The list's bank.
        bank: Bank,
        /// The bank's size.
        expected: usize,
        /// The logged size.
        found: usize,
    },
    /// A bank whose TPM algorithm imalog cannot compute.
    #[error("bank {0} cannot be replayed: imalog does not implement its TPM hash algorithm")]
    UnsupportedBank(Bank),
    /// A PCR index beyond 63.
    #[error("PCR index {0} is out of range 0 to 63")]
    PcrOutOfRange(u32),
    /// A starting index no list can reach.
    #[error("starting record index {0} is beyond {MAX_START_INDEX}, the largest a list can reach")]
    IndexOutOfRange(u64),
}

/// The largest starting index [`Replayer::new`] accepts (2^63). A list
/// would need 2^63 more records to overflow the index from there.
pub const MAX_START_INDEX: u64 = 1 << 63;

/// Records that reproduce every expected PCR value, as a range of prefix
/// lengths: every prefix from `first` to `last` records matches (records
/// extending PCRs that are not quoted can follow the quoted ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Absolute index one past the last record of the shortest matching
    /// prefix.
    pub first: u64,
    /// Absolute index one past the last record of the longest matching
    /// prefix.
    pub last: u64,
}

/// A mismatch between an expected and a computed PCR value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcrMismatch {
    /// Bank.
    pub bank: Bank,
    /// PCR index.
    pub pcr: u32,
    /// Expected value.
    pub expected: Digest,
    /// Computed value after the last record.
    pub computed: Digest,
}

impl fmt::Display for PcrMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PCR {} in bank {}: expected {}, computed {}",
            self.pcr,
            self.bank.tpm2_tools_name(),
            self.expected,
            self.computed
        )
    }
}

const PCR_SLOTS: usize = MAX_PCR_INDEX as usize + 1;

struct BankTrack {
    bank: Bank,
    values: Box<[Option<Digest>; PCR_SLOTS]>,
}

/// The part of a replay that needs no replay state: which banks, which
/// bank the logged digests are in, and whether to check them. It computes
/// what each record extends, so that worker threads can do that hashing
/// while the replay extends in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayPlan {
    list_bank: Bank,
    banks: Vec<Bank>,
    verify_digests: bool,
}

impl ReplayPlan {
    /// The replayed banks, in the order values are produced.
    pub fn banks(&self) -> &[Bank] {
        &self.banks
    }

    /// Checks the record's logged template digest and appends the value it
    /// extends into each bank to `values`. `index` is the record's absolute
    /// index, for errors.
    pub fn prepare_into(&self, record: &Record, index: u64, values: &mut Vec<Digest>) -> Result<(), ReplayError> {
        if record.pcr > MAX_PCR_INDEX {
            return Err(ReplayError::PcrOutOfRange(record.pcr));
        }
        let violation = record.is_violation();
        let mut cache = DigestCache::default();
        if self.verify_digests && !violation {
            if record.digest.len() != self.list_bank.digest_size() {
                return Err(ReplayError::DigestSize {
                    index,
                    bank: self.list_bank,
                    expected: self.list_bank.digest_size(),
                    found: record.digest.len(),
                });
            }
            let computed = cache.bank_digest(record, &self.list_bank);
            if computed != record.digest {
                return Err(ReplayError::DigestMismatch {
                    index,
                    bank: self.list_bank,
                    logged: record.digest,
                    computed,
                });
            }
        }
        for bank in &self.banks {
            values.push(if violation { bank.violation_digest() } else { cache.bank_digest(record, bank) });
        }
        Ok(())
    }
}

/// Replays records in several banks and tracks quote matches.
pub struct Replayer {
    plan: ReplayPlan,
    /// Reused by [`Replayer::replay`] for one record's values.
    scratch: Vec<Digest>,
    tracks: Vec<BankTrack>,
    next_index: u64,
    expected: Vec<ExpectedPcr>,
    /// `matched[i]` is true while `expected[i]` equals the computed value.
    matched: Vec<bool>,
    matching: usize,
    prefix: Option<PrefixMatch>,
}

impl Replayer {
    /// A replay in `banks` from `start`. `list_bank` is the bank of the
    /// logged template digests, which are checked against the template data.
    /// Banks named only in `start` are replayed too.
    pub fn new(list_bank: Bank, banks: &[Bank], start: &ReplayState) -> Result<Self, ReplayError> {
        let mut all: Vec<Bank> = Vec::new();
        for bank in banks.iter().chain(start.values.keys().map(|(bank, _)| bank)) {
            if !all.contains(bank) {
                all.push(*bank);
            }
        }
        let mut tracks = Vec::with_capacity(all.len());
        for bank in all {
            if bank.tpm_algorithm().is_none() {
                return Err(ReplayError::UnsupportedBank(bank));
            }
            tracks.push(BankTrack { bank, values: Box::new([None; PCR_SLOTS]) });
        }
        if start.next_index > MAX_START_INDEX {
            return Err(ReplayError::IndexOutOfRange(start.next_index));
        }
        for ((bank, pcr), value) in &start.values {
            if *pcr > MAX_PCR_INDEX {
                return Err(ReplayError::PcrOutOfRange(*pcr));
            }
            if let Some(track) = tracks.iter_mut().find(|t| t.bank == *bank) {
                track.values[*pcr as usize] = Some(*value);
            }
        }
        let plan = ReplayPlan { list_bank, banks: tracks.iter().map(|t| t.bank).collect(), verify_digests: true };
        Ok(Replayer {
            plan,
            scratch: Vec::new(),
            tracks,
            next_index: start.next_index,
            expected: Vec::new(),
            matched: Vec::new(),
            matching: 0,
            prefix: None,
        })
    }

    /// Disables the check of logged template digests, for records whose
    /// digest slot is known to be unrelated to the list bank.
    pub fn skip_digest_check(&mut self) {
        self.plan.verify_digests = false;
    }

    /// The plan of this replay; it changes when [`Replayer::expect`] adds
    /// banks.
    pub fn plan(&self) -> &ReplayPlan {
        &self.plan
    }

    /// Sets the PCR values to match; banks named here are replayed too.
    pub fn expect(&mut self, expected: &[ExpectedPcr]) -> Result<(), ReplayError> {
        for entry in expected {
            if entry.pcr > MAX_PCR_INDEX {
                return Err(ReplayError::PcrOutOfRange(entry.pcr));
            }
            if !self.tracks.iter().any(|t| t.bank == entry.bank) {
                if entry.bank.tpm_algorithm().is_none() {
                    return Err(ReplayError::UnsupportedBank(entry.bank));
                }
                self.tracks.push(BankTrack { bank: entry.bank, values: Box::new([None; PCR_SLOTS]) });
                self.plan.banks.push(entry.bank);
            }
        }
        self.expected = expected.to_vec();
        self.matched = vec![false; expected.len()];
        self.matching = 0;
        for i in 0..self.expected.len() {
            self.refresh_match(i);
        }
        self.note_prefix();
        Ok(())
    }

    fn current(&self, bank: &Bank, pcr: u32) -> Digest {
        self.tracks
            .iter()
            .find(|t| t.bank == *bank)
            .and_then(|t| t.values.get(pcr as usize).copied().flatten())
            .unwrap_or_else(|| bank.reset_value())
    }

    fn refresh_match(&mut self, i: usize) {
        let entry = self.expected[i];
        let now = self.current(&entry.bank, entry.pcr) == entry.value;
        if now != self.matched[i] {
            self.matched[i] = now;
            if now {
                self.matching += 1;
            } else {
                self.matching -= 1;
            }
        }
    }

    fn note_prefix(&mut self) {
        if self.expected.is_empty() || self.matching != self.expected.len() {
            return;
        }
        let here = self.next_index;
        // Matching prefixes are contiguous for one quote; a later separate
        // run (possible only with colliding digests) replaces the earlier.
        self.prefix = Some(match self.prefix {
            Some(run) if run.last + 1 == here || run.last == here => PrefixMatch { first: run.first, last: here },
            _ => PrefixMatch { first: here, last: here },
        });
    }

    /// Extends the record into every bank and advances the index.
    pub fn replay(&mut self, record: &Record) -> Result<(), ReplayError> {
        let mut values = std::mem::take(&mut self.scratch);
        values.clear();
        let prepared = self.plan.prepare_into(record, self.next_index, &mut values);
        let result = prepared.and_then(|()| self.apply(record.pcr, &values));
        self.scratch = values;
        result
    }

    /// Extends values that [`ReplayPlan::prepare_into`] computed with this
    /// replay's plan (one per bank, in plan order) into `pcr`, and advances
    /// the index.
    pub fn apply(&mut self, pcr: u32, values: &[Digest]) -> Result<(), ReplayError> {
        if pcr > MAX_PCR_INDEX {
            return Err(ReplayError::PcrOutOfRange(pcr));
        }
        let slot = pcr as usize;
        for (track, value) in self.tracks.iter_mut().zip(values) {
            let old = track.values[slot].unwrap_or_else(|| track.bank.reset_value());
            let new = track.bank.extend(&old, value).ok_or(ReplayError::UnsupportedBank(track.bank))?;
            track.values[slot] = Some(new);
        }
        self.next_index += 1;

        if !self.expected.is_empty() {
            for i in 0..self.expected.len() {
                if self.expected[i].pcr == pcr {
                    self.refresh_match(i);
                }
            }
            self.note_prefix();
        }
        Ok(())
    }

    /// Absolute index of the next record.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The matching prefix found so far, if any.
    pub fn prefix_match(&self) -> Option<PrefixMatch> {
        self.prefix
    }

    /// Expected values that the current state does not reproduce.
    pub fn mismatches(&self) -> Vec<PcrMismatch> {
        self.expected
            .iter()
            .map(|e| PcrMismatch {
                bank: e.bank,
                pcr: e.pcr,
                expected: e.value,
                computed: self.current(&e.bank, e.pcr),
            })
            .filter(|m| m.expected != m.computed)
            .collect()
    }

    /// The replayed banks, in order.
    pub fn banks(&self) -> Vec<Bank> {
        self.tracks.iter().map(|t| t.bank).collect()
    }

    /// The current state: every PCR a record (or the start state) touched.
    pub fn state(&self) -> ReplayState {
        let mut values = BTreeMap::new();
        for track in &self.tracks {
            for (pcr, value) in track.values.iter().enumerate() {
                if let Some(value) = value {
                    values.insert((track.bank, pcr as u32), *value);
                }
            }
        }
        ReplayState { next_index: self.next_index, values }
    }
}

/// Template digests computed for one record, so that banks sharing an
/// algorithm (or padded SHA-1) hash the template data once.
#[derive(Default)]
struct DigestCache {
    entries: [Option<(HashAlgorithm, Digest)>; 4],
}

impl DigestCache {
    fn template_digest(&mut self, record: &Record, algorithm: HashAlgorithm) -> Digest {
        for entry in self.entries.iter().flatten() {
            if entry.0 == algorithm {
                return entry.1;
            }
        }
        let digest = record.template_digest(algorithm);
        if let Some(free) = self.entries.iter_mut().find(|e| e.is_none()) {
            *free = Some((algorithm, digest));
        }
        digest
    }

    fn bank_digest(&mut self, record: &Record, bank: &Bank) -> Digest {
        match bank.template_algorithm() {
            Some(algorithm) => self.template_digest(record, algorithm),
            None => bank.pad_sha1(&self.template_digest(record, HashAlgorithm::Sha1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TemplateData;
    use crate::template::Template;

    fn record(path: &str, violation: bool) -> Record {
        let mut digest_field = b"sha256:\0".to_vec();
        digest_field.extend_from_slice(&[0x5a; 32]);
        let mut name = path.as_bytes().to_vec();
        name.push(0);
        let data = TemplateData::from_fields([digest_field.as_slice(), name.as_slice()]).unwrap();
        let mut record = Record::new(10, Template::builtin("ima-ng").unwrap(), data, Digest::zero(20)).unwrap();
        if !violation {
            record.digest = record.template_digest(HashAlgorithm::Sha1);
        }
        record
    }

    #[test]
    fn replay_matches_manual_extend() {
        let records = [record("/a", false), record("/b", true)];
        let mut replayer = Replayer::new(Bank::SHA1, &[Bank::SHA1, Bank::SHA256], &ReplayState::cold_boot()).unwrap();
        for r in &records {
            replayer.replay(r).unwrap();
        }
        let mut pcr = [0u8; 32].to_vec();
        for r in &records {
            let value = if r.is_violation() {
                vec![0xff; 32]
            } else {
                r.template_digest(HashAlgorithm::Sha256).as_bytes().to_vec()
            };
            let mut input = pcr.clone();
            input.extend_from_slice(&value);
            pcr = HashAlgorithm::Sha256.digest(&input).as_bytes().to_vec();
        }
        assert_eq!(replayer.state().value(&Bank::SHA256, 10).as_bytes(), pcr.as_slice());
        assert_eq!(replayer.next_index(), 2);
    }

    #[test]
    fn replay_detects_altered_template_data() {
        let mut altered = record("/a", false);
        altered.data = TemplateData::from_fields([&b"sha256:\0"[..], b"/b\0"]).unwrap();
        let mut replayer = Replayer::new(Bank::SHA1, &[Bank::SHA256], &ReplayState::cold_boot()).unwrap();
        assert!(matches!(replayer.replay(&altered), Err(ReplayError::DigestMismatch { index: 0, .. })));
    }

    #[test]
    fn prefix_match_allows_longer_list() {
        let records = [record("/a", false), record("/b", false), record("/c", false)];
        let mut reference = Replayer::new(Bank::SHA1, &[Bank::SHA256], &ReplayState::cold_boot()).unwrap();
        reference.replay(&records[0]).unwrap();
        reference.replay(&records[1]).unwrap();
        let quoted = reference.state().value(&Bank::SHA256, 10);

        let mut replayer = Replayer::new(Bank::SHA1, &[], &ReplayState::cold_boot()).unwrap();
        replayer.expect(&[ExpectedPcr { bank: Bank::SHA256, pcr: 10, value: quoted }]).unwrap();
        for r in &records {
            replayer.replay(r).unwrap();
        }
        assert_eq!(replayer.prefix_match(), Some(PrefixMatch { first: 2, last: 2 }));
        assert_eq!(replayer.mismatches().len(), 1);
    }

    #[test]
    fn replay_resumes_from_state() {
        let records = [record("/a", false), record("/b", false)];
        let mut full = Replayer::new(Bank::SHA1, &[Bank::SHA1], &ReplayState::cold_boot()).unwrap();
        full.replay(&records[0]).unwrap();
        let middle = full.state();
        full.replay(&records[1]).unwrap();

        let mut resumed = Replayer::new(Bank::SHA1, &[], &middle).unwrap();
        resumed.replay(&records[1]).unwrap();
        assert_eq!(resumed.state(), full.state());
        assert_eq!(resumed.next_index(), 2);
    }

    #[test]
    fn replay_rejects_unreachable_start_index() {
        let start = ReplayState { next_index: MAX_START_INDEX + 1, ..ReplayState::cold_boot() };
        let error = Replayer::new(Bank::SHA1, &[], &start).err().expect("index beyond 2^63");
        assert_eq!(
            error.to_string(),
            "starting record index 9223372036854775809 is beyond 9223372036854775808, the largest a list can reach"
        );
        let start = ReplayState { next_index: MAX_START_INDEX, ..ReplayState::cold_boot() };
        let mut replayer = Replayer::new(Bank::SHA1, &[], &start).expect("2^63 is accepted");
        replayer.replay(&record("/a", false)).unwrap();
        assert_eq!(replayer.next_index(), MAX_START_INDEX + 1);
    }

    #[test]
    fn empty_expected_state_matches_empty_prefix() {
        let mut replayer = Replayer::new(Bank::SHA1, &[], &ReplayState::cold_boot()).unwrap();
        replayer.expect(&[ExpectedPcr { bank: Bank::SHA1, pcr: 10, value: Digest::zero(20) }]).unwrap();
        assert_eq!(replayer.prefix_match(), Some(PrefixMatch { first: 0, last: 0 }));
    }
}
