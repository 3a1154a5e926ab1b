//! Replaying a whole list on two threads: this thread decodes records and
//! extends PCRs in order, while a worker thread computes each record's
//! template digests and checks the logged digest, a batch ahead.
//!
//! The hashing of template data is independent per record and is most of a
//! replay's work; only the extends form a chain. With two cores the two
//! halves overlap. Memory stays bounded: at most [`BATCHES`] batches of
//! [`BATCH_RECORDS`] records exist at a time.
//!
//! Results are the same as replaying record by record with
//! [`Replayer::replay`], errors included: the records before a decoding or
//! replay error are extended, and the error names the first faulty record.

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use crate::binary::empty_record;
use crate::error::{DecodeError, Location};
use crate::format::{ListFormat, ListReader};
use crate::hash::Digest;
use crate::record::Record;
use crate::replay::{ReplayError, ReplayPlan, Replayer};

/// Records per batch.
pub const BATCH_RECORDS: usize = 1024;

/// Batches in flight: one being decoded, one being hashed, one being
/// extended.
pub const BATCHES: usize = 3;

/// Why a pipelined replay stopped.
#[derive(Debug)]
pub enum PipelineError<E> {
    /// The list could not be decoded.
    Decode(DecodeError),
    /// A record could not be replayed; `record` is its index within the
    /// input and `location` where it starts.
    Replay {
        /// Index of the record within the input.
        record: u64,
        /// Where the record starts.
        location: Location,
        /// What is wrong.
        error: ReplayError,
    },
    /// The replay could not be started for this list.
    Start(E),
}

struct Batch {
    records: Vec<Record>,
    locations: Vec<Location>,
    len: usize,
    /// Index within the input of the first record.
    first: u64,
    /// One value per record and bank, filled by the worker.
    values: Vec<Digest>,
    /// The first record the worker could not prepare.
    error: Option<(usize, ReplayError)>,
}

impl Batch {
    fn new() -> Self {
        Batch {
            records: (0..BATCH_RECORDS).map(|_| empty_record()).collect(),
            locations: vec![Location::Offset(0); BATCH_RECORDS],
            len: 0,
            first: 0,
            values: Vec::new(),
            error: None,
        }
    }
}

/// Fills `batch` from `reader`; returns the decoding error that ended it,
/// if any.
fn fill<R: Read>(reader: &mut ListReader<R>, batch: &mut Batch) -> Option<DecodeError> {
    batch.len = 0;
    batch.first = reader.records_read();
    while batch.len < BATCH_RECORDS {
        match reader.read_record(&mut batch.records[batch.len]) {
            Ok(true) => {
                batch.locations[batch.len] = reader.last_record_location();
                batch.len += 1;
            }
            Ok(false) => return None,
            Err(error) => return Some(error),
        }
    }
    None
}

fn prepare(plan: &ReplayPlan, base_index: u64, batch: &mut Batch) {
    batch.values.clear();
    batch.error = None;
    for position in 0..batch.len {
        let index = base_index + batch.first + position as u64;
        if let Err(error) = plan.prepare_into(&batch.records[position], index, &mut batch.values) {
            batch.error = Some((position, error));
            return;
        }
    }
}

fn worker(plan: ReplayPlan, base_index: u64, input: Receiver<Batch>, output: SyncSender<Batch>) {
    for mut batch in input {
        prepare(&plan, base_index, &mut batch);
        if output.send(batch).is_err() {
            return;
        }
    }
}

/// Extends a prepared batch; stops at its first error.
fn apply<E>(replayer: &mut Replayer, batch: &Batch) -> Result<(), PipelineError<E>> {
    let banks = replayer.plan().banks().len();
    let ready = batch.error.as_ref().map_or(batch.len, |(position, _)| *position);
    for position in 0..ready {
        let values = &batch.values[position * banks..(position + 1) * banks];
        let record = &batch.records[position];
        replayer.apply(record.pcr, values).map_err(|error| PipelineError::Replay {
            record: batch.first + position as u64,
            location: batch.locations[position],
            error,
        })?;
    }
    if let Some((position, error)) = &batch.error {
        return Err(PipelineError::Replay {
            record: batch.first + *position as u64,
            location: batch.locations[*position],
            error: error.clone(),
        });
    }
    Ok(())
}

