//! Attestation rounds against a `SoftTpm` machine: incremental replay from
//! the verifier's own state, kexec and reboot, and every rejection the
//! verifier promises (tampered record, reordered, missing or duplicated
//! chunk, old nonce, wrong key, PCR mismatch, counters that went back,
//! stalled quotes, runtime policy).

use std::ops::Range;

use imalog_core::synth::{SynthOptions, SyntheticList, TemplateMix};
use imalog_core::{Bank, ByteOrder, Digest, Record};
use imalog_tpm::{AkAlgorithm, SoftTpm, Tpm};
use imalog_verifier::attest::{QuoteMaterial, Rejection, RoundResult, Verifier};
use imalog_verifier::policy::{Policy, PolicyFailure};
use imalog_verifier::state::{MachineState, SqliteStore, StateStore, VerdictRecord};

const BANKS: [Bank; 2] = [Bank::SHA1, Bank::SHA256];
const MACHINE: &str = "machine-under-test";

/// A machine that measures synthetic records into PCR 10 of a `SoftTpm` and
/// keeps every record it measured, encoded as the SHA-1 binary list.
struct TestMachine {
    tpm: SoftTpm,
    generator: SyntheticList,
    records: Vec<Vec<u8>>,
    decoded: Vec<Record>,
    nonce_counter: u32,
}

impl TestMachine {
    fn new(algorithm: AkAlgorithm, seed: u64) -> Self {
        let tpm = SoftTpm::with_attestation_key(&BANKS, algorithm, b"rounds test key").expect("attestation key");
        Self::with_tpm(tpm, seed)
    }

    fn with_tpm(tpm: SoftTpm, seed: u64) -> Self {
        Self::with_generator(
            tpm,
            SynthOptions { templates: TemplateMix::All, violation_every: Some(37), ..options(seed) },
        )
    }

    /// A machine that logs only `ima-ng` records and no violations.
    fn ima_ng(seed: u64) -> Self {
        let tpm = SoftTpm::with_attestation_key(&BANKS, AkAlgorithm::EccP256, b"rounds test key").expect("key");
        Self::with_generator(tpm, options(seed))
    }

    fn with_generator(tpm: SoftTpm, options: SynthOptions) -> Self {
        let generator = SyntheticList::new(options);
        TestMachine { tpm, generator, records: Vec::new(), decoded: Vec::new(), nonce_counter: 0 }
    }

    /// Measures `count` records, extending PCR 10 of every bank.
    fn measure(&mut self, count: usize) {
        for _ in 0..count {
            let record = self.generator.next().expect("the generator never ends");
            self.extend(record);
        }
    }

    /// Logs `count` records without extending the TPM, as a machine whose
    /// TPM stopped answering would.
    fn log_without_extend(&mut self, count: usize) {
        for _ in 0..count {
            let record = self.generator.next().expect("the generator never ends");
            self.log(record);
        }
    }

    fn extend(&mut self, record: Record) {
        let digests: Vec<Digest> = BANKS.iter().map(|bank| record.extend_value(bank)).collect();
        self.tpm.extend(record.pcr, &digests).expect("extend PCR 10");
        self.log(record);
    }

    fn log(&mut self, record: Record) {
        let mut bytes = Vec::new();
        imalog_core::binary::encode_record(&record, &record.bank_digest(&Bank::SHA1), record.byte_order, &mut bytes);
        self.records.push(bytes);
        self.decoded.push(record);
    }

    fn ak_public(&mut self) -> Vec<u8> {
        self.tpm.ak_public().expect("attestation key")
    }

    fn fresh_nonce(&mut self) -> Vec<u8> {
        self.nonce_counter += 1;
        format!("nonce {:08}", self.nonce_counter).into_bytes()
    }

    /// Quotes PCR 10 of every bank, with the values the machine reports.
    fn quote(&mut self, nonce: &[u8]) -> QuoteMaterial {
        let selection: Vec<(Bank, Vec<u32>)> = BANKS.iter().map(|bank| (*bank, vec![10])).collect();
        let quote = self.tpm.quote(nonce, &selection).expect("quote");
        let pcrs = BANKS.iter().map(|bank| (*bank, 10, self.tpm.read(bank, 10).expect("read PCR 10"))).collect();
        QuoteMaterial { attest: quote.attest, signature: quote.signature, pcrs, epoch: Some(1), last_index: None }
    }

