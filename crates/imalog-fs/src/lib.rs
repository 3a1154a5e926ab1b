//! imalog-fs: the IMA securityfs files of the imalog kernel model, mounted
//! as a real file tree over FUSE, and the control socket through which the
//! emulated kernel measures and kexecs.
//!
//! - [`Machine`] holds the running kernel instance and replaces it on
//!   kexec.
//! - [`ImaFs`] is the FUSE file system; [`mount`] mounts it.
//! - [`control`] is the control socket's server and client.
//!
//! List rules live in `imalog-kernel`; this crate only carries file
//! operations, caller credentials and errnos between FUSE and the model.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod caps;
pub mod control;
pub mod fs;
pub mod machine;

pub use fs::ImaFs;
pub use machine::{KexecReport, Machine};

use std::path::Path;
use std::sync::Arc;

/// Mounts the tree of `machine` at `mountpoint` and serves it on background
/// threads until the returned session is dropped or unmounted. The mount is
/// readable by every user (`allow_other`) with the kernel checking file
/// modes (`default_permissions`), as securityfs is.
pub fn mount(machine: Arc<Machine>, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("imalog".into()),
        fuser::MountOption::Subtype("securityfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoExec,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(2);
    fuser::spawn_mount(ImaFs::new(machine), mountpoint, &config)
}
