//! `imalog demo --mount DIR --tpm swtpm:HOST:PORT`: the same demo with each
//! part in its own process, as on a real machine. `imalog emulate` mounts
//! the kernel model over FUSE and extends swtpm; `imalog collect` exports
//! through the mount and quotes through the emulator's TPM proxy; this
//! process measures files through the control socket and attests through
//! the collector's HTTP API.

use crate::cli::DemoArgs;
use crate::outcome::{Failure, Outcome};

/// Runs the multi-process demo.
#[cfg(not(feature = "tss"))]
pub fn run(args: &DemoArgs) -> Outcome {
    Err(Failure::Usage(format!(
        "--tpm {}: the multi-process demo needs a build with the tss feature (`--features tss`, needs libtss2-dev)",
        args.tpm.as_deref().unwrap_or("")
    )))
}

#[cfg(feature = "tss")]
pub use processes::run;

#[cfg(feature = "tss")]
mod processes {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use imalog_fs::control::{send, Request};
    use imalog_verifier::attest::Verifier;
    use imalog_verifier::client::CollectorClient;
    use imalog_verifier::online::{attest_once, Verdict};
    use imalog_verifier::state::SqliteStore;

    use super::*;

    /// A child process stopped with SIGTERM when dropped.
    struct Process {
        child: Child,
        name: &'static str,
    }

