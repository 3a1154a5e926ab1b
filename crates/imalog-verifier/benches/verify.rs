//! Verification of a long IMA history by [`Verifier`], in full and in
//! incremental rounds, with and without a runtime policy.
//!
//! Usage: `cargo bench -p imalog-verifier --bench verify -- [DIR]`
//!
//! The bench generates an `ima-ng` history with `imalog_core::synth` (seed 7,
//! `boot_aggregate` first) and measures every record into PCR 10 of a
//! `SoftTpm` with sha1 and sha256 banks. After each chunk of records it takes
//! three quotes of PCR 10, one per bank selection (sha1, sha256, both), with
//! an ECDSA P-256 attestation key. It writes the history as the legacy
//! binary list (SHA-1 template digests), streaming, to DIR or to a temporary
//! folder. Each measurement then reads that file back, so that the list
//! itself is never held in memory:
//!
//! - full: one `check_quote` and one `replay_round` over the whole history
//!   from a fresh `MachineState`, with the last quote;
//! - incremental: one round per chunk, each with the quote taken after that
//!   chunk and only that chunk's records, with the state loaded from and
//!   saved to a `SqliteStore` every round, as `online::attest_once` does;
//! - the same two with a runtime policy that allows every file digest in the
//!   history (`Policy::allow` for each record), built before the run.
//!
//! With DIR, the bench also writes for Keylime's side (`scripts/bench-keylime`):
//!
//! - `DIR/ascii_runtime_measurements`: the same history in the kernel's
//!   ASCII format, with SHA-1 template digests;
//! - `DIR/pcrs.json`: the PCR 10 values in both banks after each chunk, as
//!   quoted: `{"records": N, "rounds": [{"end": n, "sha1": hex, "sha256": hex}]}`.
//!
//! Settings, from the environment: `IMALOG_BENCH_RECORDS` (default
//! 1,000,000), `IMALOG_BENCH_ROUNDS` (chunks, default 100) and
//! `IMALOG_BENCH_RUNS` (runs per measurement, the best is kept, default 3).
//! DIR may also come from `IMALOG_BENCH_DIR`.
//!
//! Peak RSS is `VmHWM` from `/proc/self/status`. Before each run the bench
//! resets it by writing 5 to `/proc/self/clear_refs` (Linux 4.0 and later),
//! so each figure covers one run. "RSS before" is `VmRSS` at the start of
//! the run: the generator's leftovers, the quotes and, for the policy rows,
//! the policy.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imalog_core::synth::{SynthOptions, SyntheticList};
use imalog_core::{Bank, BinaryDecoder, BinaryLayout, ByteOrder, FieldId, FieldValue, Record};
use imalog_tpm::{AkAlgorithm, SoftTpm, Tpm};
use imalog_verifier::attest::{QuoteMaterial, Verifier};
use imalog_verifier::policy::Policy;
use imalog_verifier::state::{MachineState, SqliteStore, StateStore, VerdictRecord};

const MACHINE: &str = "bench-machine";
const SEED: u64 = 7;
const BANKS: [Bank; 2] = [Bank::SHA1, Bank::SHA256];

/// The bank selections quoted after each chunk, with their labels.
const SELECTIONS: [(&str, &[Bank]); 3] =
    [("sha1", &[Bank::SHA1]), ("sha256", &[Bank::SHA256]), ("sha1+sha256", &[Bank::SHA1, Bank::SHA256])];

struct Settings {
    records: u64,
    rounds: u64,
    runs: usize,
    keylime_dir: Option<PathBuf>,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("{name}={text:?}: expected a positive integer");
            std::process::exit(2);
        }),
        Err(_) => default,
    }
}

impl Settings {
    fn from_environment() -> Settings {
        let records = env_number("IMALOG_BENCH_RECORDS", 1_000_000);
        let rounds = env_number("IMALOG_BENCH_ROUNDS", 100);
        let runs = env_number("IMALOG_BENCH_RUNS", 3) as usize;
        if records == 0 || rounds == 0 || rounds > records || runs == 0 {
            eprintln!(
                "invalid settings: need 0 < IMALOG_BENCH_ROUNDS <= IMALOG_BENCH_RECORDS and IMALOG_BENCH_RUNS > 0"
            );
            std::process::exit(2);
        }
        // `cargo bench` passes `--bench` after the user's arguments.
        let keylime_dir = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with("--"))
            .or_else(|| std::env::var("IMALOG_BENCH_DIR").ok())
            .map(PathBuf::from);
        Settings { records, rounds, runs, keylime_dir }
    }

    /// Returns the index one past the last record of chunk `round` (0-based).
    fn round_end(&self, round: u64) -> u64 {
        self.records * (round + 1) / self.rounds
    }
}

