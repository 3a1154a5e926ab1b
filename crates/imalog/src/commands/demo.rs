//! `imalog demo`: the whole system on one machine. A kernel model with a
//! software TPM measures real executables and libraries, a collector
//! exports and stores the records through the securityfs file operations,
//! and a verifier attests every round against a fresh quote, with its own
//! state in SQLite. With `--mount` and `--tpm swtpm:...` the kernel model,
//! the collector and the verifier run as separate processes over FUSE and
//! swtpm.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use imalog_collector::service::{Collector, HistoryFormat, QuoteOutput};
use imalog_collector::{Exporter, Flavor, Securityfs, Store};
use imalog_core::{Bank, ByteOrder};
use imalog_fs::Machine;
use imalog_kernel::{Ima, KernelConfig};
use imalog_tpm::{SoftTpm, Tpm};
use imalog_verifier::attest::{QuoteMaterial, Rejection, Verifier};
use imalog_verifier::policy::Policy;
use imalog_verifier::state::{MachineState, SqliteStore, StateStore, VerdictRecord};

use crate::cli::DemoArgs;
use crate::inprocess::{InProcessQuoter, InProcessSecurityfs};
use crate::outcome::{Failure, Outcome};

/// Name of the one machine the embedded demo attests.
const MACHINE: &str = "demo";

/// Files of the workload and when each was last measured.
pub(crate) struct Workload {
    candidates: Vec<PathBuf>,
    next: usize,
    measured: BTreeMap<PathBuf, (SystemTime, u64)>,
}

impl Workload {
    /// Regular files under `roots`: executables and shared libraries, two
    /// folder levels deep at most, in a fixed order.
    pub(crate) fn new(roots: &[PathBuf]) -> Self {
        let mut candidates = Vec::new();
        for root in roots {
            collect_files(root, 2, &mut candidates);
        }
        candidates.sort();
        candidates.dedup();
        Workload { candidates, next: 0, measured: BTreeMap::new() }
    }

    /// Files to measure this round: up to `count` not measured yet, and
    /// every measured file whose modification time or size changed.
    pub(crate) fn due(&mut self, count: usize) -> Vec<PathBuf> {
        let mut due: Vec<PathBuf> = self
            .measured
            .iter()
            .filter(|(path, seen)| stamp(path).is_some_and(|now| now != **seen))
            .map(|(path, _)| path.clone())
            .collect();
        let end = (self.next + count).min(self.candidates.len());
        due.extend_from_slice(&self.candidates[self.next..end]);
        self.next = end;
        due
    }