    impl Drop for Process {
        fn drop(&mut self) {
            // SIGTERM lets emulate unmount and collect finish its round.
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            tracing::warn!(process = self.name, "did not stop after SIGTERM; killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits for a line of a child's log that `pick` accepts.
    fn wait_for_line(log: &Path, pick: impl Fn(&str) -> Option<String>, what: &str) -> Outcome<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(file) = std::fs::File::open(log) {
                for line in BufReader::new(file).lines().map_while(Result::ok) {
                    if let Some(found) = pick(&line) {
                        return Ok(found);
                    }
                }
            }
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                return Err(Failure::Usage(format!("{what} did not start within 30 s:\n{text}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(name: &'static str, args: &[String], log: &Path) -> Outcome<Process> {
        let output = std::fs::File::create(log).map_err(|e| Failure::Usage(format!("{}: {e}", log.display())))?;
        let errors = output.try_clone().map_err(|e| Failure::Usage(e.to_string()))?;
        let executable = std::env::current_exe().map_err(|e| Failure::Usage(e.to_string()))?;
        let child = Command::new(executable)
            .args(args)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|e| Failure::Usage(format!("cannot start imalog {name}: {e}")))?;
        Ok(Process { child, name })
    }

    /// Fails unless PCR 10 of the TPM is in its reset state: the kernel
    /// model starts a cold boot, and a PCR that an earlier run extended can
    /// never be reproduced from the new history.
    fn check_fresh_tpm(tpm: &str) -> Outcome {
        let tcti = crate::tpm::tcti_for(tpm)?;
        let mut device = imalog_tpm::TssTpm::open(&tcti).map_err(|e| Failure::Usage(format!("--tpm {tpm}: {e}")))?;
        let bank = imalog_tpm::Tpm::banks(&device)
            .first()
            .copied()
            .ok_or_else(|| Failure::Usage(format!("--tpm {tpm}: the TPM has no PCR bank")))?;
        let value = imalog_tpm::Tpm::read(&mut device, &bank, 10)
            .map_err(|e| Failure::Usage(format!("--tpm {tpm}: reading PCR 10: {e}")))?;
        if value.as_bytes().iter().any(|&byte| byte != 0) {
            return Err(Failure::Usage(format!(
                "--tpm {tpm}: PCR 10 was already extended (by an earlier run?), so a new boot's history cannot \
                 reproduce it; restart swtpm, whose TPM2_Startup(CLEAR) resets the PCRs"
            )));
        }
        Ok(())
    }

    pub fn run(args: &DemoArgs) -> Outcome {
        let (Some(mount), Some(tpm)) = (&args.mount, &args.tpm) else {
            return Err(Failure::Usage("--mount and --tpm go together".into()));
        };
        let work = std::env::temp_dir().join(format!("imalog-demo-{}", std::process::id()));
        let work = args.dir.clone().unwrap_or(work);
        std::fs::create_dir_all(&work).map_err(|e| Failure::Usage(format!("{}: {e}", work.display())))?;
        let path = |name: &str| -> PathBuf { work.join(name) };
        let text = |p: &Path| p.display().to_string();
        std::fs::create_dir_all(mount).map_err(|e| Failure::Usage(format!("--mount {}: {e}", mount.display())))?;

        check_fresh_tpm(tpm)?;
        let emulate = spawn(
            "emulate",
            &[
                "emulate".into(),
                "--mount".into(),
                text(mount),
                "--tpm".into(),
                tpm.clone(),
                "--tpm-proxy".into(),
                "127.0.0.1:0".into(),
                "--control".into(),
                text(&path("control.sock")),
                "--boot-id-file".into(),
                text(&path("boot_id")),
            ],
            &path("emulate.log"),
        )?;
        let proxy_tcti = wait_for_line(
            &path("emulate.log"),
            |line| line.strip_prefix("tpm-proxy ").and_then(|rest| rest.split_whitespace().nth(1)).map(String::from),
            "imalog emulate",
        )?;
        wait_for_line(&path("emulate.log"), |line| line.contains("securityfs mounted").then(String::new), "the mount")?;

        // Enrol the attestation key out of band, before any attestation.
        let ak_public = {
            let mut tss =
                imalog_tpm::TssTpm::open(&proxy_tcti).map_err(|e| Failure::Usage(format!("enrolment: {e}")))?;
            tss.ak_public().map_err(|e| Failure::Usage(format!("enrolment: {e}")))?
        };

        let collect = spawn(
            "collect",
            &[
                "collect".into(),
                "--securityfs".into(),
                text(mount),
                "--store".into(),
                text(&path("store")),
                "--interval".into(),
                format!("{}ms", args.interval.as_millis().max(100)),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--tpm".into(),
                proxy_tcti.clone(),
                "--boot-id-file".into(),
                text(&path("boot_id")),
            ],
            &path("collect.log"),
        )?;
        let address = wait_for_line(
            &path("collect.log"),
            |line| {
                line.contains("HTTP API listening")
                    .then(|| line.split("address=").nth(1).map(|a| a.trim().to_string()))?
            },
            "imalog collect",
        )?;

        let policy = match &args.policy {
            Some(file) => Some(crate::commands::demo::load_policy(file)?),
            None => None,
        };
        let verifier = Verifier { policy, ..Verifier::new(ak_public) };
        let client = CollectorClient::new(&format!("http://{address}")).map_err(|e| Failure::Usage(e.to_string()))?;
        let mut store = SqliteStore::open(&path("verifier.db")).map_err(|e| Failure::Usage(e.to_string()))?;

        let mut workload = crate::commands::demo::Workload::new(&crate::commands::demo::workload_roots(args)?);
        let (mut passed, mut failed) = (0u32, 0u32);
        for round in 1..=args.rounds {
            let paths = workload.due(args.files_per_round);
            if !paths.is_empty() {
                let request = Request::Measure { paths: paths.clone(), pcr: None };
                send(&path("control.sock"), &request).map_err(|e| Failure::Usage(format!("measure: {e}")))?;
                for path in &paths {
                    workload.note(path);
                }
            }
            if args.kexec_every.is_some_and(|every| every > 0 && round % every == 0) {
                send(&path("control.sock"), &Request::Kexec).map_err(|e| Failure::Usage(format!("kexec: {e}")))?;
            }
            std::thread::sleep(args.interval);
            match attest_once(&verifier, &mut store, &client, "demo") {
                Ok(Verdict::Passed(result)) => {
                    passed += 1;
                    say!(
                        "round {round}/{} | verified {} | pending {} | attestation ok",
                        args.rounds,
                        result.certified_to,
                        result.pending
                    );
                }
                Ok(Verdict::Failed(rejection)) => {
                    failed += 1;
                    say!("round {round}/{} | attestation FAILED: {rejection}", args.rounds);
                }
                Err(error) => {
                    failed += 1;
                    say!("round {round}/{} | no verdict: {error}", args.rounds);
                }
            }
        }
        drop(collect);
        drop(emulate);
        say!(
            "demo: {} rounds over FUSE and swtpm, {passed} passed, {failed} failed; logs in {}",
            args.rounds,
            work.display()
        );
        if failed > 0 {
            return Err(Failure::Verification(format!("{failed} attestation round(s) failed")));
        }
        Ok(())
    }
}