/// One quote of PCR 10 and the nonce it carries.
struct RoundQuote {
    nonce: Vec<u8>,
    material: QuoteMaterial,
}

/// One chunk of the history: where it ends and its quotes, one per entry of
/// [`SELECTIONS`].
struct Chunk {
    end_record: u64,
    end_offset: u64,
    quotes: Vec<RoundQuote>,
}

/// The generated history, as a binary list on disk.
struct History {
    list: PathBuf,
    bytes: u64,
    chunks: Vec<Chunk>,
    ak_public: Vec<u8>,
}

fn hex_json(digest: &imalog_core::Digest) -> serde_json::Value {
    serde_json::Value::String(digest.to_hex())
}

/// Quotes PCR 10 once for each entry of [`SELECTIONS`], with a nonce that
/// names the round and the banks.
fn quote_selections(tpm: &mut SoftTpm, round: u64) -> Vec<RoundQuote> {
    let mut quotes = Vec::new();
    for (label, banks) in SELECTIONS {
        let nonce = format!("round {round} {label}").into_bytes();
        let selection: Vec<(Bank, Vec<u32>)> = banks.iter().map(|bank| (*bank, vec![10])).collect();
        let quote = tpm.quote(&nonce, &selection).expect("quote");
        let pcrs = banks.iter().map(|bank| (*bank, 10, tpm.read(bank, 10).expect("read PCR 10"))).collect();
        let material =
            QuoteMaterial { attest: quote.attest, signature: quote.signature, pcrs, epoch: Some(1), last_index: None };
        quotes.push(RoundQuote { nonce, material });
    }
    quotes
}

/// Generates the history, measures it into a `SoftTpm` and quotes after each
/// chunk. Writes the binary list to `folder`, and the ASCII list and PCR
/// values to the Keylime folder when there is one.
fn generate(settings: &Settings, folder: &Path) -> std::io::Result<History> {
    let mut tpm = SoftTpm::with_attestation_key(&BANKS, AkAlgorithm::EccP256, b"verify bench key").expect("key");
    let ak_public = tpm.ak_public().expect("attestation key");
    let options = SynthOptions { records: settings.records, seed: SEED, ..SynthOptions::default() };
    let list = folder.join("binary_runtime_measurements");
    let mut binary = BufWriter::with_capacity(1 << 20, File::create(&list)?);
    let mut ascii = match &settings.keylime_dir {
        Some(dir) => Some(BufWriter::with_capacity(1 << 20, File::create(dir.join("ascii_runtime_measurements"))?)),
        None => None,
    };
    let mut line = Vec::with_capacity(512);
    let mut offset = 0u64;
    let mut chunks = Vec::new();
    let mut pcr_rounds = Vec::new();
    let mut round = 0;

    for (index, record) in SyntheticList::new(options).enumerate() {
        let digests: Vec<_> = BANKS.iter().map(|bank| record.extend_value(bank)).collect();
        tpm.extend(record.pcr, &digests).expect("extend PCR 10");

        let sha1 = record.bank_digest(&Bank::SHA1);
        line.clear();
        imalog_core::binary::encode_record(&record, &sha1, ByteOrder::Little, &mut line);
        binary.write_all(&line)?;
        offset += line.len() as u64;
        if let Some(ascii) = ascii.as_mut() {
            line.clear();
            imalog_core::ascii::encode_record(&record, &sha1, &mut line);
            ascii.write_all(&line)?;
        }

        if index as u64 + 1 == settings.round_end(round) {
            let quotes = quote_selections(&mut tpm, round);
            let end_record = index as u64 + 1;
            pcr_rounds.push(serde_json::json!({
                "end": end_record,
                "sha1": hex_json(&tpm.read(&Bank::SHA1, 10).expect("read")),
                "sha256": hex_json(&tpm.read(&Bank::SHA256, 10).expect("read")),
            }));
            chunks.push(Chunk { end_record, end_offset: offset, quotes });
            round += 1;
        }
    }

    binary.flush()?;
    if let Some(mut ascii) = ascii {
        ascii.flush()?;
    }
    if let Some(dir) = &settings.keylime_dir {
        let pcrs = serde_json::json!({ "records": settings.records, "rounds": pcr_rounds });
        std::fs::write(dir.join("pcrs.json"), serde_json::to_vec_pretty(&pcrs)?)?;
    }
    Ok(History { list, bytes: offset, chunks, ak_public })
}