    fn chunk(&self, range: Range<usize>) -> Vec<u8> {
        self.records[range].concat()
    }
}

fn options(seed: u64) -> SynthOptions {
    SynthOptions { records: u64::MAX, seed, ..SynthOptions::default() }
}

fn verifier(machine: &mut TestMachine) -> Verifier {
    Verifier { stall_limit: 2, ..Verifier::new(machine.ak_public()) }
}

/// One round as the online verifier runs it: check the quote, then replay.
fn round(
    verifier: &Verifier,
    state: &MachineState,
    nonce: &[u8],
    quote: &QuoteMaterial,
    records: &[u8],
) -> Result<RoundResult, Rejection> {
    let (info, start, rebooted) = verifier.check_quote(state, nonce, quote)?;
    verifier.replay_round(&start, &info, quote, records, ByteOrder::Little, rebooted)
}

/// Measures, quotes and verifies records `from..to` in one round.
fn passing_round(
    machine: &mut TestMachine,
    verifier: &Verifier,
    state: &MachineState,
    range: Range<usize>,
) -> RoundResult {
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    let records = machine.chunk(range.clone());
    round(verifier, state, &nonce, &quote, &records).unwrap_or_else(|e| panic!("round over {range:?} failed: {e}"))
}

#[test]
fn incremental_rounds_certify_each_chunk_once() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 1);
    let verifier = verifier(&mut machine);
    let mut state = MachineState::new(MACHINE);
    let mut done = 0;
    for (round_number, size) in [50usize, 1, 0, 200, 7].into_iter().enumerate() {
        machine.measure(size);
        let result = passing_round(&mut machine, &verifier, &state, done..done + size);
        assert_eq!(result.certified_from, done as u64, "round {round_number}");
        assert_eq!(result.certified_to, (done + size) as u64, "round {round_number}");
        assert_eq!(result.pending, 0);
        assert!(!result.rebooted);
        done += size;
        state = result.state;
    }
    assert_eq!(state.replay.next_index, 258);
    for bank in BANKS {
        assert_eq!(state.replay.value(&bank, 10), machine.tpm.read(&bank, 10).expect("read"), "{bank}");
    }
    assert_eq!(state.reset_count, Some(0));
}

#[test]
fn round_stops_at_quoted_last_index() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 11);
    let verifier = verifier(&mut machine);
    machine.measure(25);
    let nonce = machine.fresh_nonce();
    let mut quote = machine.quote(&nonce);
    quote.last_index = Some(24);
    // What follows record 24 was never decoded: bytes that are no record at
    // all do not fail the round.
    let mut records = machine.chunk(0..25);
    records.extend_from_slice(b"\x0a\x00\x00\x00 not a record");
    let result = round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &records).expect("bounded round");
    assert_eq!((result.certified_to, result.pending), (25, 0));

    // A last index below the records certified already reads nothing and
    // certifies nothing new.
    machine.measure(5);
    let nonce = machine.fresh_nonce();
    let mut quote = machine.quote(&nonce);
    quote.last_index = Some(3);
    match round(&verifier, &result.state, &nonce, &quote, &machine.chunk(25..30)) {
        Err(Rejection::NoPrefix { from: 25, records: 0, .. }) => {}
        other => panic!("expected NoPrefix after 0 records, got {other:?}"),
    }
}

#[test]
fn round_rejects_too_many_records() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 12);
    let verifier = Verifier { max_round_records: 40, ..verifier(&mut machine) };
    machine.measure(40);
    let first = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..40);
    assert_eq!(first.certified_to, 40);
    machine.measure(41);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    match round(&verifier, &first.state, &nonce, &quote, &machine.chunk(40..81)) {
        Err(error @ Rejection::TooManyRecords { from: 40, limit: 40 }) => {
            assert_eq!(error.to_string(), "the collector sent more than 40 records after index 40 in one round");
        }
        other => panic!("expected TooManyRecords, got {other:?}"),
    }
}

