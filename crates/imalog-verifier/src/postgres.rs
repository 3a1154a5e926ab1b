//! Machine states in PostgreSQL, for verifiers on several hosts that share
//! one state database (cargo feature `postgres`).
//!
//! [`PostgresStore`] keeps the tables of [`crate::state::SqliteStore`]
//! (`machines`, `pcr_values` and `verdicts`) with PostgreSQL types. Give it a
//! database, or a schema through `search_path`, of its own: the first
//! migration fails if a table of the same name already exists.
//!
//! Migrations are applied in order on connect, one transaction each. The
//! table `imalog_schema` contains one row per applied version. Every migration
//! transaction first takes the transaction-level advisory lock
//! [`MIGRATION_LOCK`], so verifiers that start together apply each version
//! once. A database whose version is newer than this code is rejected with
//! [`StateError::NewerSchema`].
//!
//! Concurrent rounds: [`StateStore::save_if_unchanged`], which
//! [`crate::online::attest_once`] calls, locks the machine's row with
//! `SELECT ... FOR UPDATE` and compares it with the state the round loaded.
//! If another verifier saved the machine in between, it returns
//! [`StateError::Conflict`] and writes nothing, so the round runs again from
//! the newer state. [`StateStore::save`] has no such check: the last writer
//! wins, but a save still writes the machine row, its PCR values and the
//! verdict in one transaction, so two saves never mix.

use std::collections::BTreeMap;
use std::fmt;

use ::postgres::{Client, Config, IsolationLevel, NoTls, Row, Transaction};
use imalog_core::{Bank, Digest, ReplayState};

use crate::state::{MachineState, StateError, StateStore, VerdictRecord};

/// Schema migrations, applied in order. The migration at index i creates
/// version i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: machines, their PCR values, and verdicts. PCR values are hex text,
    // as in SQLite. Counters are BIGINT because resetCount and restartCount
    // are u32, which INTEGER does not hold.
    "CREATE TABLE machines (
        machine TEXT PRIMARY KEY,
        epoch BIGINT,
        reset_count BIGINT,
        restart_count BIGINT,
        clock BIGINT,
        next_index BIGINT NOT NULL,
        stalled_rounds BIGINT NOT NULL DEFAULT 0,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE pcr_values (
        machine TEXT NOT NULL REFERENCES machines(machine) ON DELETE CASCADE,
        bank TEXT NOT NULL,
        pcr INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (machine, bank, pcr)
    );
    CREATE TABLE verdicts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        machine TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT now(),
        ok BOOLEAN NOT NULL,
        certified_from BIGINT NOT NULL,
        certified_to BIGINT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX verdicts_machine ON verdicts (machine, id);",
];

/// Key of the advisory lock that migrations take: "imalog" in ASCII.
pub const MIGRATION_LOCK: i64 = 0x696d_616c_6f67;

/// Inserts a machine row, or updates it when it exists.
const UPSERT_MACHINE: &str =
    "INSERT INTO machines (machine, epoch, reset_count, restart_count, clock, next_index, stalled_rounds)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (machine) DO UPDATE SET epoch = EXCLUDED.epoch, reset_count = EXCLUDED.reset_count,
         restart_count = EXCLUDED.restart_count, clock = EXCLUDED.clock, next_index = EXCLUDED.next_index,
         stalled_rounds = EXCLUDED.stalled_rounds, updated_at = now()";

/// Inserts a machine row unless one exists, for a checked save of a machine
/// the round found unknown.
const INSERT_MACHINE: &str =
    "INSERT INTO machines (machine, epoch, reset_count, restart_count, clock, next_index, stalled_rounds)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (machine) DO NOTHING";

const SELECT_MACHINE: &str =
    "SELECT epoch, reset_count, restart_count, clock, next_index, stalled_rounds FROM machines WHERE machine = $1";

/// Machine states in a PostgreSQL database.
///
/// The connection has no TLS. Point the connection string at a Unix socket
/// (`postgresql:///imalog?host=/run/postgresql`), at the loopback address,
/// or at a TLS-terminating proxy on the same host. Anyone who can alter the
/// traffic can alter the stored state, and the verifier trusts that state
/// as the starting point of every replay. A connection string that requires
/// TLS (`sslmode=require`) fails to connect.
pub struct PostgresStore {
    config: Config,
    client: Client,
}