/// Replays every record of `reader`. `start` builds the replay once the
/// list's format is known (for ASCII lists, after the first record); it is
/// not called for an empty list, which returns `Ok(None)`. `progress`
/// receives the records and bytes decoded so far after each batch.
pub fn replay_list<R: Read, E>(
    reader: &mut ListReader<R>,
    start: impl FnOnce(ListFormat) -> Result<Replayer, E>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Option<Replayer>, PipelineError<E>> {
    let mut batch = Batch::new();
    let mut decode_error = fill(reader, &mut batch);
    if batch.len == 0 {
        return match decode_error {
            Some(error) => Err(PipelineError::Decode(error)),
            None => Ok(None),
        };
    }
    let Some(format) = reader.format() else {
        return Err(PipelineError::Decode(DecodeError {
            location: Location::Offset(0),
            record: 0,
            kind: crate::error::DecodeErrorKind::Unrecognised("list format unknown after a record".into()),
        }));
    };
    let mut replayer = start(format).map_err(PipelineError::Start)?;
    let plan = replayer.plan().clone();
    let base_index = replayer.next_index();

    let (to_worker, worker_input) = sync_channel::<Batch>(BATCHES);
    let (worker_output, from_worker) = sync_channel::<Batch>(BATCHES);
    thread::scope(|scope| {
        scope.spawn(move || worker(plan, base_index, worker_input, worker_output));

        let mut in_flight = 0usize;
        let mut spare: Vec<Batch> = (1..BATCHES).map(|_| Batch::new()).collect();
        let mut result = Ok(());
        if to_worker.send(batch).is_ok() {
            in_flight += 1;
        }
        loop {
            // Keep the worker busy while there is input left.
            while decode_error.is_none() && in_flight < BATCHES && result.is_ok() {
                let Some(mut next) = spare.pop() else { break };
                decode_error = fill(reader, &mut next);
                if next.len == 0 {
                    spare.push(next);
                    break;
                }
                if to_worker.send(next).is_err() {
                    break;
                }
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let Ok(done) = from_worker.recv() else { break };
            in_flight -= 1;
            if result.is_ok() {
                result = apply(&mut replayer, &done);
                progress(reader.records_read(), reader.bytes_read());
            }
            spare.push(done);
        }
        drop(to_worker);
        result?;
        match decode_error {
            Some(error) => Err(PipelineError::Decode(error)),
            None => Ok(Some(replayer)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::Bank;
    use crate::binary::encode_record;
    use crate::byte_order::ByteOrder;
    use crate::format::ListOptions;
    use crate::replay::ReplayState;
    use crate::synth::{SynthOptions, SyntheticList, TemplateMix};

    fn list(records: u64) -> Vec<u8> {
        let options =
            SynthOptions { records, templates: TemplateMix::All, violation_every: Some(11), ..Default::default() };
        let mut bytes = Vec::new();
        for record in SyntheticList::new(options) {
            encode_record(&record, &record.digest, ByteOrder::Little, &mut bytes);
        }
        bytes
    }

    fn serial(bytes: &[u8]) -> Replayer {
        let mut replayer = Replayer::new(Bank::SHA1, &[Bank::SHA1, Bank::SHA256], &ReplayState::cold_boot()).unwrap();
        for record in ListReader::open(bytes, ListOptions::default()).unwrap() {
            replayer.replay(&record.unwrap()).unwrap();
        }
        replayer
    }

    fn pipelined(bytes: &[u8]) -> Result<Option<Replayer>, PipelineError<ReplayError>> {
        let mut reader = ListReader::open(bytes, ListOptions::default()).unwrap();
        replay_list(
            &mut reader,
            |format| Replayer::new(format.bank, &[Bank::SHA1, Bank::SHA256], &ReplayState::cold_boot()),
            |_, _| {},
        )
    }

    #[test]
    fn pipeline_matches_serial_replay() {
        for count in [1, 5, BATCH_RECORDS as u64, BATCH_RECORDS as u64 + 1, 5000] {
            let bytes = list(count);
            let replayer = pipelined(&bytes).unwrap().unwrap();
            assert_eq!(replayer.state(), serial(&bytes).state(), "{count} records");
            assert_eq!(replayer.next_index(), count);
        }
    }

    #[test]
    fn pipeline_empty_list_is_none() {
        assert!(pipelined(b"").unwrap().is_none());
    }

    #[test]
    fn pipeline_reports_first_digest_mismatch() {
        let mut bytes = list(3000);
        // Flip the last byte of the whole list: the last record's template data.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        match pipelined(&bytes) {
            Err(PipelineError::Replay { record, error: ReplayError::DigestMismatch { index, .. }, .. }) => {
                assert_eq!(record, 2999);
                assert_eq!(index, 2999);
            }
            other => panic!("unexpected {:?}", other.map(|r| r.map(|r| r.next_index()))),
        }
    }

    #[test]
    fn pipeline_reports_decode_error_after_good_records() {
        let mut bytes = list(2500);
        bytes.push(0x0a);
        match pipelined(&bytes) {
            Err(PipelineError::Decode(error)) => assert_eq!(error.record, 2500),
            other => panic!("unexpected {:?}", other.map(|r| r.map(|r| r.next_index()))),
        }
    }
}