#[test]
fn every_attestation_key_algorithm_passes() {
    for algorithm in AkAlgorithm::ALL {
        let mut machine = TestMachine::new(algorithm, 2);
        let verifier = verifier(&mut machine);
        machine.measure(20);
        let result = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..20);
        assert_eq!(result.certified_to, 20, "{algorithm}");
    }
}

#[test]
fn records_after_the_quote_stay_pending_and_come_back() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 3);
    let verifier = verifier(&mut machine);
    machine.measure(30);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    // The collector read 12 more records after the quote was taken.
    machine.measure(12);
    let result =
        round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &machine.chunk(0..42)).expect("race round");
    assert_eq!((result.certified_to, result.pending), (30, 12));
    assert_eq!(result.state.stalled_rounds, 0);
    // Next round asks again from index 30.
    let result = passing_round(&mut machine, &verifier, &result.state, 30..42);
    assert_eq!((result.certified_from, result.certified_to, result.pending), (30, 42, 0));
}

#[test]
fn quotes_that_stop_catching_up_fail_after_the_stall_limit() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 4);
    let verifier = verifier(&mut machine);
    machine.measure(10);
    let mut state = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..10).state;
    // The TPM stops being extended: the records keep coming, the quotes
    // stay at index 10.
    for expected_stall in 1..=2u32 {
        machine.log_without_extend(5);
        let nonce = machine.fresh_nonce();
        let quote = machine.quote(&nonce);
        let records = machine.chunk(10..machine.records.len());
        let result = round(&verifier, &state, &nonce, &quote, &records).expect("tolerated stall");
        assert_eq!((result.certified_to, result.pending), (10, 5 * u64::from(expected_stall)));
        assert_eq!(result.state.stalled_rounds, expected_stall);
        state = result.state;
    }
    machine.log_without_extend(5);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    let records = machine.chunk(10..machine.records.len());
    match round(&verifier, &state, &nonce, &quote, &records) {
        Err(Rejection::Stalled { rounds: 3, pending: 15 }) => {}
        other => panic!("expected Stalled {{ rounds: 3, pending: 15 }}, got {other:?}"),
    }
}

#[test]
fn kexec_keeps_the_history_and_a_reboot_restarts_it() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 5);
    let verifier = verifier(&mut machine);
    machine.measure(40);
    let state = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..40).state;
    // A kexec leaves the TPM alone: the next kernel's records continue the
    // same PCR 10, and the verifier continues from index 40.
    machine.measure(25);
    let result = passing_round(&mut machine, &verifier, &state, 40..65);
    assert!(!result.rebooted);
    assert_eq!((result.certified_from, result.certified_to), (40, 65));

    // A reboot resets the TPM; the new boot's history starts at index 0.
    let old_history = machine.chunk(0..65);
    let mut rebooted = TestMachine::with_tpm(machine.tpm, 6);
    rebooted.tpm.reset();
    rebooted.measure(15);
    let nonce = rebooted.fresh_nonce();
    let quote = rebooted.quote(&nonce);
    let after = round(&verifier, &result.state, &nonce, &quote, &rebooted.chunk(0..15)).expect("reboot round");
    assert!(after.rebooted);
    assert_eq!((after.certified_from, after.certified_to), (0, 15));
    assert_eq!(after.state.reset_count, Some(1));

    // A collector that missed the reboot and serves the old boot's history
    // does not reproduce the new PCR 10.
    let nonce = rebooted.fresh_nonce();
    let quote = rebooted.quote(&nonce);
    match round(&verifier, &result.state, &nonce, &quote, &old_history) {
        Err(Rejection::NoPrefix { from: 0, records: 65, .. }) => {}
        other => panic!("expected NoPrefix from the fresh state, got {other:?}"),
    }
}

