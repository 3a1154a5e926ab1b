//! `PostgresStore` against a real PostgreSQL server that each test starts
//! in a temporary folder (see `postgres_server`). The tests cover round
//! trips, migrations, verdict history, concurrent saves from several
//! connections and reconnection. Attestation rounds must also leave the
//! same state in SQLite and in PostgreSQL.
//!
//! Runs with `cargo test -p imalog-verifier --features postgres`. Without
//! PostgreSQL installed the tests skip, unless `IMALOG_REQUIRE_ORACLES=1`.

mod postgres_server;

use std::ops::Range;
use std::sync::{Arc, Barrier};

use imalog_core::synth::{SynthOptions, SyntheticList, TemplateMix};
use imalog_core::{Bank, ByteOrder, Digest, Record};
use imalog_tpm::{AkAlgorithm, SoftTpm, Tpm};
use imalog_verifier::attest::{QuoteMaterial, Rejection, RoundResult, Verifier};
use imalog_verifier::postgres::PostgresStore;
use imalog_verifier::state::{MachineState, SqliteStore, StateError, StateStore, VerdictRecord};
use postgres_server::TestServer;

const MACHINE: &str = "machine-under-test";
const ALL_BANKS: [Bank; 5] = [Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512, Bank::SM3];

/// Starts a server with one empty database, or returns from the test when
/// PostgreSQL is not installed.
macro_rules! server_and_database {
    () => {
        match TestServer::start() {
            Some(server) => {
                let url = server.create_database("imalog_test");
                (server, url)
            }
            None => return,
        }
    };
}

fn connect(server: &TestServer, url: &str) -> PostgresStore {
    PostgresStore::connect(url).unwrap_or_else(|e| panic!("connect to {url}: {e}\nserver log:\n{}", server.log_text()))
}

/// Returns the PCR value of a state derived from `next_index`, so that a
/// loaded state shows whether its row and its PCR values belong together.
fn derived_value(bank: Bank, pcr: u32, next_index: u64) -> Digest {
    bank.tpm_algorithm().expect("a TPM hash").digest(format!("PCR {pcr} at index {next_index}").as_bytes())
}

/// A state whose PCR values are a function of `next_index`, in every bank.
fn derived_state(next_index: u64) -> MachineState {
    let mut state = MachineState::new(MACHINE);
    state.epoch = Some(1);
    state.reset_count = Some(0);
    state.restart_count = Some(0);
    state.clock = Some(1000 + next_index);
    state.replay.next_index = next_index;
    for bank in ALL_BANKS {
        state.replay.values.insert((bank, 10), derived_value(bank, 10, next_index));
    }
    state
}

/// Panics unless every PCR value of `state` is the one [`derived_state`]
/// gives its next index.
fn assert_consistent(state: &MachineState) {
    let expected = derived_state(state.replay.next_index);
    assert_eq!(state.replay.values, expected.replay.values, "PCR values of index {}", state.replay.next_index);
    assert_eq!(state.clock, expected.clock, "clock of index {}", state.replay.next_index);
}

fn verdict(ok: bool, range: Range<u64>, message: &str) -> VerdictRecord {
    VerdictRecord {
        machine: MACHINE.to_string(),
        ok,
        certified_from: range.start,
        certified_to: range.end,
        message: message.to_string(),
    }
}

#[test]
fn state_round_trips_with_several_banks() {
    let (server, url) = server_and_database!();
    let mut store = connect(&server, &url);
    assert_eq!(store.load(MACHINE).expect("load"), None, "an unknown machine has no state");

    let mut state = MachineState::new(MACHINE);
    state.epoch = Some(3);
    state.reset_count = Some(u32::MAX);
    state.restart_count = Some(7);
    state.clock = Some(i64::MAX as u64);
    state.stalled_rounds = 2;
    state.replay.next_index = 123_456_789_012;
    for bank in ALL_BANKS {
        for pcr in [0, 10, 23] {
            state.replay.values.insert((bank, pcr), derived_value(bank, pcr, 1));
        }
    }
    store.save(&state, &verdict(true, 0..42, "first")).expect("save");
    assert_eq!(store.load(MACHINE).expect("load").as_ref(), Some(&state));

    // A later round with fewer values: the old ones must not survive.
    let mut later = MachineState::new(MACHINE);
    later.replay.next_index = 7;
    later.replay.values.insert((Bank::SHA256, 10), derived_value(Bank::SHA256, 10, 7));
    store.save(&later, &verdict(true, 0..7, "second")).expect("save");
    assert_eq!(store.load(MACHINE).expect("load").as_ref(), Some(&later), "optional fields back to none");

    // Another connection reads the same state.
    let mut other = connect(&server, &url);
    assert_eq!(other.load(MACHINE).expect("load").as_ref(), Some(&later));
    assert_eq!(other.load("another machine").expect("load"), None);
}

