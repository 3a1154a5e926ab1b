//! Replay throughput against the hashing bound.
//!
//! Usage: `cargo bench -p imalog-core --bench replay -- LIST`
//!
//! LIST is a legacy binary list (for example from `imalog generate`). The
//! bench loads it into memory, then measures, for the sha1 and the sha256
//! bank:
//!
//! - replay: decoding from the in-memory bytes plus `Replayer::replay`,
//!   which also checks each logged SHA-1 template digest, on one thread;
//! - pipelined replay: the same through `pipeline::replay_list`, which
//!   hashes template data on a second thread (what `imalog replay` runs);
//! - bound: the same hash computations over input bytes prepared in
//!   advance, with no decoding: SHA-1 of each record's template data (the
//!   digest check), the bank's hash of it when the bank is not SHA-1, and
//!   the PCR extend.
//!
//! It also reports decoding alone, and raw SHA-1 and SHA-256 throughput over all template data.
//! Each figure is the best of five runs.

#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use imalog_core::{Bank, HashAlgorithm, ListOptions, ListReader, Record, ReplayState, Replayer};

fn best_of<F: FnMut()>(runs: usize, mut work: F) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Each record's template digest input: the template data with its length
/// words, or for the legacy template the digest and padded name.
fn hash_input(record: &Record) -> Vec<u8> {
    let mut input = Vec::with_capacity(record.data.template_data_len() as usize);
    if record.template.is_legacy_ima() {
        for (id, data) in record.fields() {
            input.extend_from_slice(data);
            if id == imalog_core::FieldId::N {
                input.resize(input.len() + 256 - data.len(), 0);
            }
        }
    } else {
        for data in record.data.fields() {
            input.extend_from_slice(&(data.len() as u32).to_le_bytes());
            input.extend_from_slice(data);
        }
    }
    input
}

fn replay_bank(bytes: &[u8], bank: Bank) -> u64 {
    let mut reader = ListReader::open(bytes, ListOptions::default()).expect("list opens");
    let mut record = imalog_core::binary::empty_record();
    let mut replayer = Replayer::new(Bank::SHA1, &[bank], &ReplayState::cold_boot()).expect("replayer");
    while reader.read_record(&mut record).expect("record decodes") {
        replayer.replay(&record).expect("record replays");
    }
    replayer.next_index()
}

fn replay_pipelined(bytes: &[u8], bank: Bank) -> u64 {
    let mut reader = ListReader::open(bytes, ListOptions::default()).expect("list opens");
    let replayer = imalog_core::pipeline::replay_list(
        &mut reader,
        |_| Replayer::new(Bank::SHA1, &[bank], &ReplayState::cold_boot()),
        |_, _| {},
    )
    .expect("list replays")
    .expect("list is not empty");
    replayer.next_index()
}

fn hash_bound(inputs: &[Vec<u8>], bank: HashAlgorithm) -> u8 {
    let mut pcr = vec![0u8; bank.digest_size()];
    let mut extend = Vec::with_capacity(128);
    let mut sink = 0u8;
    for input in inputs {
        let sha1 = HashAlgorithm::Sha1.digest(input);
        let value = if bank == HashAlgorithm::Sha1 { sha1 } else { bank.digest(input) };
        extend.clear();
        extend.extend_from_slice(&pcr);
        extend.extend_from_slice(value.as_bytes());
        pcr.copy_from_slice(bank.digest(&extend).as_bytes());
        sink ^= sha1.as_bytes()[0];
    }
    sink ^ pcr[0]
}

fn main() {
    let path = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| {
        eprintln!("usage: cargo bench -p imalog-core --bench replay -- LIST");
        std::process::exit(2);
    });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(2);
    });
    let records: Vec<Record> = ListReader::open(bytes.as_slice(), ListOptions::default())
        .expect("list opens")
        .collect::<Result<_, _>>()
        .expect("list decodes");
    let count = records.len() as f64;
    let inputs: Vec<Vec<u8>> = records.iter().map(hash_input).collect();
    let data_bytes: usize = inputs.iter().map(Vec::len).sum();
    drop(records);
    println!("list: {path}: {} records, {} bytes, {data_bytes} bytes of template data", count, bytes.len());
    println!("{:<34} {:>12} {:>14}", "measurement", "seconds", "records/s");

    let mut decoded = 0;
    let decode = best_of(5, || {
        let mut reader = ListReader::open(bytes.as_slice(), ListOptions::default()).expect("list opens");
        let mut record = imalog_core::binary::empty_record();
        decoded = 0;
        while reader.read_record(&mut record).expect("record decodes") {
            decoded += 1;
        }
    });
    assert_eq!(decoded as f64, count);
    println!("{:<34} {:>12.3} {:>14.0}", "decode only (in memory)", decode.as_secs_f64(), count / decode.as_secs_f64());

    let mut rates = Vec::new();
    for (name, bank, algorithm) in
        [("sha1", Bank::SHA1, HashAlgorithm::Sha1), ("sha256", Bank::SHA256, HashAlgorithm::Sha256)]
    {
        let mut replayed = 0;
        let replay = best_of(5, || replayed = replay_bank(&bytes, bank));
        assert_eq!(replayed as f64, count);
        let pipelined = best_of(5, || replayed = replay_pipelined(&bytes, bank));
        assert_eq!(replayed as f64, count);
        let mut sink = 0;
        let bound = best_of(5, || sink ^= hash_bound(&inputs, algorithm));
        std::hint::black_box(sink);
        for (label, time) in [
            (format!("replay {name} bank (in memory)"), replay),
            (format!("pipelined replay {name} (2 threads)"), pipelined),
            (format!("hashing bound {name} bank"), bound),
        ] {
            println!("{label:<34} {:>12.3} {:>14.0}", time.as_secs_f64(), count / time.as_secs_f64());
        }
        rates.push((name, bound.as_secs_f64() / replay.as_secs_f64(), bound.as_secs_f64() / pipelined.as_secs_f64()));
    }
    for (name, serial, pipelined) in rates {
        println!(
            "replay {name}: one thread reaches {:.0}% of the hashing bound, two threads {:.0}%",
            serial * 100.0,
            pipelined * 100.0
        );
    }

    for algorithm in [HashAlgorithm::Sha1, HashAlgorithm::Sha256] {
        let mut sink = 0u8;
        let time = best_of(5, || {
            for input in &inputs {
                sink ^= algorithm.digest(input).as_bytes()[0];
            }
        });
        std::hint::black_box(sink);
        println!(
            "raw {algorithm} over template data: {:.0} MB/s, {:.0} records/s",
            data_bytes as f64 / time.as_secs_f64() / 1e6,
            count / time.as_secs_f64()
        );
    }
}
