//! The errno values the measurement list interfaces return, with their
//! Linux numbers.

use std::fmt;

/// An errno returned by an open, write or measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// Write open without CAP_SYS_ADMIN.
    Eperm = 1,
    /// Nothing to stage or delete, fewer than N records, or no such list
    /// file.
    Enoent = 2,
    /// Write on a descriptor not opened for writing (the VFS check).
    Ebadf = 9,
    /// No memory for the new hash table.
    Enomem = 12,
    /// Staging after suspension; write open of a read-only file.
    Eacces = 13,
    /// Copying the written bytes failed.
    Efault = 14,
    /// Incompatible opener present.
    Ebusy = 16,
    /// Staged list not empty; duplicate measurement.
    Eexist = 17,
    /// Measurement after suspension.
    Enodev = 19,
    /// Malformed command.
    Einval = 22,
    /// Reader count would overflow.
    Enfile = 23,
    /// Number beyond `ULONG_MAX`.
    Erange = 34,
    /// Deletion after suspension for kexec.
    Estale = 116,
}

impl Errno {
    /// Returns the Linux errno number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Returns the symbolic name, such as `EBUSY`.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Eperm => "EPERM",
            Errno::Enoent => "ENOENT",
            Errno::Ebadf => "EBADF",
            Errno::Enomem => "ENOMEM",
            Errno::Eacces => "EACCES",
            Errno::Efault => "EFAULT",
            Errno::Ebusy => "EBUSY",
            Errno::Eexist => "EEXIST",
            Errno::Enodev => "ENODEV",
            Errno::Einval => "EINVAL",
            Errno::Enfile => "ENFILE",
            Errno::Erange => "ERANGE",
            Errno::Estale => "ESTALE",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for Errno {}