#[test]
fn a_tampered_record_is_rejected_with_its_index() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 7);
    let verifier = verifier(&mut machine);
    machine.measure(20);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);

    // Change one byte of record 12's event name and keep its stored
    // template digest: the digest no longer matches the data.
    let mut records = machine.records.clone();
    let name = machine.decoded[12].event_name().expect("event name").to_vec();
    let at = records[12].windows(name.len()).rposition(|w| w == name.as_slice()).expect("name in the record");
    records[12][at] ^= 0x01;
    match round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &records.concat()) {
        Err(Rejection::Records(message)) => {
            assert!(message.starts_with("record 12 at offset "), "message names the record: {message}");
            assert!(message.contains("template digest"), "message says what failed: {message}");
        }
        other => panic!("expected a Records rejection, got {other:?}"),
    }

    // Replace record 12 by another consistent record (digest recomputed):
    // decoding passes, the replay does not reproduce the quote.
    let mut other = TestMachine::new(AkAlgorithm::EccP256, 99);
    other.measure(13);
    records = machine.records.clone();
    records[12] = other.records[12].clone();
    match round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &records.concat()) {
        Err(Rejection::NoPrefix { from: 0, records: 20, detail }) => {
            assert!(detail.contains("PCR 10"), "detail names the PCR: {detail}")
        }
        other => panic!("expected NoPrefix, got {other:?}"),
    }
}

#[test]
fn reordered_missing_and_duplicated_chunks_are_rejected() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 8);
    let verifier = verifier(&mut machine);
    machine.measure(10);
    let state = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..10).state;
    machine.measure(20);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);

    let cases: [(&str, Vec<u8>, u64); 4] = [
        ("reordered", [machine.chunk(20..30), machine.chunk(10..20)].concat(), 20),
        ("missing", machine.chunk(20..30), 10),
        ("duplicated", [machine.chunk(0..10), machine.chunk(10..30)].concat(), 30),
        ("repeated inside", [machine.chunk(10..20), machine.chunk(10..30)].concat(), 30),
    ];
    for (name, records, count) in cases {
        match round(&verifier, &state, &nonce, &quote, &records) {
            Err(Rejection::NoPrefix { from: 10, records, .. }) if records == count => {}
            other => panic!("{name}: expected NoPrefix from 10 over {count} records, got {other:?}"),
        }
    }
    // The genuine chunk passes with the same quote.
    let result = round(&verifier, &state, &nonce, &quote, &machine.chunk(10..30)).expect("genuine chunk");
    assert_eq!(result.certified_to, 30);
}

#[test]
fn an_old_nonce_is_rejected() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 9);
    let verifier = verifier(&mut machine);
    machine.measure(5);
    let old_nonce = machine.fresh_nonce();
    let old_quote = machine.quote(&old_nonce);
    let state = round(&verifier, &MachineState::new(MACHINE), &old_nonce, &old_quote, &machine.chunk(0..5))
        .expect("first round")
        .state;
    let new_nonce = machine.fresh_nonce();
    match round(&verifier, &state, &new_nonce, &old_quote, &[]) {
        Err(Rejection::Nonce { expected, found }) => {
            assert_eq!(expected, imalog_core::hex::encode(&new_nonce));
            assert_eq!(found, imalog_core::hex::encode(&old_nonce));
        }
        other => panic!("expected a Nonce rejection, got {other:?}"),
    }
}

#[test]
fn a_quote_from_another_key_is_rejected() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 10);
    let mut impostor = TestMachine::with_tpm(
        SoftTpm::with_attestation_key(&BANKS, AkAlgorithm::EccP256, b"another key").expect("key"),
        10,
    );
    let verifier = verifier(&mut machine);
    impostor.measure(5);
    let nonce = impostor.fresh_nonce();
    let quote = impostor.quote(&nonce);
    match round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &impostor.chunk(0..5)) {
        Err(Rejection::Quote(message)) => assert!(message.contains("signature"), "{message}"),
        other => panic!("expected a Quote rejection, got {other:?}"),
    }
    // A key of another algorithm is rejected too.
    let mut rsa = TestMachine::new(AkAlgorithm::Rsa2048, 10);
    rsa.measure(5);
    let nonce = rsa.fresh_nonce();
    let quote = rsa.quote(&nonce);
    assert!(matches!(
        round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &rsa.chunk(0..5)),
        Err(Rejection::Quote(_))
    ));
}