impl PostgresStore {
    /// The schema version this code creates and reads.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

    /// Connects with a libpq-style connection string (`postgresql://...` or
    /// `host=... dbname=...`) and applies pending migrations.
    pub fn connect(connection_string: &str) -> Result<Self, StateError> {
        let config: Config = connection_string.parse()?;
        let mut client = config.connect(NoTls)?;
        migrate(&mut client)?;
        Ok(PostgresStore { config, client })
    }

    /// Returns the client, connecting again first when the server closed
    /// the connection (a restart or a failover), so that a long-running
    /// verifier loses one round, not every later one.
    fn client(&mut self) -> Result<&mut Client, StateError> {
        if self.client.is_closed() {
            tracing::warn!("PostgreSQL state connection closed, reconnecting");
            self.client = self.config.connect(NoTls)?;
            migrate(&mut self.client)?;
        }
        Ok(&mut self.client)
    }

    /// Returns the verdicts of a machine, oldest first.
    pub fn verdicts(&mut self, machine: &str) -> Result<Vec<VerdictRecord>, StateError> {
        let rows = self.client()?.query(
            "SELECT ok, certified_from, certified_to, message FROM verdicts WHERE machine = $1 ORDER BY id",
            &[&machine],
        )?;
        rows.iter()
            .map(|row| {
                Ok(VerdictRecord {
                    machine: machine.to_string(),
                    ok: row.try_get("ok")?,
                    certified_from: from_bigint(machine, "certified_from", row.try_get("certified_from")?)?,
                    certified_to: from_bigint(machine, "certified_to", row.try_get("certified_to")?)?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }
}

/// Formats a client error with its cause. `postgres::Error` displays only
/// its kind ("db error"), and the server's message is in its source.
pub(crate) fn describe_error(error: &::postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Applies pending migrations, one transaction each, under the advisory
/// lock, and rejects a schema newer than [`MIGRATIONS`].
fn migrate(client: &mut Client) -> Result<(), StateError> {
    let known = MIGRATIONS.len() as i64;
    for (version, migration) in (1_i64..).zip(MIGRATIONS) {
        let mut transaction = client.transaction()?;
        // Another verifier that migrates waits here until this transaction
        // ends, then reads the version this one committed.
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        // Checked before creating, because CREATE TABLE IF NOT EXISTS needs
        // the CREATE privilege even when the table exists.
        let exists: bool = transaction.query_one("SELECT to_regclass('imalog_schema') IS NOT NULL", &[])?.try_get(0)?;
        if !exists {
            transaction.batch_execute(
                "CREATE TABLE imalog_schema (
                    version BIGINT PRIMARY KEY CHECK (version > 0),
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )?;
        }
        let current: i64 =
            transaction.query_one("SELECT COALESCE(max(version), 0) FROM imalog_schema", &[])?.try_get(0)?;
        if current > known {
            return Err(StateError::NewerSchema { found: current, known });
        }
        if current >= version {
            transaction.commit()?;
            continue;
        }
        transaction.batch_execute(migration)?;
        transaction.execute("INSERT INTO imalog_schema (version) VALUES ($1)", &[&version])?;
        transaction.commit()?;
        tracing::info!(version, "PostgreSQL state database migrated");
    }
    Ok(())
}

/// The scalar columns of a machine row. A passed round always changes them,
/// because the quote check requires a later TPM clock or a higher
/// resetCount. A failed round saves them unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MachineRow {
    epoch: Option<u64>,
    reset_count: Option<u32>,
    restart_count: Option<u32>,
    clock: Option<u64>,
    next_index: u64,
    stalled_rounds: u32,
}

impl MachineRow {
    fn of(state: &MachineState) -> Self {
        MachineRow {
            epoch: state.epoch,
            reset_count: state.reset_count,
            restart_count: state.restart_count,
            clock: state.clock,
            next_index: state.replay.next_index,
            stalled_rounds: state.stalled_rounds,
        }
    }

    /// Reads the columns [`SELECT_MACHINE`] returns.
    fn from_row(machine: &str, row: &Row) -> Result<Self, StateError> {
        let optional_u64 = |column: &str| -> Result<Option<u64>, StateError> {
            let value: Option<i64> = row.try_get(column)?;
            value.map(|v| from_bigint(machine, column, v)).transpose()
        };
        let optional_u32 = |column: &str| -> Result<Option<u32>, StateError> {
            let value: Option<i64> = row.try_get(column)?;
            value.map(|v| from_bigint_u32(machine, column, v)).transpose()
        };
        Ok(MachineRow {
            epoch: optional_u64("epoch")?,
            reset_count: optional_u32("reset_count")?,
            restart_count: optional_u32("restart_count")?,
            clock: optional_u64("clock")?,
            next_index: from_bigint(machine, "next_index", row.try_get("next_index")?)?,
            stalled_rounds: from_bigint_u32(machine, "stalled_rounds", row.try_get("stalled_rounds")?)?,
        })
    }
}

impl fmt::Display for MachineRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: Option<u64>| value.map_or_else(|| "none".to_string(), |v| v.to_string());
        write!(
            f,
            "next index {}, epoch {}, resetCount {}, restartCount {}, clock {} ms, {} stalled rounds",
            self.next_index,
            show(self.epoch),
            show(self.reset_count.map(u64::from)),
            show(self.restart_count.map(u64::from)),
            show(self.clock),
            self.stalled_rounds
        )
    }
}

/// Describes a machine row for [`StateError::Conflict`].
fn describe_row(row: Option<&MachineRow>) -> String {
    row.map_or_else(|| "no state".to_string(), MachineRow::to_string)
}

fn invalid(machine: &str, message: String) -> StateError {
    StateError::Invalid { machine: machine.to_string(), message }
}

fn from_bigint(machine: &str, column: &str, value: i64) -> Result<u64, StateError> {
    u64::try_from(value).map_err(|_| invalid(machine, format!("{column} is {value}, expected a value >= 0")))
}

fn from_bigint_u32(machine: &str, column: &str, value: i64) -> Result<u32, StateError> {
    u32::try_from(value)
        .map_err(|_| invalid(machine, format!("{column} is {value}, expected a value from 0 to {}", u32::MAX)))
}

fn to_bigint(machine: &str, column: &str, value: u64) -> Result<i64, StateError> {
    i64::try_from(value)
        .map_err(|_| invalid(machine, format!("{column} {value} is above {}, the PostgreSQL BIGINT maximum", i64::MAX)))
}

/// Writes the machine row with `statement` (one of [`UPSERT_MACHINE`] and
/// [`INSERT_MACHINE`]) and returns the number of rows written.
fn write_machine(transaction: &mut Transaction<'_>, statement: &str, state: &MachineState) -> Result<u64, StateError> {
    let machine = state.machine.as_str();
    let epoch = state.epoch.map(|v| to_bigint(machine, "epoch", v)).transpose()?;
    let clock = state.clock.map(|v| to_bigint(machine, "clock", v)).transpose()?;
    let next_index = to_bigint(machine, "next_index", state.replay.next_index)?;
    let reset_count = state.reset_count.map(i64::from);
    let restart_count = state.restart_count.map(i64::from);
    let stalled_rounds = i64::from(state.stalled_rounds);
    let written = transaction
        .execute(statement, &[&machine, &epoch, &reset_count, &restart_count, &clock, &next_index, &stalled_rounds])?;
    Ok(written)
}

/// Replaces the machine's PCR values and appends the verdict.
fn write_values_and_verdict(
    transaction: &mut Transaction<'_>,
    state: &MachineState,
    verdict: &VerdictRecord,
) -> Result<(), StateError> {
    let machine = state.machine.as_str();
    transaction.execute("DELETE FROM pcr_values WHERE machine = $1", &[&machine])?;
    let insert = transaction.prepare("INSERT INTO pcr_values (machine, bank, pcr, value) VALUES ($1, $2, $3, $4)")?;
    for ((bank, pcr), value) in &state.replay.values {
        let pcr = i32::try_from(*pcr).map_err(|_| invalid(machine, format!("PCR {pcr} is above {}", i32::MAX)))?;
        transaction.execute(&insert, &[&machine, &bank.to_string(), &pcr, &value.to_hex()])?;
    }
    let certified_from = to_bigint(&verdict.machine, "certified_from", verdict.certified_from)?;
    let certified_to = to_bigint(&verdict.machine, "certified_to", verdict.certified_to)?;
    transaction.execute(
        "INSERT INTO verdicts (machine, ok, certified_from, certified_to, message) VALUES ($1, $2, $3, $4, $5)",
        &[&verdict.machine, &verdict.ok, &certified_from, &certified_to, &verdict.message],
    )?;
    Ok(())
}

impl StateStore for PostgresStore {
    fn load(&mut self, machine: &str) -> Result<Option<MachineState>, StateError> {
        // One snapshot for the row and its PCR values, so that a save that
        // commits between the two queries cannot mix two rounds.
        let mut transaction = self
            .client()?
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let Some(row) = transaction.query_opt(SELECT_MACHINE, &[&machine])? else {
            transaction.commit()?;
            return Ok(None);
        };
        let scalars = MachineRow::from_row(machine, &row)?;
        let rows = transaction.query("SELECT bank, pcr, value FROM pcr_values WHERE machine = $1", &[&machine])?;
        transaction.commit()?;

        let mut values = BTreeMap::new();
        for row in &rows {
            let bank_name: String = row.try_get("bank")?;
            let pcr: i32 = row.try_get("pcr")?;
            let hex: String = row.try_get("value")?;
            let bank: Bank = bank_name.parse().map_err(|e| invalid(machine, format!("bank {bank_name}: {e}")))?;
            let pcr =
                u32::try_from(pcr).map_err(|_| invalid(machine, format!("PCR {pcr} in {bank_name}: negative")))?;
            let value = Digest::from_hex(&hex).filter(|d| d.len() == bank.digest_size()).ok_or_else(|| {
                invalid(machine, format!("PCR {pcr} in {bank_name}: not {} bytes of hex", bank.digest_size()))
            })?;
            values.insert((bank, pcr), value);
        }
        Ok(Some(MachineState {
            machine: machine.to_string(),
            epoch: scalars.epoch,
            reset_count: scalars.reset_count,
            restart_count: scalars.restart_count,
            clock: scalars.clock,
            replay: ReplayState { next_index: scalars.next_index, values },
            stalled_rounds: scalars.stalled_rounds,
        }))
    }

    /// Saves without checking what is stored: the last writer wins.
    fn save(&mut self, state: &MachineState, verdict: &VerdictRecord) -> Result<(), StateError> {
        let mut transaction = self.client()?.transaction()?;
        // The upsert locks the machine row until commit, so a concurrent
        // save of the same machine waits and then replaces all of this one.
        write_machine(&mut transaction, UPSERT_MACHINE, state)?;
        write_values_and_verdict(&mut transaction, state, verdict)?;
        transaction.commit()?;
        Ok(())
    }

    fn save_if_unchanged(
        &mut self,
        loaded: Option<&MachineState>,
        state: &MachineState,
        verdict: &VerdictRecord,
    ) -> Result<(), StateError> {
        let machine = state.machine.as_str();
        let mut transaction = self.client()?.transaction()?;
        // FOR UPDATE waits for a concurrent save of this machine to end and
        // then returns the row it committed (READ COMMITTED).
        let stored = transaction
            .query_opt(&format!("{SELECT_MACHINE} FOR UPDATE"), &[&machine])?
            .map(|row| MachineRow::from_row(machine, &row))
            .transpose()?;
        let expected = loaded.map(MachineRow::of);
        let conflict = |stored: Option<&MachineRow>| StateError::Conflict {
            machine: machine.to_string(),
            loaded: describe_row(expected.as_ref()),
            stored: describe_row(stored),
        };
        if stored != expected {
            return Err(conflict(stored.as_ref()));
        }
        if stored.is_some() {
            write_machine(&mut transaction, UPSERT_MACHINE, state)?;
        } else if write_machine(&mut transaction, INSERT_MACHINE, state)? == 0 {
            // No row to lock: another verifier inserted the machine and
            // committed while this statement waited on its key.
            let now = transaction.query_opt(SELECT_MACHINE, &[&machine])?;
            let now = now.map(|row| MachineRow::from_row(machine, &row)).transpose()?;
            return Err(conflict(now.as_ref()));
        }
        write_values_and_verdict(&mut transaction, state, verdict)?;
        transaction.commit()?;
        Ok(())
    }
}