/// Reads a field of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Reads the CPU time, user and system, that this process has used so far.
/// The kernel reports it in clock ticks of 10 ms (USER_HZ is 100 on x86 and
/// arm), so a figure is accurate to about 20 ms.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name in parentheses, from field 3 (state) on:
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// Resets `VmHWM` to the current RSS. Returns false where the kernel does
/// not allow it, and then the peak covers the whole process so far.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "?".into())
}

/// The figures of one run.
struct Run {
    total: Duration,
    rounds: Vec<Duration>,
    /// Time spent in `Verifier::check_quote`.
    quote: Duration,
    /// Time spent in `SqliteStore::load` and `save`.
    store: Duration,
}

/// Verifies the whole history in one round from a fresh state.
fn verify_full(verifier: &Verifier, history: &History, selection: usize, records: u64) -> Run {
    let quote = &history.chunks.last().expect("at least one chunk").quotes[selection];
    let start = Instant::now();
    let state = MachineState::new(MACHINE);
    let (info, from, rebooted) = verifier.check_quote(&state, &quote.nonce, &quote.material).expect("quote");
    let quote_time = start.elapsed();
    let list = File::open(&history.list).expect("open the binary list");
    let result = verifier
        .replay_round(&from, &info, &quote.material, list, ByteOrder::Little, rebooted)
        .unwrap_or_else(|e| panic!("full round failed: {e}"));
    let total = start.elapsed();
    assert_eq!((result.certified_from, result.certified_to, result.pending), (0, records, 0));
    Run { total, rounds: vec![total], quote: quote_time, store: Duration::ZERO }
}

/// Verifies the history chunk by chunk, with the state kept in SQLite.
fn verify_incremental(verifier: &Verifier, history: &History, selection: usize, database: &Path) -> Run {
    let _ = std::fs::remove_file(database);
    let mut store = SqliteStore::open(database).expect("open the state database");
    let mut list = File::open(&history.list).expect("open the binary list");
    let mut rounds = Vec::with_capacity(history.chunks.len());
    let mut store_time = Duration::ZERO;
    let mut quote_time = Duration::ZERO;
    let start = Instant::now();
    let mut chunk_start = (0u64, 0u64);
    for chunk in &history.chunks {
        let round_start = Instant::now();
        let state = store.load(MACHINE).expect("load state").unwrap_or_else(|| MachineState::new(MACHINE));
        store_time += round_start.elapsed();
        let quote = &chunk.quotes[selection];
        let quote_start = Instant::now();
        let (info, from, rebooted) = verifier.check_quote(&state, &quote.nonce, &quote.material).expect("quote");
        quote_time += quote_start.elapsed();
        // The collector serves the records from the state's next index: the
        // start of this chunk, since every earlier round certified its own.
        assert_eq!(from.replay.next_index, chunk_start.0);
        list.seek(SeekFrom::Start(chunk_start.1)).expect("seek");
        let body = BufReader::with_capacity(1 << 16, (&mut list).take(chunk.end_offset - chunk_start.1));
        let result = verifier
            .replay_round(&from, &info, &quote.material, body, ByteOrder::Little, rebooted)
            .unwrap_or_else(|e| panic!("round ending at record {} failed: {e}", chunk.end_record));
        assert_eq!((result.certified_to, result.pending), (chunk.end_record, 0));
        let verdict = VerdictRecord {
            machine: MACHINE.into(),
            ok: true,
            certified_from: result.certified_from,
            certified_to: result.certified_to,
            message: format!("certified records {} to {}", result.certified_from, result.certified_to),
        };
        let save_start = Instant::now();
        store.save(&result.state, &verdict).expect("save state");
        store_time += save_start.elapsed();
        rounds.push(round_start.elapsed());
        chunk_start = (chunk.end_record, chunk.end_offset);
    }
    Run { total: start.elapsed(), rounds, quote: quote_time, store: store_time }
}

/// Builds a policy that allows the file digest of every record in the list.
fn allow_everything(list: &Path) -> Policy {
    let mut policy = Policy::default();
    let layout = BinaryLayout { digest_size: 20, byte_order: ByteOrder::Little };
    let file = BufReader::with_capacity(1 << 20, File::open(list).expect("open the binary list"));
    let mut decoder = BinaryDecoder::new(file, layout);
    let mut record = imalog_core::binary::empty_record();
    while decoder.read_record(&mut record).expect("record decodes") {
        if let (Some(name), Some(digest)) = (record.event_name(), file_digest(&record)) {
            policy.allow(&String::from_utf8_lossy(name), &digest);
        }
    }
    policy
}