#[test]
fn reported_pcr_values_must_match_the_quote() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 11);
    let verifier = verifier(&mut machine);
    machine.measure(8);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    let records = machine.chunk(0..8);

    // A reported value that the quote's PCR digest does not cover.
    let mut lying = quote.clone();
    lying.pcrs[1].2 = Bank::SHA256.tpm_algorithm().expect("sha256").digest(b"not the PCR");
    assert!(matches!(
        round(&verifier, &MachineState::new(MACHINE), &nonce, &lying, &records),
        Err(Rejection::PcrValues)
    ));

    // A quoted PCR without a reported value.
    let mut missing = quote.clone();
    missing.pcrs.remove(0);
    match round(&verifier, &MachineState::new(MACHINE), &nonce, &missing, &records) {
        Err(Rejection::MissingPcrValue { bank, pcr: 10 }) => assert_eq!(bank, "sha1"),
        other => panic!("expected MissingPcrValue, got {other:?}"),
    }

    // A PCR extended outside IMA: the quote is genuine, the records do not
    // reproduce it.
    machine.tpm.extend(10, &BANKS.map(|bank| bank.tpm_algorithm().expect("hash").digest(b"rogue"))).expect("extend");
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    match round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &records) {
        Err(Rejection::NoPrefix { from: 0, records: 8, detail }) => {
            assert!(detail.contains("PCR 10"), "{detail}")
        }
        other => panic!("expected NoPrefix, got {other:?}"),
    }
}

#[test]
fn counters_that_go_back_are_rejected() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 12);
    let verifier = verifier(&mut machine);
    machine.measure(5);
    let state = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..5).state;
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);

    let mut later = state.clone();
    later.reset_count = Some(3);
    match round(&verifier, &later, &nonce, &quote, &[]) {
        Err(Rejection::ResetWentBack { before: 3, after: 0 }) => {}
        other => panic!("expected ResetWentBack, got {other:?}"),
    }

    let mut later = state.clone();
    later.restart_count = Some(2);
    match round(&verifier, &later, &nonce, &quote, &[]) {
        Err(Rejection::RestartWentBack { before: 2, after: 0 }) => {}
        other => panic!("expected RestartWentBack, got {other:?}"),
    }

    let clock = state.clock.expect("clock kept");
    let mut later = state.clone();
    later.clock = Some(clock + 1_000_000);
    match round(&verifier, &later, &nonce, &quote, &[]) {
        Err(Rejection::ClockWentBack { before, .. }) => assert_eq!(before, clock + 1_000_000),
        other => panic!("expected ClockWentBack, got {other:?}"),
    }

    // A replay of the quote the state already holds: same clock.
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    let state = round(&verifier, &state, &nonce, &quote, &[]).expect("fresh quote").state;
    match round(&verifier, &state, &nonce, &quote, &[]) {
        Err(Rejection::ClockWentBack { before, after }) => assert_eq!(before, after),
        other => panic!("expected ClockWentBack, got {other:?}"),
    }
}

#[test]
fn a_suspend_resume_is_not_a_reboot() {
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 13);
    let verifier = verifier(&mut machine);
    machine.measure(6);
    let state = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..6).state;
    machine.tpm.restart();
    machine.measure(4);
    let result = passing_round(&mut machine, &verifier, &state, 6..10);
    assert!(!result.rebooted);
    assert_eq!((result.certified_to, result.state.restart_count), (10, Some(1)));
}

#[test]
fn policy_failures_name_the_record_and_ignore_pending_records() {
    let mut machine = TestMachine::ima_ng(14);
    machine.measure(20);
    let early_nonce = machine.fresh_nonce();
    let early_quote = machine.quote(&early_nonce);
    machine.measure(20);
    // Allow every file digest the machine logged except record 21's.
    let mut policy = Policy::default();
    for (index, record) in machine.decoded.iter().enumerate() {
        let Some(name) = record.event_name() else { continue };
        let path = String::from_utf8_lossy(name).into_owned();
        if index != 21 {
            if let Some(digest) = file_digest(record) {
                policy.allow(&path, &digest);
            }
        }
    }
    let ak_public = machine.ak_public();
    let verifier = Verifier { policy: Some(policy), stall_limit: 2, ..Verifier::new(ak_public) };

    // Record 21 is after the quote: it stays pending, the round passes.
    let result = round(&verifier, &MachineState::new(MACHINE), &early_nonce, &early_quote, &machine.chunk(0..40))
        .expect("record 21 is pending, not certified");
    assert_eq!((result.certified_to, result.pending), (20, 20));

    // Once certified, record 21 fails the policy.
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    match round(&verifier, &result.state, &nonce, &quote, &machine.chunk(20..40)) {
        Err(Rejection::Policy { failures, total }) => {
            assert_eq!(total, 1);
            let indexes: Vec<u64> = failures.iter().map(PolicyFailure::index).collect();
            assert_eq!(indexes, vec![21], "{failures:?}");
        }
        other => panic!("expected a Policy rejection, got {other:?}"),
    }
}

