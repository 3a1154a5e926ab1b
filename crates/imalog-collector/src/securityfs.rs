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

/// A securityfs `ima` directory.
#[derive(Clone, Debug)]
pub struct Securityfs {
    dir: PathBuf,
}

impl Securityfs {
    /// Uses `dir`, which may be the `ima` folder itself or a folder that
    /// contains `integrity/ima` (the mount point of `imalog emulate`, or
    /// `/sys/kernel/security`).
    pub fn new(dir: &Path) -> io::Result<Self> {
        for candidate in [dir.to_path_buf(), dir.join("integrity/ima"), dir.join("ima")] {
            if candidate.join(BINARY_LIST).exists() {
                return Ok(Securityfs { dir: candidate });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: no {BINARY_LIST} here or under integrity/ima; is securityfs mounted?", dir.display()),
        ))
    }

    /// The `ima` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Detects what the kernel offers from the file names and modes: a
    /// writable original list without `_staged` files takes `N` only.
    pub fn capability(&self) -> Capability {
        if self.dir.join(BINARY_STAGED).exists() {
            return Capability::Staging;
        }
        use std::os::unix::fs::PermissionsExt;
        let writable =
            std::fs::metadata(self.dir.join(BINARY_LIST)).map(|m| m.permissions().mode() & 0o222 != 0).unwrap_or(false);
        if writable {
            Capability::DeleteOnly
        } else {
            Capability::ReadOnly
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens a list file for reading and writing, which makes this process
    /// the only one with list files open.
    pub fn open_writer(&self, name: &str) -> io::Result<ListFile> {
        let file = OpenOptions::new().read(true).write(true).open(self.path(name))?;
        Ok(ListFile { file, name: name.to_string() })
    }

    /// Opens a list file read-only.
    pub fn open_reader(&self, name: &str) -> io::Result<ListFile> {
        let file = File::open(self.path(name))?;
        Ok(ListFile { file, name: name.to_string() })
    }

    /// Reads `runtime_measurements_count`.
    pub fn count(&self) -> io::Result<u64> {
        let text = std::fs::read_to_string(self.path("runtime_measurements_count"))?;
        text.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("count {text:?}")))
    }
}

/// An open list file.
pub struct ListFile {
    file: File,
    name: String,
}

impl ListFile {
    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the whole list from offset 0 to EOF.
    pub fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match self.file.read(&mut buffer) {
                Ok(0) => return Ok(bytes),
                Ok(read) => bytes.extend_from_slice(&buffer[..read]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A reader from offset 0 to EOF, for streaming.
    pub fn reader(&mut self) -> io::Result<&mut File> {
        self.file.seek(SeekFrom::Start(0))?;
        Ok(&mut self.file)
    }

    /// Writes a command (`A`, `D` or a count) as one write call.
    pub fn command(&mut self, command: &str) -> CommandResult {
        let text = format!("{command}\n");
        match self.file.write(text.as_bytes()) {
            Ok(written) if written == text.len() => CommandResult::Done,
            Ok(_) => CommandResult::Other(libc::EIO),
            Err(error) => CommandResult::from_io(&error),
        }
    }
}