#[test]
fn values_postgres_cannot_hold_are_rejected() {
    let (server, url) = server_and_database!();
    let mut store = connect(&server, &url);
    let mut state = derived_state(5);
    state.clock = Some(u64::MAX);
    match store.save(&state, &verdict(true, 0..5, "too late")) {
        Err(StateError::Invalid { machine, message }) => {
            assert_eq!(machine, MACHINE);
            assert!(message.contains("clock"), "message names the column: {message}");
        }
        other => panic!("expected Invalid for a clock above i64::MAX, got {other:?}"),
    }
    assert_eq!(store.load(MACHINE).expect("load"), None, "the failed save wrote nothing");
    assert_eq!(store.verdicts(MACHINE).expect("verdicts"), vec![]);
}

/// Returns the versions recorded in `imalog_schema`, in order.
fn schema_versions(url: &str) -> Vec<i64> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("raw client");
    let rows = client.query("SELECT version FROM imalog_schema ORDER BY version", &[]).expect("versions");
    rows.iter().map(|row| row.get(0)).collect()
}

#[test]
fn migrations_apply_once_when_concurrent() {
    let (server, url) = server_and_database!();

    // Four verifiers start together on an empty database.
    let start = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let start = Arc::clone(&start);
            let url = url.clone();
            std::thread::spawn(move || {
                start.wait();
                PostgresStore::connect(&url).map(|_| ())
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread").unwrap_or_else(|e| panic!("concurrent connect: {e}\n{}", server.log_text()));
    }
    let expected: Vec<i64> = (1..=PostgresStore::SCHEMA_VERSION).collect();
    assert_eq!(schema_versions(&url), expected, "each migration applied once");

    // Connecting again applies nothing.
    connect(&server, &url);
    assert_eq!(schema_versions(&url), expected);
}

#[test]
fn newer_schema_is_rejected() {
    let (server, url) = server_and_database!();
    connect(&server, &url);

    // A newer imalog migrated the database: this one must not touch it.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("raw client");
    client.execute("INSERT INTO imalog_schema (version) VALUES (99)", &[]).expect("insert version 99");
    match PostgresStore::connect(&url) {
        Err(StateError::NewerSchema { found: 99, known }) => assert_eq!(known, PostgresStore::SCHEMA_VERSION),
        Err(other) => panic!("expected NewerSchema {{ found: 99 }}, got {other}"),
        Ok(_) => panic!("expected NewerSchema {{ found: 99 }}, the connect succeeded"),
    }
    let mut expected: Vec<i64> = (1..=PostgresStore::SCHEMA_VERSION).collect();
    expected.push(99);
    assert_eq!(schema_versions(&url), expected);
}

#[test]
fn verdict_history_is_kept_in_order() {
    let (server, url) = server_and_database!();
    let mut store = connect(&server, &url);
    let history = [
        verdict(true, 0..10, "certified records 0 to 10"),
        verdict(false, 10..10, "quote nonce is 01, expected 02"),
        verdict(true, 10..25, "certified records 10 to 25; 3 pending"),
    ];
    for (round, record) in history.iter().enumerate() {
        store.save(&derived_state(round as u64), record).expect("save");
    }
    let mut other_machine = derived_state(1);
    other_machine.machine = "another machine".into();
    let other_verdict = VerdictRecord { machine: "another machine".into(), ..verdict(true, 0..1, "other") };
    store.save(&other_machine, &other_verdict).expect("save another machine");

    assert_eq!(store.verdicts(MACHINE).expect("verdicts"), history.to_vec());
    assert_eq!(store.verdicts("another machine").expect("verdicts"), vec![other_verdict]);
    assert_eq!(store.verdicts("unknown").expect("verdicts"), vec![]);
}

#[test]
fn checked_save_after_another_save_conflicts() {
    let (server, url) = server_and_database!();
    let mut first = connect(&server, &url);
    let mut second = connect(&server, &url);
    first.save(&derived_state(10), &verdict(true, 0..10, "setup")).expect("setup save");

    // Both verifiers load index 10; the first saves its round.
    let loaded_first = first.load(MACHINE).expect("load");
    let loaded_second = second.load(MACHINE).expect("load");
    assert_eq!(loaded_first, loaded_second);
    first
        .save_if_unchanged(loaded_first.as_ref(), &derived_state(20), &verdict(true, 10..20, "first"))
        .expect("the first save passes");

    match second.save_if_unchanged(loaded_second.as_ref(), &derived_state(25), &verdict(true, 10..25, "second")) {
        Err(StateError::Conflict { machine, loaded, stored }) => {
            assert_eq!(machine, MACHINE);
            assert!(loaded.starts_with("next index 10,"), "{loaded}");
            assert!(stored.starts_with("next index 20,"), "{stored}");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let stored = second.load(MACHINE).expect("load").expect("state");
    assert_eq!(stored, derived_state(20), "the first verifier's state stays whole");
    let messages: Vec<String> = second.verdicts(MACHINE).expect("verdicts").into_iter().map(|v| v.message).collect();
    assert_eq!(messages, ["setup", "first"], "the conflicting round saved no verdict");

    // Retried from a fresh load, the second verifier's round passes.
    let reloaded = second.load(MACHINE).expect("load");
    second
        .save_if_unchanged(reloaded.as_ref(), &derived_state(25), &verdict(true, 20..25, "second, retried"))
        .expect("the retried save passes");

    // A machine deleted behind the verifier's back is a conflict too.
    let loaded = first.load(MACHINE).expect("load");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("raw client");
    client.execute("DELETE FROM machines WHERE machine = $1", &[&MACHINE]).expect("delete");
    assert!(matches!(
        first.save_if_unchanged(loaded.as_ref(), &derived_state(30), &verdict(true, 25..30, "late")),
        Err(StateError::Conflict { .. })
    ));
}

#[test]
fn concurrent_checked_saves_let_one_round_win() {
    let (server, url) = server_and_database!();
    const ROUNDS: u64 = 20;
    // Every round: both verifiers load, then both save at once. The first
    // round inserts the machine, the others update it.
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|verifier_number| {
            let barrier = Arc::clone(&barrier);
            let mut store = connect(&server, &url);
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait();
                    let loaded = store.load(MACHINE).expect("load");
                    let from = loaded.as_ref().map_or(0, |state| state.replay.next_index);
                    barrier.wait();
                    let message = format!("verifier {verifier_number} round {round}");
                    let result = store.save_if_unchanged(
                        loaded.as_ref(),
                        &derived_state(from + 1),
                        &verdict(true, from..from + 1, &message),
                    );
                    match result {
                        Ok(()) => outcomes.push(true),
                        Err(StateError::Conflict { .. }) => outcomes.push(false),
                        Err(other) => panic!("verifier {verifier_number} round {round}: {other}"),
                    }
                    barrier.wait();
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<Vec<bool>> = threads.into_iter().map(|thread| thread.join().expect("thread")).collect();
    for round in 0..ROUNDS as usize {
        let saved = outcomes.iter().filter(|verifier| verifier[round]).count();
        assert_eq!(saved, 1, "round {round}: exactly one of two concurrent saves passes, the other conflicts");
    }

    let mut store = connect(&server, &url);
    let state = store.load(MACHINE).expect("load").expect("state");
    assert_eq!(state.replay.next_index, ROUNDS);
    assert_consistent(&state);
    let verdicts = store.verdicts(MACHINE).expect("verdicts");
    let ranges: Vec<(u64, u64)> = verdicts.iter().map(|v| (v.certified_from, v.certified_to)).collect();
    let expected: Vec<(u64, u64)> = (0..ROUNDS).map(|i| (i, i + 1)).collect();
    assert_eq!(ranges, expected, "one verdict per round, in order, none from a conflicting save");
}

#[test]
fn unchecked_saves_never_interleave() {
    let (server, url) = server_and_database!();
    const WRITERS: u64 = 3;
    const SAVES: u64 = 30;
    let start = Arc::new(Barrier::new(WRITERS as usize + 1));
    let mut threads: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let start = Arc::clone(&start);
            let mut store = connect(&server, &url);
            std::thread::spawn(move || {
                start.wait();
                for save in 0..SAVES {
                    // Each writer saves its own indexes: writer 1 saves 1001, 1002, ...
                    let index = writer * 1000 + save + 1;
                    store.save(&derived_state(index), &verdict(true, 0..index, "unchecked")).expect("save");
                }
                0
            })
        })
        .collect();

    // A reader checks every state it loads meanwhile.
    let reader_start = Arc::clone(&start);
    let mut reader = connect(&server, &url);
    threads.push(std::thread::spawn(move || {
        reader_start.wait();
        let mut loads = 0;
        for _ in 0..(WRITERS * SAVES) {
            if let Some(state) = reader.load(MACHINE).expect("load") {
                assert_consistent(&state);
                loads += 1;
            }
        }
        loads
    }));
    for thread in threads {
        thread.join().expect("thread");
    }

    let mut store = connect(&server, &url);
    let last = store.load(MACHINE).expect("load").expect("state");
    assert_consistent(&last);
    assert_eq!(last.replay.next_index % 1000, SAVES, "the last save of some writer wins");
    assert_eq!(store.verdicts(MACHINE).expect("verdicts").len() as u64, WRITERS * SAVES, "every verdict is kept");
}

#[test]
fn store_reconnects_after_a_server_restart() {
    let (server, url) = server_and_database!();
    let mut store = connect(&server, &url);
    store.save(&derived_state(3), &verdict(true, 0..3, "before")).expect("save");
    server.stop();
    match store.load(MACHINE) {
        Err(StateError::Postgres(error)) => {
            let message = StateError::Postgres(error).to_string();
            assert!(message.starts_with("PostgreSQL state database: "), "{message}");
        }
        other => panic!("expected a PostgreSQL error while the server is down, got {other:?}"),
    }
    server.restart();
    // The first call after the restart may still find the old connection
    // open, fail on it and mark it closed; the one after it reconnects.
    let state = match store.load(MACHINE) {
        Ok(state) => state,
        Err(_) => store.load(MACHINE).expect("load after reconnecting"),
    };
    assert_eq!(state, Some(derived_state(3)));
}

/// A machine that measures synthetic records into PCR 10 of a `SoftTpm` and
/// keeps them as the SHA-1 binary list, as in `tests/rounds.rs`.
struct TestMachine {
    tpm: SoftTpm,
    generator: SyntheticList,
    records: Vec<Vec<u8>>,
    nonce_counter: u32,
}

const TPM_BANKS: [Bank; 2] = [Bank::SHA1, Bank::SHA256];

impl TestMachine {
    fn new(seed: u64) -> Self {
        let tpm = SoftTpm::with_attestation_key(&TPM_BANKS, AkAlgorithm::EccP256, b"postgres test key").expect("key");
        TestMachine { tpm, generator: Self::generator(seed), records: Vec::new(), nonce_counter: 0 }
    }

    fn generator(seed: u64) -> SyntheticList {
        SyntheticList::new(SynthOptions {
            records: u64::MAX,
            seed,
            templates: TemplateMix::All,
            violation_every: Some(37),
            ..SynthOptions::default()
        })
    }

    fn measure(&mut self, count: usize) {
        for _ in 0..count {
            let record: Record = self.generator.next().expect("the generator never ends");
            let digests: Vec<Digest> = TPM_BANKS.iter().map(|bank| record.extend_value(bank)).collect();
            self.tpm.extend(record.pcr, &digests).expect("extend PCR 10");
            let mut bytes = Vec::new();
            imalog_core::binary::encode_record(
                &record,
                &record.bank_digest(&Bank::SHA1),
                ByteOrder::Little,
                &mut bytes,
            );
            self.records.push(bytes);
        }
    }

    /// Resets the TPM and starts a new boot's history from index 0.
    fn reboot(&mut self, seed: u64) {
        self.tpm.reset();
        self.generator = Self::generator(seed);
        self.records.clear();
    }

    fn quote(&mut self) -> (Vec<u8>, QuoteMaterial) {
        self.nonce_counter += 1;
        let nonce = format!("nonce {:08}", self.nonce_counter).into_bytes();
        let selection: Vec<(Bank, Vec<u32>)> = TPM_BANKS.iter().map(|bank| (*bank, vec![10])).collect();
        let quote = self.tpm.quote(&nonce, &selection).expect("quote");
        let pcrs = TPM_BANKS.iter().map(|bank| (*bank, 10, self.tpm.read(bank, 10).expect("read PCR 10"))).collect();
        (
            nonce,
            QuoteMaterial { attest: quote.attest, signature: quote.signature, pcrs, epoch: Some(1), last_index: None },
        )
    }

    fn chunk(&self, range: Range<usize>) -> Vec<u8> {
        self.records[range].concat()
    }
}

/// Runs one round on `store` as `online::attest_once` does. It loads the
/// state, checks the quote and replays the records from the next index the
/// check returns (0 after a reboot). Then it saves the new state, or the
/// loaded one for a failed round, and the verdict through
/// `save_if_unchanged`. `reordered` swaps the two halves of the records.
fn attest(
    store: &mut dyn StateStore,
    verifier: &Verifier,
    machine: &TestMachine,
    nonce: &[u8],
    quote: &QuoteMaterial,
    reordered: bool,
) -> Result<RoundResult, Rejection> {
    let loaded = store.load(MACHINE).expect("load");
    let state = loaded.clone().unwrap_or_else(|| MachineState::new(MACHINE));
    let result = verifier.check_quote(&state, nonce, quote).and_then(|(info, start, rebooted)| {
        let from = usize::try_from(start.replay.next_index).expect("index fits usize");
        let end = machine.records.len();
        let records = if reordered {
            let middle = from + (end - from) / 2;
            [machine.chunk(middle..end), machine.chunk(from..middle)].concat()
        } else {
            machine.chunk(from..end)
        };
        verifier.replay_round(&start, &info, quote, records.as_slice(), ByteOrder::Little, rebooted)
    });
    let (saved, record) = match &result {
        Ok(passed) => {
            let message = format!("certified records {} to {}", passed.certified_from, passed.certified_to);
            (&passed.state, verdict(true, passed.certified_from..passed.certified_to, &message))
        }
        Err(rejection) => {
            let index = state.replay.next_index;
            (&state, verdict(false, index..index, &rejection.to_string()))
        }
    };
    store.save_if_unchanged(loaded.as_ref(), saved, &record).expect("save");
    result
}

#[test]
fn rounds_match_between_sqlite_and_postgres() {
    let (server, url) = server_and_database!();
    let mut postgres = connect(&server, &url);
    let folder = tempfile::tempdir().expect("temporary folder");
    let mut sqlite = SqliteStore::open(&folder.path().join("verifier.db")).expect("open SQLite");
    let mut machine = TestMachine::new(21);
    let verifier = Verifier { stall_limit: 2, ..Verifier::new(machine.tpm.ak_public().expect("attestation key")) };

    enum Step {
        Measure(usize),
        Reboot(u64),
        /// A round, whose records come reordered or not, and whether it
        /// must pass.
        Round {
            reordered: bool,
            passes: bool,
        },
    }
    let steps = [
        Step::Measure(40),
        Step::Round { reordered: false, passes: true },
        // A kexec leaves the TPM alone: the history continues at 40.
        Step::Measure(25),
        Step::Round { reordered: false, passes: true },
        // Nothing new: the round passes and certifies nothing.
        Step::Round { reordered: false, passes: true },
        Step::Measure(20),
        // A failed round saves the loaded state and a failed verdict; the
        // next round checks the same records again.
        Step::Round { reordered: true, passes: false },
        Step::Round { reordered: false, passes: true },
        Step::Reboot(22),
        Step::Measure(15),
        Step::Round { reordered: false, passes: true },
    ];
    for (number, step) in steps.iter().enumerate() {
        let (reordered, passes) = match step {
            Step::Measure(count) => {
                machine.measure(*count);
                continue;
            }
            Step::Reboot(seed) => {
                machine.reboot(*seed);
                continue;
            }
            Step::Round { reordered, passes } => (*reordered, *passes),
        };
        let (nonce, quote) = machine.quote();
        let in_sqlite = attest(&mut sqlite, &verifier, &machine, &nonce, &quote, reordered);
        let in_postgres = attest(&mut postgres, &verifier, &machine, &nonce, &quote, reordered);
        assert_eq!(in_sqlite.is_ok(), passes, "step {number}: SQLite round {in_sqlite:?}");
        assert_eq!(in_postgres.is_ok(), passes, "step {number}: PostgreSQL round {in_postgres:?}");
        if let (Ok(a), Ok(b)) = (&in_sqlite, &in_postgres) {
            assert_eq!(a, b, "step {number}: round results");
        }
        let from_sqlite = sqlite.load(MACHINE).expect("load SQLite");
        let from_postgres = postgres.load(MACHINE).expect("load PostgreSQL");
        assert_eq!(from_sqlite, from_postgres, "step {number}: stored states");
    }

    let state = postgres.load(MACHINE).expect("load").expect("state");
    assert_eq!((state.replay.next_index, state.reset_count), (15, Some(1)), "after the reboot");
    for bank in TPM_BANKS {
        assert_eq!(state.replay.value(&bank, 10), machine.tpm.read(&bank, 10).expect("read"), "{bank}");
    }
    let verdicts = postgres.verdicts(MACHINE).expect("verdicts");
    assert_eq!(verdicts, sqlite.verdicts(MACHINE).expect("SQLite verdicts"));
    let passed: Vec<bool> = verdicts.iter().map(|v| v.ok).collect();
    assert_eq!(passed, [true, true, true, false, true, true]);
}
