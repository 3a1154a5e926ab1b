//! The emulated machine: the running kernel instance, replaced by a new one
//! on kexec. File operations and measurements always reach the instance
//! that is current when they start; descriptors opened before a kexec keep
//! their old, suspended instance, as no process survives a real kexec.

use std::sync::{Arc, Mutex, RwLock};

use imalog_kernel::{Ima, KernelConfig, KernelError, RestoreReport};

/// What a kexec did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KexecReport {
    /// Segment size from `kexec_load`, or why loading failed.
    pub load: Result<u64, String>,
    /// Bytes in the dump handed to the next kernel.
    pub dump_bytes: usize,
    /// What the next kernel restored.
    pub restore: RestoreReport,
    /// Number of kernel instances booted so far, the first included.
    pub boots: u64,
}

/// The kernel instance behind the mount, and the configuration every
/// instance boots with.
pub struct Machine {
    config: KernelConfig,
    current: RwLock<Arc<Ima>>,
    /// Serializes kexecs; counts boots.
    kexec: Mutex<u64>,
    /// Called after every kexec, once the new instance runs.
    boot_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Machine {
    /// A machine running `ima`, which was booted with `config`.
    pub fn new(config: KernelConfig, ima: Ima) -> Self {
        Machine { config, current: RwLock::new(Arc::new(ima)), kexec: Mutex::new(1), boot_hook: Mutex::new(None) }
    }

    /// Kernel instances booted so far, the first included.
    pub fn boots(&self) -> u64 {
        *self.kexec.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a function to call after every kexec.
    pub fn on_boot(&self, hook: Box<dyn Fn() + Send>) {
        *self.boot_hook.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(hook);
    }

    /// The running kernel instance.
    pub fn kernel(&self) -> Arc<Ima> {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&current)
    }

    /// Soft-reboots into a new kernel instance: `kexec_load`, the reboot
    /// notifier (`kexec_execute`, then suspension), the dump, and a boot that
    /// restores the dump on the same TPM. The TPM is not reset.
    pub fn kexec(&self) -> Result<KexecReport, KernelError> {
        let mut boots = self.kexec.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.kernel();
        let load = old.kexec_load().map_err(|e| e.to_string());
        old.kexec_execute();
        let dump = old.kexec_dump();
        let tpm = old.take_tpm();
        let (next, restore) = Ima::boot_after_kexec(self.config.clone(), tpm, &dump)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        *boots += 1;
        if let Some(hook) = self.boot_hook.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            hook();
        }
        tracing::info!(dump_bytes = dump.len(), restored = restore.restored, boots = *boots, "kexec done");
        Ok(KexecReport { load, dump_bytes: dump.len(), restore, boots: *boots })
    }
}
