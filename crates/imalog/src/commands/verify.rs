//! `imalog verify`: attest a machine through its collector every interval,
//! or check one offline bundle (history, quote and key).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imalog_core::ByteOrder;
use imalog_verifier::attest::Verifier;
use imalog_verifier::client::{quote_from_json, CollectorClient};
use imalog_verifier::online::{attest_once, Verdict};
use imalog_verifier::state::{MachineState, SqliteStore, StateError, StateStore};

use crate::cli::VerifyArgs;
use crate::commands::demo::load_policy;
use crate::outcome::{Failure, Outcome};

/// Reads an attestation key file (binary TPM2B_PUBLIC, or the same in hex)
/// and checks that it parses, so that a bad file fails before any round.
pub fn read_ak(path: &Path) -> Outcome<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Failure::Usage(format!("--ak {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    let key = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        imalog_core::hex::decode(trimmed.as_bytes())
            .map_err(|e| Failure::Usage(format!("--ak {}: invalid hex at character {}", path.display(), e.position)))?
    } else {
        bytes
    };
    imalog_tpm::AkPublic::parse(&key).map_err(|e| {
        Failure::Usage(format!(
            "--ak {}: not an attestation key ({e}); expected a TPM2B_PUBLIC in binary or hex, such as the \
             ak_public of the collector's /v1/quote",
            path.display()
        ))
    })?;
    Ok(key)
}

/// Runs `imalog verify`.
pub fn run(args: &VerifyArgs) -> Outcome {
    let policy = match &args.policy {
        Some(path) => {
            let mut policy = load_policy(path)?;
            policy.accept_violations = args.accept_violations;
            Some(policy)
        }
        None => None,
    };
    let verifier = Verifier {
        policy,
        stall_limit: args.stall_limit,
        max_round_records: args.max_round_records,
        ..Verifier::new(read_ak(&args.ak)?)
    };
    if let (Some(records), Some(quote)) = (&args.records, &args.quote) {
        return offline(args, &verifier, records, quote);
    }
    let Some(url) = &args.collector else {
        return Err(Failure::Usage("give --collector URL, or --records FILE with --quote FILE".into()));
    };
    let client = CollectorClient::new(url).map_err(|e| Failure::Usage(e.to_string()))?;
    let machine = args.machine.clone().unwrap_or_else(|| url.clone());
    let mut store = open_store(args.state.as_deref())?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::Usage(format!("cannot install signal handlers: {e}")))?;
    }
    let mut failed_rounds = 0u64;
    loop {
        let started = Instant::now();
        match attest_once(&verifier, store.as_mut(), &client, &machine) {
            Ok(Verdict::Passed(result)) => {
                println!(
                    "{machine}: passed: {}, {} pending{}",
                    certified(result.certified_from, result.certified_to),
                    result.pending,
                    if result.rebooted { " (rebooted)" } else { "" }
                );
            }
            Ok(Verdict::Failed(rejection)) => {
                failed_rounds += 1;
                println!("{machine}: FAILED: {rejection}");
            }
            Err(error) => {
                failed_rounds += 1;
                println!("{machine}: no verdict: {error}");
            }
        }
        if args.once || stop.load(Ordering::Relaxed) {
            break;
        }
        let until = started + args.interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    if failed_rounds > 0 {
        return Err(Failure::Verification(format!("{machine}: {failed_rounds} round(s) failed")));
    }
    Ok(())
}

/// Opens `--state`: a PostgreSQL URL, a SQLite file, or SQLite in memory
/// when the option is absent.
fn open_store(state: Option<&Path>) -> Outcome<Box<dyn StateStore>> {
    let usage = |e: StateError| Failure::Usage(format!("--state: {e}"));
    let Some(path) = state else {
        return Ok(Box::new(SqliteStore::in_memory().map_err(usage)?));
    };
    match path.to_str() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => open_postgres(url),
        _ => Ok(Box::new(SqliteStore::open(path).map_err(usage)?)),
    }
}

/// Connects to the PostgreSQL state database. Errors leave the URL out,
/// because it can contain a password.
#[cfg(feature = "postgres")]
fn open_postgres(url: &str) -> Outcome<Box<dyn StateStore>> {
    let store =
        imalog_verifier::postgres::PostgresStore::connect(url).map_err(|e| Failure::Usage(format!("--state: {e}")))?;
    Ok(Box::new(store))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_url: &str) -> Outcome<Box<dyn StateStore>> {
    Err(Failure::Usage(
        "--state: a PostgreSQL URL needs imalog built with PostgreSQL support (cargo build --features postgres)".into(),
    ))
}

/// Checks one bundle from a cold boot: the quote with the key (and nonce
/// when given), then the history against it.
fn offline(args: &VerifyArgs, verifier: &Verifier, records: &Path, quote: &Path) -> Outcome {
    let text = std::fs::read_to_string(quote).map_err(|e| Failure::Usage(format!("{}: {e}", quote.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("{}: invalid JSON: {e}", quote.display())))?;
    let material = quote_from_json(&json).map_err(|e| Failure::Usage(format!("{}: {e}", quote.display())))?;
    let nonce = match &args.nonce {
        Some(hex) => {
            imalog_core::hex::decode(hex.as_bytes()).map_err(|_| Failure::Usage("--nonce: invalid hex".into()))?
        }
        None => {
            eprintln!(
                "imalog: warning: no --nonce given, so the quote's nonce is not checked: the bundle proves the \
                 history, not that the quote is fresh"
            );
            let info = imalog_tpm::QuoteInfo::parse(&material.attest)
                .map_err(|e| Failure::Verification(format!("{}: {e}", quote.display())))?;
            info.extra_data
        }
    };
    let state = MachineState::new("offline");
    let (info, start, rebooted) = verifier
        .check_quote(&state, &nonce, &material)
        .map_err(|e| Failure::Verification(format!("{}: {e}", quote.display())))?;
    let mut file = std::fs::File::open(records).map_err(|e| Failure::Usage(format!("{}: {e}", records.display())))?;
    let byte_order = match args.records_endian {
        Some(order) => order,
        None => detect_byte_order(&mut file).map_err(|e| Failure::Usage(format!("{}: {e}", records.display())))?,
    };
    let result = verifier
        .replay_round(&start, &info, &material, file, byte_order, rebooted)
        .map_err(|e| Failure::Verification(format!("{}: {e}", records.display())))?;
    println!(
        "verified: {}, reproducing the quote (resetCount {}, clock {} ms); {} later records are not covered",
        certified(result.certified_from, result.certified_to),
        info.reset_count,
        info.clock,
        result.pending
    );
    Ok(())
}

/// Detects the byte order of a binary list from its first record's PCR
/// index, which is below 24 in the kernel's order and not in the other, and
/// rewinds the file. An empty file reads as little-endian.
fn detect_byte_order(file: &mut std::fs::File) -> std::io::Result<ByteOrder> {
    use std::io::{Read, Seek};
    let mut word = [0u8; 4];
    let mut filled = 0;
    while filled < word.len() {
        match file.read(&mut word[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    file.rewind()?;
    if filled < word.len() || u32::from_le_bytes(word) < 24 {
        Ok(ByteOrder::Little)
    } else {
        Ok(ByteOrder::Big)
    }
}

/// Describes the records certified in one round, `to` being exclusive.
fn certified(from: u64, to: u64) -> String {
    match to.saturating_sub(from) {
        0 => format!("no new record certified (next index {from})"),
        1 => format!("record {from} certified"),
        _ => format!("records {from} to {} certified", to - 1),
    }
}
