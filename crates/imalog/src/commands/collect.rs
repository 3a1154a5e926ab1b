//! `imalog collect`: export rounds on an interval until SIGINT or SIGTERM,
//! with the HTTP API beside them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imalog_collector::http::HttpServer;
use imalog_collector::service::Collector;
use imalog_collector::{Capability, Exporter, Flavor, Securityfs, Store};

use crate::cli::CollectArgs;
use crate::outcome::{Failure, Outcome};

/// Runs `imalog collect`.
pub fn run(args: &CollectArgs) -> Outcome {
    let fs = Securityfs::new(&args.securityfs).map_err(|e| Failure::Usage(e.to_string()))?;
    let capability = fs.capability();
    let flavor = match &args.flavor {
        Some(text) => text.parse::<Flavor>().map_err(Failure::Usage)?,
        None => match capability {
            Capability::Staging => Flavor::Staged,
            Capability::DeleteOnly | Capability::ReadOnly => {
                tracing::info!(
                    securityfs = %fs.describe(),
                    "this kernel has no _staged files (before 7.2, or built without CONFIG_IMA_STAGING); copying records read-only"
                );
                Flavor::ReadOnly
            }
        },
    };
    let store = Store::open(&args.store).map_err(|e| Failure::Usage(format!("store: {e}")))?;
    let (described, epoch, next_index) = (fs.describe(), store.epoch(), store.next_index());
    let boot_id_file = args.boot_id_file.clone();
    let without_boot_id = boot_id_file.as_os_str() == "none";
    if without_boot_id {
        tracing::warn!("--boot-id-file none: the collector cannot distinguish a reboot from a kexec, so the history stays in one epoch");
    }
    (!without_boot_id).then(|| read_boot_id(&boot_id_file)).transpose().map_err(|e| {
        Failure::Usage(format!(
            "--boot-id-file {}: {e}; the collector needs it to tell a reboot from a kexec",
            boot_id_file.display()
        ))
    })?;
    let unreadable = AtomicBool::new(false);
    let boot_identity = Box::new(move || match (!without_boot_id).then(|| read_boot_id(&boot_id_file))? {
        Ok(id) => {
            unreadable.store(false, Ordering::Relaxed);
            Some(id)
        }
        Err(error) => {
            if !unreadable.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    file = %boot_id_file.display(),
                    %error,
                    "failed to read the boot identity; until it can be read, the collector cannot distinguish a reboot from a kexec"
                );
            }
            None
        }
    });
    let exporter = Exporter::new(fs, store, flavor, boot_identity).map_err(|e| Failure::Usage(e.to_string()))?;
    let quoter = match &args.tpm {
        Some(spec) => Some(crate::tpm::open_quoter(spec)?),
        None => None,
    };
    let collector = Arc::new(Collector::new(exporter, quoter));

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::Usage(format!("cannot install signal handlers: {e}")))?;
    }
    let _http = match args.listen.as_str() {
        "none" => None,
        address => Some(
            HttpServer::start(address, Arc::clone(&collector))
                .map_err(|e| Failure::Usage(format!("--listen {address}: {e}")))?,
        ),
    };

    tracing::info!(
        securityfs = %described,
        store = %args.store.display(),
        %flavor,
        ?capability,
        epoch,
        next_index,
        "collector started"
    );
    let mut failures = 0u32;
    loop {
        match collector.round() {
            Ok(report) => {
                failures = 0;
                if report.committed > 0 || report.dropped > 0 || report.suspending {
                    tracing::info!(
                        committed = report.committed,
                        dropped = report.dropped,
                        suspending = report.suspending,
                        next_index = report.next_index,
                        epoch = report.epoch,
                        "round done"
                    );
                }
            }
            Err(error) => {
                failures += 1;
                if args.once {
                    tracing::error!(%error, "round failed; nothing was deleted that is not stored");
                    return Err(Failure::Verification(format!("collect: {error}")));
                }
                tracing::error!(%error, failures, "round failed; nothing was deleted that is not stored; retrying next round");
            }
        }
        if args.once || stop.load(Ordering::Relaxed) {
            break;
        }
        let until = Instant::now() + args.interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    let (epoch, next_index, _) = collector.status();
    tracing::info!(epoch, next_index, "collector stopped after a committed round");
    Ok(())
}

/// Reads a boot identity: at most 4 KiB of UTF-8 text, not empty once
/// trimmed.
fn read_boot_id(path: &std::path::Path) -> std::io::Result<String> {
    let bytes = crate::input::read_small(std::fs::File::open(path)?, 4096)?;
    let text =
        String::from_utf8(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))?;
    let id = text.trim();
    if id.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty"));
    }
    Ok(id.to_string())
}
