//! What the verifier keeps about each machine between rounds, in a store it
//! owns: never a starting state that came from the attested machine.
//!
//! Per machine: the collector epoch and the TPM's reset and restart counts
//! and clock from the last verified quote, the absolute index of the next
//! record to verify, the PCR values after the last verified record, and how
//! many rounds in a row certified nothing new.
//!
//! The default store is SQLite, with its schema version in `PRAGMA
//! user_version` and migrations applied in order on open. With the cargo
//! feature `postgres`, `crate::postgres::PostgresStore` keeps the same state
//! in PostgreSQL for verifiers that share it.

use std::collections::BTreeMap;
use std::path::Path;

use imalog_core::{Bank, Digest, ReplayState};
use rusqlite::{params, Connection, OptionalExtension};

/// The verifier's state for one machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineState {
    /// Machine name (the collector URL by default).
    pub machine: String,
    /// Collector epoch (one per cold boot) the state belongs to.
    pub epoch: Option<u64>,
    /// TPM resetCount at the last verified quote.
    pub reset_count: Option<u32>,
    /// TPM restartCount at the last verified quote.
    pub restart_count: Option<u32>,
    /// TPM clock (ms) at the last verified quote.
    pub clock: Option<u64>,
    /// Next record to verify and the PCR values before it.
    pub replay: ReplayState,
    /// Rounds in a row that certified no new record while records waited.
    pub stalled_rounds: u32,
}

impl MachineState {
    /// The state of a machine never verified.
    pub fn new(machine: &str) -> Self {
        MachineState { machine: machine.to_string(), ..MachineState::default() }
    }
}

/// A round's verdict, kept as history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictRecord {
    /// Machine.
    pub machine: String,
    /// True when the round passed.
    pub ok: bool,
    /// First absolute index certified this round.
    pub certified_from: u64,
    /// One past the last index certified this round.
    pub certified_to: u64,
    /// What happened, in words.
    pub message: String,
}

/// A state store that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// SQLite failed.
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value is invalid.
    #[error("state database: machine {machine}: {message}")]
    Invalid {
        /// Machine.
        machine: String,
        /// What is wrong.
        message: String,
    },
    /// The database was written by a newer imalog.
    #[error("state database has schema version {found}; this imalog knows up to {known}")]
    NewerSchema {
        /// Version found.
        found: i64,
        /// Latest version known.
        known: i64,
    },
    /// Another verifier saved the machine's state after this round loaded
    /// it, so this round's state and verdict were not saved.
    #[error(
        "state database: machine {machine}: another verifier changed the stored state after this round loaded it, \
         so this round saved nothing and must run again (loaded [{loaded}], stored now [{stored}])"
    )]
    Conflict {
        /// Machine.
        machine: String,
        /// The state the round started from.
        loaded: String,
        /// The state stored when the round tried to save.
        stored: String,
    },
    /// PostgreSQL failed: the connection, a query or the transaction.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL state database: {}", crate::postgres::describe_error(.0))]
    Postgres(#[from] ::postgres::Error),
}

/// Where machine states are kept.
pub trait StateStore {
    /// Loads a machine's state, or `None` for a machine never verified.
    fn load(&mut self, machine: &str) -> Result<Option<MachineState>, StateError>;
    /// Saves a machine's state and the round's verdict in one transaction.
    fn save(&mut self, state: &MachineState, verdict: &VerdictRecord) -> Result<(), StateError>;

    /// Saves as [`StateStore::save`] does, unless the stored state of the
    /// machine is no longer `loaded`, the value [`StateStore::load`] returned
    /// when the round started. Then it saves nothing and returns
    /// [`StateError::Conflict`], so that a round another verifier overtook
    /// runs again from a fresh load.
    ///
    /// The default implementation saves without the check.
    /// NOTE: `SqliteStore` uses that default, so two verifier processes that
    /// share one SQLite file overwrite each other's rounds (last writer
    /// wins). `PostgresStore` implements the check.
    fn save_if_unchanged(
        &mut self,
        loaded: Option<&MachineState>,
        state: &MachineState,
        verdict: &VerdictRecord,
    ) -> Result<(), StateError> {
        let _ = loaded;
        self.save(state, verdict)
    }
}

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    // 1: machines, their PCR values, and verdicts.
    "CREATE TABLE machines (
        machine TEXT PRIMARY KEY,
        epoch INTEGER,
        reset_count INTEGER,
        restart_count INTEGER,
        clock INTEGER,
        next_index INTEGER NOT NULL,
        stalled_rounds INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
    );
    CREATE TABLE pcr_values (
        machine TEXT NOT NULL REFERENCES machines(machine) ON DELETE CASCADE,
        bank TEXT NOT NULL,
        pcr INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (machine, bank, pcr)
    );
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        machine TEXT NOT NULL,
        at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        ok INTEGER NOT NULL,
        certified_from INTEGER NOT NULL,
        certified_to INTEGER NOT NULL,
        message TEXT NOT NULL
    );",
];

/// Machine states in a SQLite database file.
pub struct SqliteStore {
    connection: Connection,
}

