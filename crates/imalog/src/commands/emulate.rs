//! `imalog emulate`: run the kernel model behind a FUSE mount of its
//! securityfs files until SIGINT or SIGTERM, then unmount.

use std::sync::Arc;

use imalog_core::{Bank, HashAlgorithm, Record, Template};
use imalog_fs::control::ControlServer;
use imalog_fs::Machine;
use imalog_kernel::{Ima, KernelConfig};
use imalog_tpm::{SoftTpm, Tpm};

use crate::cli::EmulateArgs;
use crate::input::open_input;
use crate::outcome::{Failure, Outcome};

/// Runs `imalog emulate`.
pub fn run(args: &EmulateArgs) -> Outcome {
    // Check the mount point before the boot extends the TPM: a failed
    // mount afterwards would leave PCR 10 extended by a list that no mount serves.
    if !args.mount.is_dir() {
        return Err(Failure::Usage(format!(
            "--mount {}: not an existing folder; create it first (mkdir -p)",
            args.mount.display()
        )));
    }
    let config = kernel_config(args)?;
    let (tpm, proxy) = open_tpm(args)?;
    let ima = match &args.boot_log {
        Some(path) => boot_from_log(args, path, config.clone(), tpm)?,
        None => Ima::cold_boot(config.clone(), tpm).map_err(|e| Failure::Usage(format!("kernel boot failed: {e}")))?,
    };
    let counters = ima.counters();
    let machine = Arc::new(Machine::new(config, ima));
    if let Some(path) = &args.boot_id_file {
        write_boot_id(path)?;
        let path = path.clone();
        machine.on_boot(Box::new(move || {
            if let Err(error) = write_boot_id(&path) {
                tracing::error!(%error, "cannot write the boot id file");
            }
        }));
    }

    let control = match &args.control {
        Some(path) => Some(
            ControlServer::start(path, Arc::clone(&machine), args.test_hooks)
                .map_err(|e| Failure::Usage(format!("control socket: {e}")))?,
        ),
        None => None,
    };
    let session = imalog_fs::mount(Arc::clone(&machine), &args.mount)
        .map_err(|e| Failure::Usage(format!("{}: mount failed: {e}", args.mount.display())))?;
    tracing::info!(
        mount = %args.mount.display(),
        records = counters.current,
        tpm = %args.tpm,
        "securityfs mounted; waiting for SIGINT or SIGTERM"
    );

    wait_for_termination()?;
    tracing::info!(mount = %args.mount.display(), "unmounting");
    drop(session);
    drop(control);
    drop(proxy);
    Ok(())
}

/// Writes a fresh random boot id, in the format of
/// /proc/sys/kernel/random/boot_id.
fn write_boot_id(path: &std::path::Path) -> Outcome {
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| Failure::Usage(format!("/dev/urandom: {e}")))?;
    let hex = imalog_core::hex::encode(&random);
    let text = format!("{}-{}-{}-{}-{}\n", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

fn wait_for_termination() -> Outcome {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Failure::Usage(format!("cannot install signal handlers: {e}")))?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "termination signal received");
    }
    Ok(())
}

fn kernel_config(args: &EmulateArgs) -> Outcome<KernelConfig> {
    let ima_hash = HashAlgorithm::from_name(&args.ima_hash).filter(|a| a.is_kernel_mapped()).ok_or_else(|| {
        Failure::Usage(format!("--ima-hash {}: expected sha1, sha256, sha384, sha512 or sm3", args.ima_hash))
    })?;
    let template =
        Template::lookup(args.template.as_bytes()).map_err(|e| Failure::Usage(format!("--template: {e}")))?;
    if template.is_legacy_ima() && !matches!(ima_hash, HashAlgorithm::Sha1) {
        return Err(Failure::Usage(
            "--template ima needs --ima-hash sha1: the kernel refuses the legacy template with other algorithms".into(),
        ));
    }
    Ok(KernelConfig {
        ima_hash,
        template,
        staging: !args.no_staging,
        n_on_original_without_staging: !args.read_only_without_staging,
        flush_htable: args.flush_htable,
        htable_disabled: args.disable_htable,
        byte_order: args.input.input_endian.unwrap_or_default(),
        ..KernelConfig::default()
    })
}

/// A handle that keeps a TPM proxy running; dropping it stops the proxy.
pub type ProxyGuard = Option<Box<dyn std::any::Any>>;

fn open_tpm(args: &EmulateArgs) -> Outcome<(Option<Box<dyn Tpm>>, ProxyGuard)> {
    if args.tpm == "soft" {
        let banks: Vec<Bank> = if args.banks.is_empty() {
            vec![Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512]
        } else {
            args.banks.clone()
        };
        let mut tpm = SoftTpm::new(&banks).map_err(|e| Failure::Usage(format!("--banks: {e}")))?;
        tpm.simulate_boot(b"imalog emulate");
        return Ok((Some(Box::new(tpm)), None));
    }
    if !args.banks.is_empty() {
        return Err(Failure::Usage("--banks applies to --tpm soft; a real TPM reports its own banks".into()));
    }
    crate::tpm::open_hardware_tpm(&args.tpm, &args.tpm_proxy)
}

/// Boots the kernel from a logged list. The records are decoded into memory
/// first, so that a malformed list fails before the kernel starts.
fn boot_from_log(
    args: &EmulateArgs,
    path: &std::path::Path,
    config: KernelConfig,
    tpm: Option<Box<dyn Tpm>>,
) -> Outcome<Ima> {
    let mut input = open_input(path, &args.input)?;
    let mut failure = None;
    let mut record = imalog_core::binary::empty_record();
    let records = std::iter::from_fn(|| match input.reader.read_record(&mut record) {
        Ok(true) => Some(record.clone()),
        Ok(false) => None,
        Err(error) => {
            failure = Some(error);
            None
        }
    });
    let logged: Vec<Record> = records.collect();
    if let Some(error) = failure {
        return Err(input.decode_failure(error));
    }
    tracing::info!(records = logged.len(), list = %input.name, "booting from a logged list");
    Ima::boot_with_log(config, tpm, logged).map_err(|e| Failure::Usage(format!("{}: {e}", input.name)))
}