fn file_digest(record: &Record) -> Option<Vec<u8>> {
    record.field_values().find_map(|(id, value)| match (id, value) {
        (FieldId::DNg, Ok(FieldValue::DigestWithAlgo { digest, .. })) => Some(digest.to_vec()),
        _ => None,
    })
}

/// Runs `work` `runs` times and prints the best run as a table row.
fn measure(label: &str, banks: &str, settings: &Settings, mut work: impl FnMut() -> Run) {
    let mut best: Option<(Run, Option<f64>)> = None;
    let mut peak = None;
    let mut before = None;
    let mut peak_reset = true;
    for _ in 0..settings.runs {
        peak_reset &= reset_peak_rss();
        let rss = status_kib("VmRSS");
        let cpu_start = cpu_seconds();
        let run = work();
        let cpu = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);
        let hwm = status_kib("VmHWM");
        peak = peak.max(hwm);
        before = before.max(rss);
        if best.as_ref().is_none_or(|(b, _)| run.total < b.total) {
            best = Some((run, cpu));
        }
    }
    let (run, cpu) = best.expect("at least one run");
    let cpu = cpu.map(|c| format!("{c:.2}")).unwrap_or_else(|| "?".into());
    let seconds = run.total.as_secs_f64();
    let per_round = if run.rounds.len() > 1 {
        let mut sorted = run.rounds.clone();
        sorted.sort();
        let mean = run.total.as_secs_f64() * 1e3 / run.rounds.len() as f64;
        let median = sorted[sorted.len() / 2].as_secs_f64() * 1e3;
        let max = sorted.last().expect("rounds").as_secs_f64() * 1e3;
        let store = run.store.as_secs_f64() * 1e3 / run.rounds.len() as f64;
        let quote = run.quote.as_secs_f64() * 1e3 / run.rounds.len() as f64;
        format!("{mean:.2} / {median:.2} / {max:.2} (quote {quote:.2}, SQLite {store:.2})")
    } else {
        format!("(quote {:.2})", run.quote.as_secs_f64() * 1e3)
    };
    println!(
        "| {label} | {banks} | {seconds:.3} | {cpu} | {:.0} | {per_round} | {}{} | {} |",
        settings.records as f64 / seconds,
        mib(peak),
        if peak_reset { "" } else { " (whole process)" },
        mib(before),
    );
}

fn main() {
    let settings = Settings::from_environment();
    let scratch = tempfile::tempdir().expect("temporary folder");
    let folder = match &settings.keylime_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            dir.clone()
        }
        None => scratch.path().to_path_buf(),
    };

    let start = Instant::now();
    let history = generate(&settings, &folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    println!(
        "history: {} ima-ng records in {} chunks, {} bytes of binary list at {} (generated, measured and quoted in {:.1} s)",
        settings.records,
        history.chunks.len(),
        history.bytes,
        history.list.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(dir) = &settings.keylime_dir {
        println!("Keylime input: {0}/ascii_runtime_measurements and {0}/pcrs.json", dir.display());
    }
    println!(
        "best of {} runs each; per round in ms: mean / median / max, then the mean time of check_quote and of \
         SqliteStore load and save",
        settings.runs
    );
    println!();
    println!(
        "| measurement | banks | seconds | CPU seconds | records/s | per round (ms) | peak RSS (MiB) | RSS before (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    let database = scratch.path().join("verifier.sqlite");
    let plain = Verifier { stall_limit: 2, ..Verifier::new(history.ak_public.clone()) };
    for (selection, (banks, _)) in SELECTIONS.iter().enumerate() {
        measure("full", banks, &settings, || verify_full(&plain, &history, selection, settings.records));
        measure("incremental", banks, &settings, || verify_incremental(&plain, &history, selection, &database));
    }

    let start = Instant::now();
    let policy = allow_everything(&history.list);
    let built = start.elapsed();
    let paths = policy.path_count();
    let with_policy = Verifier { policy: Some(policy), stall_limit: 2, ..Verifier::new(history.ak_public.clone()) };
    let both = SELECTIONS.len() - 1;
    let banks = SELECTIONS[both].0;
    measure("full, policy", banks, &settings, || verify_full(&with_policy, &history, both, settings.records));
    measure("incremental, policy", banks, &settings, || verify_incremental(&with_policy, &history, both, &database));
    println!();
    println!("policy: every file digest of the history allowed, {paths} paths, built in {:.2} s", built.as_secs_f64());
}
