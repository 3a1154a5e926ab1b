//! The kernel model reached in-process through the same file operations a
//! collector uses on securityfs: open, read to EOF, write a command, close,
//! with the same errnos. `imalog demo` runs the collector over this, with
//! no FUSE and no root; the collector cannot tell it from a real mount.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use imalog_collector::service::{QuoteOutput, Quoter};
use imalog_collector::{ListBackend, ListIo};
use imalog_fs::Machine;
use imalog_kernel::{Caller, FileInfo, Handle, Ima};

/// Reads returned per call, as a file system would cap them.
const READ_SIZE: usize = 64 * 1024;

/// A task id per thread of this process, standing in for the kernel's
/// thread ids in the open rules.
fn current_task() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    thread_local! {
        static TASK: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TASK.with(|task| *task)
}

/// The list files of the machine's running kernel.
pub struct InProcessSecurityfs {
    machine: Arc<Machine>,
}

impl InProcessSecurityfs {
    /// Files of `machine`, following it across kexec.
    pub fn new(machine: Arc<Machine>) -> Self {
        InProcessSecurityfs { machine }
    }

    /// Finds a file by name, following the symbolic links.
    fn resolve(kernel: &Ima, name: &str) -> Option<FileInfo> {
        if let Some(file) = kernel.lookup_file(name) {
            return Some(file);
        }
        let link = kernel.list_links().into_iter().find(|link| link.name == name)?;
        kernel.lookup_file(&link.target)
    }
}

impl ListBackend for InProcessSecurityfs {
    fn exists(&self, name: &str) -> bool {
        Self::resolve(&self.machine.kernel(), name).is_some()
    }

    fn writable(&self, name: &str) -> bool {
        Self::resolve(&self.machine.kernel(), name).is_some_and(|file| file.mode & 0o200 != 0)
    }

    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn ListIo>> {
        let kernel = self.machine.kernel();
        let info = Self::resolve(&kernel, name).ok_or_else(|| io::Error::from_raw_os_error(libc_enoent()))?;
        let task = current_task();
        let handle = kernel
            .open_list(info.file, write, Caller { task, cap_sys_admin: true })
            .map_err(|errno| io::Error::from_raw_os_error(errno.code()))?;
        Ok(Box::new(InProcessFile { kernel, handle, task }))
    }

    fn describe(&self) -> String {
        "the in-process kernel model".to_string()
    }
}

/// ENOENT, as a path lookup of a missing file returns.
fn libc_enoent() -> i32 {
    imalog_kernel::Errno::Enoent.code()
}

struct InProcessFile {
    kernel: Arc<Ima>,
    handle: Handle,
    task: u64,
}

impl ListIo for InProcessFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        loop {
            let chunk = self.kernel.read_list(&self.handle, bytes.len() as u64, READ_SIZE);
            if chunk.is_empty() {
                return Ok(bytes);
            }
            bytes.extend_from_slice(&chunk);
        }
    }

    fn write_command(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written =
            self.kernel.write_list(&self.handle, bytes).map_err(|errno| io::Error::from_raw_os_error(errno.code()))?;
        self.kernel.release_free_memory();
        Ok(written)
    }
}

impl Drop for InProcessFile {
    fn drop(&mut self) {
        self.kernel.release_list_ref(&self.handle, self.task);
    }
}

/// Quotes from the TPM inside the running kernel model.
pub struct InProcessQuoter {
    machine: Arc<Machine>,
}

impl InProcessQuoter {
    /// Quotes from `machine`'s TPM, following it across kexec.
    pub fn new(machine: Arc<Machine>) -> Self {
        InProcessQuoter { machine }
    }
}

impl Quoter for InProcessQuoter {
    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<QuoteOutput, String> {
        let (quote, values) = self.machine.kernel().quote_with_values(nonce, pcrs).map_err(|e| e.to_string())?;
        Ok(QuoteOutput { attest: quote.attest, signature: quote.signature, ak_public: quote.ak_public, pcrs: values })
    }
}
