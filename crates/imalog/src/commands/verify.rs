//! `imalog verify`: attest a machine through its collector every interval,
//! or check one offline bundle (history, quote and key).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imalog_core::ByteOrder;
use imalog_verifier::attest::{Rejection, Verifier};
use imalog_verifier::client::{quote_from_json, CollectorClient};
use imalog_verifier::online::{attest_once, Verdict};
use imalog_verifier::state::{MachineState, SqliteStore, StateError, StateStore};

use crate::cli::VerifyArgs;
use crate::commands::demo::load_policy;
use crate::outcome::{Failure, Outcome};

/// Reads an attestation key file (binary TPM2B_PUBLIC, or the same in hex)
/// and checks that it parses, so that a bad file fails before any round.
pub fn read_ak(path: &Path) -> Outcome<Vec<u8>> {
    let bytes = std::fs::File::open(path)
        .and_then(|file| crate::input::read_small(file, crate::input::MAX_AK_FILE))
        .map_err(|e| Failure::Usage(format!("--ak {}: {e}", path.display())))?;
    // A binary TPM2B_PUBLIC starts with its 2-byte big-endian size, a few
    // hundred bytes (under 8 KiB), so its first byte is a control character
    // below 0x20. A file of printable text is therefore taken for hex.
    let text = std::str::from_utf8(&bytes)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() || c.is_ascii_whitespace()));
    let key = match text {
        Some(hex) => imalog_core::hex::decode(hex.as_bytes()).map_err(|e| {
            Failure::Usage(format!(
                "--ak {}: not an attestation key (text with invalid hex at character {}); expected a TPM2B_PUBLIC \
                 in binary or hex, such as the ak_public of the collector's /v1/quote",
                path.display(),
                e.position
            ))
        })?,
        None => bytes,
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
    let offline_bundle = args.records.is_some() && args.quote.is_some();
    if offline_bundle {
        let online_only =
            [("--state", args.state.is_some()), ("--once", args.once), ("--machine", args.machine.is_some())];
        if let Some((flag, _)) = online_only.iter().find(|(_, given)| *given) {
            return Err(Failure::Usage(format!(
                "{flag} applies to attesting through --collector; an offline bundle (--records with --quote) is \
                 checked once from a cold boot"
            )));
        }
    } else if args.nonce.is_some() {
        return Err(Failure::Usage(
            "--nonce applies to an offline bundle (--records with --quote); online rounds make their own".into(),
        ));
    }
    if args.max_round_records == 0 {
        return Err(Failure::Usage("--max-round-records must be at least 1".into()));
    }
    let nonce = args.nonce.as_deref().map(parse_nonce).transpose()?;
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
        return offline(args, &verifier, records, quote, nonce);
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
                say!(
                    "{machine}: passed: {}, {} pending{}",
                    certified(result.certified_from, result.certified_to),
                    result.pending,
                    if result.rebooted { " (rebooted)" } else { "" }
                );
            }
            Ok(Verdict::Failed(rejection)) => {
                failed_rounds += 1;
                say!("{machine}: FAILED: {rejection}");
            }
            Err(error) => {
                failed_rounds += 1;
                say!("{machine}: no verdict: {error}");
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
    let Some(path) = state else {
        let usage = |e: StateError| Failure::Usage(format!("in-memory state: {e}"));
        return Ok(Box::new(SqliteStore::in_memory().map_err(usage)?));
    };
    let usage = |e: StateError| Failure::Usage(format!("--state {}: {e}", path.display()));
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
fn offline(args: &VerifyArgs, verifier: &Verifier, records: &Path, quote: &Path, nonce: Option<Vec<u8>>) -> Outcome {
    let text = crate::input::read_small_text(quote, crate::input::MAX_QUOTE_FILE)
        .map_err(|e| Failure::Usage(format!("--quote {}: {e}", quote.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("{}: invalid JSON: {e}", quote.display())))?;
    let mut material = quote_from_json(&json).map_err(|e| Failure::Usage(format!("{}: {e}", quote.display())))?;
    // An offline bundle is checked whole: every record of the file is
    // decoded and counted, whatever last_index the quote file names.
    material.last_index = None;
    let nonce = match nonce {
        Some(nonce) => nonce,
        None => {
            tell!(
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
    let result = verifier.replay_round(&start, &info, &material, file, byte_order, rebooted).map_err(|e| {
        // The reported PCR values come from the quote file, not the records.
        let file = match e {
            Rejection::PcrValues | Rejection::MissingPcrValue { .. } | Rejection::Quote(_) => quote,
            _ => records,
        };
        Failure::Verification(format!("{}: {e}", file.display()))
    })?;
    say!(
        "verified: {}, reproducing the quote (resetCount {}, clock {} ms); {} later records are not covered",
        certified(result.certified_from, result.certified_to),
        info.reset_count,
        info.clock,
        result.pending
    );
    Ok(())
}

/// Parses `--nonce`: 1 to 64 bytes of hex, as the collector accepts.
fn parse_nonce(hex: &str) -> Outcome<Vec<u8>> {
    let nonce = imalog_core::hex::decode(hex.as_bytes()).map_err(|e| {
        Failure::Usage(format!(
            "--nonce {hex:?}: invalid hex at character {}: expected pairs of 0-9 and a-f",
            e.position
        ))
    })?;
    if nonce.is_empty() || nonce.len() > 64 {
        return Err(Failure::Usage(format!("--nonce: {} bytes; expected 1 to 64 bytes of hex", nonce.len())));
    }
    Ok(nonce)
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