#[test]
fn policy_failures_beyond_the_report_limit_are_counted() {
    use imalog_verifier::attest::MAX_POLICY_FAILURES;
    let mut machine = TestMachine::ima_ng(15);
    machine.measure(1200);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    // Pending records after the quote fail too, but are not counted.
    machine.measure(300);
    let ak_public = machine.ak_public();
    let verifier = Verifier { policy: Some(Policy::default()), ..Verifier::new(ak_public) };
    match round(&verifier, &MachineState::new(MACHINE), &nonce, &quote, &machine.chunk(0..1500)) {
        Err(Rejection::Policy { failures, total }) => {
            // Record 0 is the boot_aggregate, which the quote checks.
            assert_eq!(total, 1199);
            assert_eq!(failures.len(), MAX_POLICY_FAILURES);
            let indexes: Vec<u64> = failures.iter().map(PolicyFailure::index).collect();
            assert_eq!(indexes, (1..=MAX_POLICY_FAILURES as u64).collect::<Vec<_>>());
        }
        other => panic!("expected a Policy rejection, got {other:?}"),
    }
}

fn file_digest(record: &Record) -> Option<Vec<u8>> {
    use imalog_core::field::FieldValue;
    use imalog_core::template::FieldId;
    record.field_values().find_map(|(id, value)| match (id, value) {
        (FieldId::DNg, Ok(FieldValue::DigestWithAlgo { digest, .. })) => Some(digest.to_vec()),
        _ => None,
    })
}

#[test]
fn state_survives_a_restart_of_the_verifier() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("verifier.sqlite");
    let mut machine = TestMachine::new(AkAlgorithm::EccP256, 15);
    let verifier = verifier(&mut machine);
    machine.measure(33);
    let result = passing_round(&mut machine, &verifier, &MachineState::new(MACHINE), 0..33);
    {
        let mut store = SqliteStore::open(&path).expect("open state");
        let verdict = VerdictRecord {
            machine: MACHINE.into(),
            ok: true,
            certified_from: 0,
            certified_to: 33,
            message: "passed".into(),
        };
        store.save(&result.state, &verdict).expect("save state");
    }
    let mut store = SqliteStore::open(&path).expect("reopen state");
    let loaded = store.load(MACHINE).expect("load").expect("machine known");
    assert_eq!(loaded, result.state);
    assert_eq!(store.verdicts(MACHINE).expect("verdicts").len(), 1);
    machine.measure(3);
    let next = passing_round(&mut machine, &verifier, &loaded, 33..36);
    assert_eq!(next.certified_to, 36);
}

#[test]
fn big_endian_history_verifies_in_its_order() {
    let tpm = SoftTpm::with_attestation_key(&BANKS, AkAlgorithm::EccP256, b"rounds test key").expect("key");
    let mut machine = TestMachine::with_generator(tpm, SynthOptions { byte_order: ByteOrder::Big, ..options(16) });
    let verifier = verifier(&mut machine);
    machine.measure(25);
    let nonce = machine.fresh_nonce();
    let quote = machine.quote(&nonce);
    let records = machine.chunk(0..25);
    let fresh = MachineState::new(MACHINE);
    let (info, start, rebooted) = verifier.check_quote(&fresh, &nonce, &quote).expect("quote");

    let result = verifier
        .replay_round(&start, &info, &quote, records.as_slice(), ByteOrder::Big, rebooted)
        .expect("big-endian history");
    assert_eq!(result.certified_to, 25);

    // Read in the wrong order, the first PCR index is 0x0a000000.
    match verifier.replay_round(&start, &info, &quote, records.as_slice(), ByteOrder::Little, rebooted) {
        Err(Rejection::Records(message)) => assert!(message.contains("history record 0"), "{message}"),
        other => panic!("expected a Records rejection, got {other:?}"),
    }
}