    pub(crate) fn note(&mut self, path: &Path) {
        if let Some(seen) = stamp(path) {
            self.measured.insert(path.to_path_buf(), seen);
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn collect_files(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let executable = std::fs::metadata(&path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                .unwrap_or(false);
            if executable || name.contains(".so") {
                out.push(path);
            }
        } else if kind.is_dir() && depth > 0 {
            collect_files(&path, depth - 1, out);
        }
    }
}

/// Counts shown on the progress line and in the summary.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    round: u32,
    measured: u64,
    duplicates: u64,
    resident: u64,
    stored: u64,
    verified: u64,
    pending: u64,
    passed: u32,
    failed: u32,
    kexecs: u32,
}

/// Runs `imalog demo`.
pub fn run(args: &DemoArgs) -> Outcome {
    if args.mount.is_some() || args.tpm.is_some() {
        return crate::commands::demo_processes::run(args);
    }
    let policy = match &args.policy {
        Some(path) => Some(load_policy(path)?),
        None => None,
    };
    let mut workload = Workload::new(&workload_roots(args)?);
    if workload.candidates.is_empty() {
        return Err(Failure::Usage(format!(
            "no executables or shared libraries found under {}; give --workload with a folder that has some",
            workload_roots(args)?.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let work = WorkDirectory::new(args.dir.as_deref())?;

    // The machine: a kernel model on a software TPM with an attestation key.
    let mut tpm = SoftTpm::with_default_banks();
    tpm.simulate_boot(b"imalog demo");
    let ak_public = tpm
        .quote(b"enrolment", &[(Bank::SHA256, vec![10])])
        .map_err(|e| Failure::Usage(format!("software TPM quote: {e}")))?
        .ak_public;
    let config = KernelConfig::default();
    let ima = Ima::cold_boot(config.clone(), Some(Box::new(tpm))).map_err(|e| Failure::Usage(e.to_string()))?;
    let machine = Arc::new(Machine::new(config, ima));

    // The collector, through the securityfs operations of the model.
    let securityfs = Securityfs::with_backend(Arc::new(InProcessSecurityfs::new(Arc::clone(&machine))));
    let store = Store::open(&work.path("store")).map_err(|e| Failure::Usage(format!("store: {e}")))?;
    let boots = Arc::clone(&machine);
    let exporter = Exporter::new(securityfs, store, Flavor::Staged, Box::new(move || Some(boots.boots().to_string())))
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let collector = Collector::new(exporter, Some(Box::new(InProcessQuoter::new(Arc::clone(&machine)))));

    // The verifier, with the key enrolled out of band and its own state.
    let verifier = Verifier { policy, ..Verifier::new(ak_public) };
    let mut state_store = SqliteStore::open(&work.path("verifier.db")).map_err(|e| Failure::Usage(e.to_string()))?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::Usage(format!("cannot install signal handlers: {e}")))?;
    }
    let mut display = Display::new(args.rounds);
    let mut tally = Tally::default();

    for round in 1..=args.rounds {
        let started = Instant::now();
        tally.round = round;
        for path in workload.due(args.files_per_round) {
            match machine.kernel().measure_path(&path, None) {
                Ok(imalog_kernel::measure::FileOutcome::Measured(_)) => tally.measured += 1,
                Ok(imalog_kernel::measure::FileOutcome::Duplicate) => tally.duplicates += 1,
                Ok(imalog_kernel::measure::FileOutcome::Suspended) => {}
                Err(error) => tracing::debug!(%error, "file not measured"),
            }
            workload.note(&path);
        }
        if args.kexec_every.is_some_and(|every| every > 0 && round % every == 0) {
            machine.kexec().map_err(|e| Failure::Verification(format!("kexec: {e}")))?;
            tally.kexecs += 1;
        }
        if let Err(error) = collector.round() {
            display.message(&format!("round {round}: export failed: {error}"));
        }
        match attest(&verifier, &mut state_store, &collector) {
            Ok((certified_to, pending)) => {
                tally.passed += 1;
                tally.verified = certified_to;
                tally.pending = pending;
            }
            Err(rejection) => {
                tally.failed += 1;
                display.message(&format!("round {round}: attestation FAILED: {rejection}"));
            }
        }
        tally.resident = machine.kernel().counters().current + machine.kernel().counters().staged;
        tally.stored = collector.status().1;
        display.show(&tally);
        if stop.load(Ordering::Relaxed) {
            display.message(&format!("interrupted after round {round} of {}", args.rounds));
            break;
        }
        if round < args.rounds {
            let until = started + args.interval;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
            }
        }
    }
    display.finish();
    summary(&tally, &work)
}

/// The folders of the workload, as absolute paths (the kernel logs absolute
/// paths, and runtime policies list them): `--workload`, which must name
/// folders, or where this machine keeps its executables and libraries.
pub(crate) fn workload_roots(args: &DemoArgs) -> Outcome<Vec<PathBuf>> {
    if args.workload.is_empty() {
        return Ok(["/usr/bin", "/usr/sbin", "/usr/lib"].iter().map(PathBuf::from).collect());
    }
    args.workload
        .iter()
        .map(|root| {
            let absolute = std::fs::canonicalize(root)
                .map_err(|e| Failure::Usage(format!("--workload {}: {e}", root.display())))?;
            if !absolute.is_dir() {
                return Err(Failure::Usage(format!("--workload {}: not a folder", root.display())));
            }
            Ok(absolute)
        })
        .collect()
}

/// One attestation round in-process; returns the index certified up to and
/// the records pending.
fn attest(verifier: &Verifier, store: &mut SqliteStore, collector: &Collector) -> Result<(u64, u64), Rejection> {
    let state = store
        .load(MACHINE)
        .map_err(|e| Rejection::Records(e.to_string()))?
        .unwrap_or_else(|| MachineState::new(MACHINE));
    let nonce = imalog_verifier::online::nonce().map_err(|e| Rejection::Records(e.to_string()))?;
    let (output, last_index) = collector.quote(&nonce, &[10]).map_err(|e| Rejection::Quote(e.to_string()))?;
    let quote = material(output, collector.status().0, last_index);
    let verdict = verifier.check_quote(&state, &nonce, &quote).and_then(|(info, start, rebooted)| {
        let mut history = Vec::new();
        collector
            .write_history(start.replay.next_index, HistoryFormat::Binary, &mut history)
            .map_err(|e| Rejection::Records(e.to_string()))?;
        verifier.replay_round(&start, &info, &quote, history.as_slice(), ByteOrder::Little, rebooted)
    });
    let record = |ok: bool, from: u64, to: u64, message: String| VerdictRecord {
        machine: MACHINE.to_string(),
        ok,
        certified_from: from,
        certified_to: to,
        message,
    };
    match verdict {
        Ok(result) => {
            let message = format!("certified records {} to {}", result.certified_from, result.certified_to);
            store
                .save(&result.state, &record(true, result.certified_from, result.certified_to, message))
                .map_err(|e| Rejection::Records(e.to_string()))?;
            Ok((result.certified_to, result.pending))
        }
        Err(rejection) => {
            let index = state.replay.next_index;
            let _ = store.save(&state, &record(false, index, index, rejection.to_string()));
            Err(rejection)
        }
    }
}

fn material(output: QuoteOutput, epoch: u64, last_index: Option<u64>) -> QuoteMaterial {
    QuoteMaterial {
        attest: output.attest,
        signature: output.signature,
        pcrs: output.pcrs,
        epoch: Some(epoch),
        last_index,
    }
}

/// Loads a runtime policy (Keylime's JSON).
pub fn load_policy(path: &Path) -> Outcome<Policy> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("--policy {}: {e}", path.display())))?;
    Policy::from_keylime_json(&text).map_err(|e| Failure::Usage(format!("--policy {}: {e}", path.display())))
}

