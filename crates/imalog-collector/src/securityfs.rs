//! The measurement list files of a securityfs directory, reached only
//! through file operations: a real kernel's `/sys/kernel/security/ima` or
//! the mount of `imalog emulate`.
//!
//! Lists are read to EOF as a stream, because securityfs reports their size
//! as 0. Commands are single `write` calls whose errno carries the result.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The legacy binary list: SHA-1 template digests, present on every kernel.
pub const BINARY_LIST: &str = "binary_runtime_measurements";
/// Its staged twin, present when the kernel was built with staging.
pub const BINARY_STAGED: &str = "binary_runtime_measurements_staged";

/// The result of a command write, by errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandResult {
    /// Done.
    Done,
    /// EEXIST: a staged list is already there.
    StagedExists,
    /// ENOENT: nothing to stage or delete, or fewer records than asked.
    NothingThere,
    /// EACCES: staging refused because the kernel is suspending for kexec.
    Suspending,
    /// ESTALE: deletion refused because the kernel is suspending for kexec;
    /// the records travel to the next kernel.
    Stale,
    /// EBUSY: another process has the files open.
    Busy,
    /// Any other errno.
    Other(i32),
}

impl CommandResult {
    fn from_io(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::EEXIST) => CommandResult::StagedExists,
            Some(libc::ENOENT) => CommandResult::NothingThere,
            Some(libc::EACCES) => CommandResult::Suspending,
            Some(libc::ESTALE) => CommandResult::Stale,
            Some(libc::EBUSY) => CommandResult::Busy,
            Some(code) => CommandResult::Other(code),
            None => CommandResult::Other(0),
        }
    }
}

/// What the kernel behind a securityfs directory offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// `_staged` files exist: `A`/`D` and `N` both work.
    Staging,
    /// No `_staged` files, but the original list takes `N` (7.2 built
    /// without CONFIG_IMA_STAGING, as the merged code behaves).
    DeleteOnly,
    /// The lists cannot be written: a kernel before 7.2, or one built
    /// without the feature. Records can only be read.
    ReadOnly,
}

/// File operations on the list files of one kernel: a securityfs folder, or
/// an in-process model reached through the same operations.
pub trait ListBackend: Send + Sync {
    /// Whether the file exists (links followed).
    fn exists(&self, name: &str) -> bool;
    /// Whether the file's mode allows writing.
    fn writable(&self, name: &str) -> bool;
    /// Opens a file, read-write when `write` is set.
    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn ListIo>>;
    /// A description for logs, such as the folder.
    fn describe(&self) -> String;
}

/// An open list file of a [`ListBackend`].
pub trait ListIo: Send {
    /// Reads the whole list from offset 0 to EOF.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Writes one command in one write call; returns the bytes written.
    fn write_command(&mut self, bytes: &[u8]) -> io::Result<usize>;
}

/// A securityfs `ima` folder on disk.
struct Directory {
    dir: PathBuf,
}

struct DirectoryFile {
    file: File,
}

impl ListBackend for Directory {
    fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    fn writable(&self, name: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.dir.join(name)).map(|m| m.permissions().mode() & 0o222 != 0).unwrap_or(false)
    }

    fn open(&self, name: &str, write: bool) -> io::Result<Box<dyn ListIo>> {
        // List files are regular files; opening a FIFO or a device put in
        // their place would block or never end.
        if !std::fs::metadata(self.dir.join(name))?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let file = OpenOptions::new().read(true).write(write).open(self.dir.join(name))?;
        Ok(Box::new(DirectoryFile { file }))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

impl ListIo for DirectoryFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match self.file.read(&mut buffer) {
                Ok(0) => return Ok(bytes),
                Ok(read) => {
                    // An allocation failure is an error here, not an abort.
                    bytes.try_reserve(read).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::OutOfMemory,
                            format!("the list does not fit in memory after {} bytes", bytes.len()),
                        )
                    })?;
                    bytes.extend_from_slice(&buffer[..read]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_command(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }
}

/// The list files of one kernel.
#[derive(Clone)]
pub struct Securityfs {
    backend: std::sync::Arc<dyn ListBackend>,
}

impl Securityfs {
    /// Uses `dir`, which may be the `ima` folder itself or a folder that
    /// contains `integrity/ima` (the mount point of `imalog emulate`, or
    /// `/sys/kernel/security`).
    pub fn new(dir: &Path) -> io::Result<Self> {
        for candidate in [dir.to_path_buf(), dir.join("integrity/ima"), dir.join("ima")] {
            if candidate.join(BINARY_LIST).exists() {
                return Ok(Securityfs { backend: std::sync::Arc::new(Directory { dir: candidate }) });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: no {BINARY_LIST} here or under integrity/ima; is securityfs mounted?", dir.display()),
        ))
    }

    /// Uses another backend, such as a kernel model in the same process.
    pub fn with_backend(backend: std::sync::Arc<dyn ListBackend>) -> Self {
        Securityfs { backend }
    }

    /// A description for logs.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Whether a list file exists.
    pub fn has(&self, name: &str) -> bool {
        self.backend.exists(name)
    }

    /// Detects what the kernel offers from the file names and modes: a
    /// writable original list without `_staged` files takes `N` only.
    pub fn capability(&self) -> Capability {
        if self.backend.exists(BINARY_STAGED) {
            Capability::Staging
        } else if self.backend.writable(BINARY_LIST) {
            Capability::DeleteOnly
        } else {
            Capability::ReadOnly
        }
    }

    /// Opens a list file for reading and writing, which makes this process
    /// the only one with list files open.
    pub fn open_writer(&self, name: &str) -> io::Result<ListFile> {
        Ok(ListFile { io: self.backend.open(name, true)?, name: name.to_string() })
    }

    /// Opens a list file read-only.
    pub fn open_reader(&self, name: &str) -> io::Result<ListFile> {
        Ok(ListFile { io: self.backend.open(name, false)?, name: name.to_string() })
    }
}

/// An open list file.
pub struct ListFile {
    io: Box<dyn ListIo>,
    name: String,
}

impl ListFile {
    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the whole list from offset 0 to EOF.
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.io.read_all()
    }

    /// Writes a command (`A`, `D` or a count) as one write call.
    pub fn command(&mut self, command: &str) -> CommandResult {
        let text = format!("{command}\n");
        match self.io.write_command(text.as_bytes()) {
            Ok(written) if written == text.len() => CommandResult::Done,
            Ok(_) => CommandResult::Other(libc::EIO),
            Err(error) => CommandResult::from_io(&error),
        }
    }
}