impl SqliteStore {
    /// Opens (or creates) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Self::from_connection(Connection::open(path)?)
    }

    /// An in-memory database, for one-off runs and tests.
    pub fn in_memory() -> Result<Self, StateError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut connection: Connection) -> Result<Self, StateError> {
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StateError::NewerSchema { found: version, known });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let transaction = connection.transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", index as i64 + 1)?;
            transaction.commit()?;
            tracing::debug!(version = index + 1, "state database migrated");
        }
        Ok(SqliteStore { connection })
    }

    /// The verdicts of a machine, oldest first.
    pub fn verdicts(&self, machine: &str) -> Result<Vec<VerdictRecord>, StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT ok, certified_from, certified_to, message FROM verdicts WHERE machine = ?1 ORDER BY id")?;
        let rows = statement.query_map(params![machine], |row| {
            Ok(VerdictRecord {
                machine: machine.to_string(),
                ok: row.get::<_, i64>(0)? != 0,
                certified_from: row.get::<_, i64>(1)? as u64,
                certified_to: row.get::<_, i64>(2)? as u64,
                message: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn invalid(machine: &str, message: String) -> StateError {
    StateError::Invalid { machine: machine.to_string(), message }
}

impl StateStore for SqliteStore {
    fn load(&mut self, machine: &str) -> Result<Option<MachineState>, StateError> {
        let row = self
            .connection
            .query_row(
                "SELECT epoch, reset_count, restart_count, clock, next_index, stalled_rounds FROM machines WHERE machine = ?1",
                params![machine],
                |row| {
                    Ok((
                        row.get::<_, Option<i64>>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((epoch, reset, restart, clock, next_index, stalled)) = row else {
            return Ok(None);
        };
        let mut values = BTreeMap::new();
        let mut statement = self.connection.prepare("SELECT bank, pcr, value FROM pcr_values WHERE machine = ?1")?;
        let rows = statement.query_map(params![machine], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
        })?;
        for row in rows {
            let (bank_name, pcr, hex) = row?;
            let bank: Bank = bank_name.parse().map_err(|e| invalid(machine, format!("bank {bank_name}: {e}")))?;
            let value = Digest::from_hex(&hex).filter(|d| d.len() == bank.digest_size()).ok_or_else(|| {
                invalid(machine, format!("PCR {pcr} in {bank_name}: not {} bytes of hex", bank.digest_size()))
            })?;
            values.insert((bank, pcr as u32), value);
        }
        Ok(Some(MachineState {
            machine: machine.to_string(),
            epoch: epoch.map(|v| v as u64),
            reset_count: reset.map(|v| v as u32),
            restart_count: restart.map(|v| v as u32),
            clock: clock.map(|v| v as u64),
            replay: ReplayState { next_index: next_index as u64, values },
            stalled_rounds: stalled as u32,
        }))
    }

    fn save(&mut self, state: &MachineState, verdict: &VerdictRecord) -> Result<(), StateError> {
        let transaction = self.connection.transaction()?;
        transaction.execute(
            "INSERT INTO machines (machine, epoch, reset_count, restart_count, clock, next_index, stalled_rounds, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CURRENT_TIMESTAMP)
             ON CONFLICT(machine) DO UPDATE SET epoch = ?2, reset_count = ?3, restart_count = ?4, clock = ?5,
                 next_index = ?6, stalled_rounds = ?7, updated_at = CURRENT_TIMESTAMP",
            params![
                state.machine,
                state.epoch.map(|v| v as i64),
                state.reset_count.map(|v| v as i64),
                state.restart_count.map(|v| v as i64),
                state.clock.map(|v| v as i64),
                state.replay.next_index as i64,
                state.stalled_rounds as i64
            ],
        )?;
        transaction.execute("DELETE FROM pcr_values WHERE machine = ?1", params![state.machine])?;
        for ((bank, pcr), value) in &state.replay.values {
            transaction.execute(
                "INSERT INTO pcr_values (machine, bank, pcr, value) VALUES (?1, ?2, ?3, ?4)",
                params![state.machine, bank.to_string(), *pcr as i64, value.to_hex()],
            )?;
        }
        transaction.execute(
            "INSERT INTO verdicts (machine, ok, certified_from, certified_to, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                verdict.machine,
                verdict.ok as i64,
                verdict.certified_from as i64,
                verdict.certified_to as i64,
                verdict.message
            ],
        )?;
        transaction.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_state_round_trips() {
        let mut store = SqliteStore::in_memory().unwrap();
        assert_eq!(store.load("m").unwrap(), None);
        let mut state = MachineState::new("m");
        state.epoch = Some(2);
        state.reset_count = Some(7);
        state.clock = Some(1234);
        state.replay.next_index = 42;
        state.replay.values.insert((Bank::SHA256, 10), Digest::from_hex(&"ab".repeat(32)).unwrap());
        let verdict =
            VerdictRecord { machine: "m".into(), ok: true, certified_from: 0, certified_to: 42, message: "ok".into() };
        store.save(&state, &verdict).unwrap();
        assert_eq!(store.load("m").unwrap(), Some(state.clone()));
        state.replay.next_index = 50;
        store.save(&state, &verdict).unwrap();
        assert_eq!(store.load("m").unwrap().unwrap().replay.next_index, 50);
        assert_eq!(store.verdicts("m").unwrap().len(), 2);
    }

    #[test]
    fn sqlite_migrations_apply_once() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("state.db");
        SqliteStore::open(&path).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let version: i64 = store.connection.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        store.connection.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        assert!(matches!(SqliteStore::open(&path), Err(StateError::NewerSchema { found: 99, .. })));
    }
}