fn summary(tally: &Tally, work: &WorkDirectory) -> Outcome {
    say!(
        "demo: {} rounds, {} attestations passed, {} failed; {} files measured ({} unchanged re-measurements refused), \
         {} kexec(s)",
        tally.round, tally.passed, tally.failed, tally.measured, tally.duplicates, tally.kexecs
    );
    let verified = match tally.verified {
        0 => "no record verified".to_string(),
        count => format!("records 0 to {} verified", count - 1),
    };
    say!(
        "demo: {} records stored by the collector, {} still in the kernel; {verified}, {} pending, {} not certified",
        tally.stored,
        tally.resident,
        tally.pending,
        tally.stored.saturating_sub(tally.verified + tally.pending)
    );
    say!("demo: store and verifier state in {}", work.root.display());
    if tally.failed > 0 {
        return Err(Failure::Verification(format!("{} attestation round(s) failed", tally.failed)));
    }
    Ok(())
}

/// The folder for the store and the verifier state.
struct WorkDirectory {
    root: PathBuf,
}

impl WorkDirectory {
    /// Creates the folder, or takes an empty one: a store or a verifier
    /// state left by an earlier run would mix two boots in one history.
    fn new(given: Option<&Path>) -> Outcome<Self> {
        let root = match given {
            Some(path) => path.to_path_buf(),
            None => std::env::temp_dir().join(format!("imalog-demo-{}", std::process::id())),
        };
        if root.exists() {
            let mut entries =
                std::fs::read_dir(&root).map_err(|e| Failure::Usage(format!("--dir {}: {e}", root.display())))?;
            if entries.next().is_some() {
                return Err(Failure::Usage(format!(
                    "--dir {}: the folder is not empty (an earlier demo run?); give a new or empty folder",
                    root.display()
                )));
            }
        }
        std::fs::create_dir_all(&root).map_err(|e| Failure::Usage(format!("{}: {e}", root.display())))?;
        Ok(WorkDirectory { root })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// The live progress line on a terminal, or one line per round otherwise.
struct Display {
    terminal: bool,
    rounds: u32,
    drawn: bool,
}

impl Display {
    fn new(rounds: u32) -> Self {
        Display { terminal: std::io::stdout().is_terminal(), rounds, drawn: false }
    }

    fn line(&self, tally: &Tally) -> String {
        format!(
            "round {}/{} | measured {} | in kernel {} | stored {} | verified {} | {}",
            tally.round,
            self.rounds,
            tally.measured,
            tally.resident,
            tally.stored,
            tally.verified,
            if tally.failed == 0 {
                "attestation ok".to_string()
            } else {
                format!("attestation FAILED in {} round(s)", tally.failed)
            }
        )
    }

    fn show(&mut self, tally: &Tally) {
        let mut out = std::io::stdout().lock();
        if self.terminal {
            let _ = write!(out, "\r\x1b[2K{}", self.line(tally));
            self.drawn = true;
        } else {
            let _ = writeln!(out, "{}", self.line(tally));
        }
        let _ = out.flush();
    }

    fn message(&mut self, text: &str) {
        if self.drawn {
            say!();
            self.drawn = false;
        }
        tell!("imalog: {text}");
    }

    fn finish(&mut self) {
        if self.drawn {
            say!();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn workload_measures_new_files_in_order_and_changed_files_again() {
        let temp = tempfile::tempdir().expect("temporary directory");
        for name in ["b", "a", "c"] {
            let path = temp.path().join(name);
            std::fs::write(&path, name).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::write(temp.path().join("text"), "not executable").expect("write");
        let mut workload = Workload::new(&[temp.path().to_path_buf()]);
        let first = workload.due(2);
        assert_eq!(first, vec![temp.path().join("a"), temp.path().join("b")]);
        for path in &first {
            workload.note(path);
        }
        // The size changes, so the stamp changes even within one clock tick.
        std::fs::write(temp.path().join("a"), "a changed").expect("rewrite");
        let second = workload.due(2);
        assert_eq!(second, vec![temp.path().join("a"), temp.path().join("c")]);
        for path in &second {
            workload.note(path);
        }
        assert!(workload.due(2).is_empty());
    }
}
