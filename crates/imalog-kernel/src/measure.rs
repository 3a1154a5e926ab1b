//! Measuring files on disk as IMA does on a hook: the content digest in the
//! IMA hash (and SHA-1 for the legacy `d` field), `security.ima` and
//! `security.evm`, the EVM-protected xattrs, and the inode's owner, group
//! and mode.
//!
//! IMA's per-inode cache, which stops an unchanged file from being measured
//! again into the same PCR, is not modelled: every call measures, and the
//! hash table then refuses an identical record.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use imalog_core::{FieldId, HashAlgorithm, Template};

use crate::entry::{EventData, EVM_XATTR_ORDER};
use crate::errno::Errno;
use crate::kernel::{Appended, Ima, KernelError};

/// What a file measurement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// Appended (and extended, unless the TPM failed).
    Measured(Appended),
    /// Refused: an identical record is in the hash table.
    Duplicate,
    /// Refused: measurement is suspended for kexec.
    Suspended,
}

impl Ima {
    /// Measures the file at `path` with the configured template into `pcr`
    /// (the default PCR when `None`).
    pub fn measure_path(&self, path: &Path, pcr: Option<u32>) -> Result<FileOutcome, KernelError> {
        let template = Arc::clone(&self.config.template);
        self.measure_path_with(&template, path, pcr)
    }

    /// Measures the file at `path` with `template`.
    pub fn measure_path_with(
        &self,
        template: &Arc<Template>,
        path: &Path,
        pcr: Option<u32>,
    ) -> Result<FileOutcome, KernelError> {
        let fail = |message: String| KernelError::File { path: path.display().to_string(), message };
        if let Some(pcr) = pcr.filter(|p| *p > imalog_core::binary::MAX_PCR_INDEX) {
            return Err(fail(format!("PCR {pcr} is out of range 0 to {}", imalog_core::binary::MAX_PCR_INDEX)));
        }
        // O_NONBLOCK makes opening a FIFO or a device return at once, so the
        // type check below refuses it. Reads of a regular file ignore it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        let metadata = file.metadata().map_err(|e| fail(format!("cannot stat: {e}")))?;
        if !metadata.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let needs_sha1 = template.fields().contains(&FieldId::D) && self.config.ima_hash != HashAlgorithm::Sha1;
        let (digest, sha1) =
            hash_content(file, self.config.ima_hash, needs_sha1).map_err(|e| fail(format!("read failed: {e}")))?;

        let ima_xattr = read_xattr(path, "security.ima");
        let evm_xattr = read_xattr(path, "security.evm");
        let protected: Vec<(&str, Vec<u8>)> =
            EVM_XATTR_ORDER.iter().filter_map(|name| read_xattr(path, name).map(|value| (*name, value))).collect();
        let name = path.as_os_str().as_bytes();
        let file_name = path.file_name().map(|n| n.as_bytes());
        let event = EventData {
            name,
            file_name,
            digest: Some((self.config.ima_hash, digest)),
            sha1,
            ima_xattr: ima_xattr.as_deref(),
            evm_xattr: evm_xattr.as_deref(),
            protected_xattrs: protected.iter().map(|(n, v)| (*n, v.as_slice())).collect(),
            inode: Some((metadata.uid(), metadata.gid(), metadata.mode() as u16)),
            ..Default::default()
        };
        match self.measure_event(template, pcr, &event) {
            Ok(appended) => Ok(FileOutcome::Measured(appended)),
            Err(Errno::Eexist) => Ok(FileOutcome::Duplicate),
            Err(Errno::Enodev) => Ok(FileOutcome::Suspended),
            Err(errno) => Err(fail(format!("measurement failed: {errno}"))),
        }
    }
}

/// Hashes a file's content, and also with SHA-1 when `sha1` is set.
fn hash_content(
    mut file: File,
    algorithm: HashAlgorithm,
    sha1: bool,
) -> io::Result<(imalog_core::Digest, Option<imalog_core::Digest>)> {
    let mut main = algorithm.hasher();
    let mut legacy = sha1.then(|| HashAlgorithm::Sha1.hasher());
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        main.update(&buffer[..read]);
        if let Some(hasher) = legacy.as_mut() {
            hasher.update(&buffer[..read]);
        }
    }
    Ok((main.finish(), legacy.map(|h| h.finish())))
}

/// Reads an xattr; a missing attribute, or a file system without xattrs,
/// reads as absent.
fn read_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).ok().flatten()
}
