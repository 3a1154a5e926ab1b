//! The securityfs tree of IMA over FUSE: `integrity/ima/` with its list
//! files, symbolic links and counters, and the `ima` compatibility link at
//! the top, with the modes of the merged 7.2 code.
//!
//! Every list operation is passed to the kernel model, which owns the rules;
//! this module only maps FUSE requests to model calls and model errnos back
//! to the caller. Files report size 0 and are opened with direct I/O, so
//! reads go to the model every time and stream to EOF, as securityfs files
//! do. The mount uses `default_permissions`, so the kernel checks file modes
//! (EACCES) before an open reaches the model, which then checks
//! CAP_SYS_ADMIN (EPERM) and the reader and writer rules (EBUSY, ENFILE).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};
use imalog_kernel::{Caller, FileInfo, Handle, Ima, LinkInfo};

use crate::caps::has_cap_sys_admin;
use crate::machine::Machine;

const ROOT: u64 = 1;
const INTEGRITY: u64 = 2;
const IMA_LINK: u64 = 3;
const IMA_DIR: u64 = 4;
const COUNT: u64 = 5;
const VIOLATIONS: u64 = 6;
const POLICY: u64 = 7;
const LIST_BASE: u64 = 100;
const LINK_BASE: u64 = 1000;

/// Attribute and entry cache time: the tree never changes shape.
const TTL: Duration = Duration::from_secs(1);

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Directory { children: Vec<(String, u64)> },
    Link { target: String },
    List { index: usize, mode: u16 },
    Text { mode: u16 },
}

/// What a file handle refers to.
enum Open {
    /// A list file of the kernel instance current at open time.
    List {
        ima: Arc<Ima>,
        handle: Handle,
        /// Thread that opened the file.
        opener: u32,
        /// Thread of the last `close` (FUSE flush) of a descriptor of this
        /// file, 0 before the first. The kernel sends FUSE_RELEASE without
        /// the caller's pid, so release uses this thread as the closing task.
        closer: AtomicU32,
    },
    /// `runtime_measurements_count` or `violations`.
    Text { ino: u64 },
    /// `policy`, opened for writing.
    Policy,
}

/// The FUSE file system.
pub struct ImaFs {
    machine: Arc<Machine>,
    files: Vec<FileInfo>,
    links: Vec<LinkInfo>,
    mounted_at: SystemTime,
    handles: Mutex<HashMap<u64, Arc<Open>>>,
    next_handle: AtomicU64,
    /// Policy rules written so far; the model does not apply them.
    policy: Mutex<Vec<u8>>,
    policy_open: Mutex<bool>,
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

impl ImaFs {
    /// A file system over `machine`. The file set is taken from its kernel
    /// and stays the same across kexec, which boots with the same
    /// configuration.
    pub fn new(machine: Arc<Machine>) -> Self {
        let kernel = machine.kernel();
        ImaFs {
            files: kernel.list_files(),
            links: kernel.list_links(),
            machine,
            mounted_at: SystemTime::now(),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            policy: Mutex::new(Vec::new()),
            policy_open: Mutex::new(false),
        }
    }

    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Directory { children: vec![("integrity".into(), INTEGRITY), ("ima".into(), IMA_LINK)] }),
            INTEGRITY => Some(Node::Directory { children: vec![("ima".into(), IMA_DIR)] }),
            IMA_LINK => Some(Node::Link { target: "integrity/ima".into() }),
            IMA_DIR => {
                let mut children: Vec<(String, u64)> = Vec::new();
                for (i, file) in self.files.iter().enumerate() {
                    children.push((file.name.clone(), LIST_BASE + i as u64));
                }
                for (i, link) in self.links.iter().enumerate() {
                    children.push((link.name.clone(), LINK_BASE + i as u64));
                }
                children.push(("runtime_measurements_count".into(), COUNT));
                children.push(("violations".into(), VIOLATIONS));
                children.push(("policy".into(), POLICY));
                Some(Node::Directory { children })
            }
            COUNT | VIOLATIONS => Some(Node::Text { mode: 0o440 }),
            POLICY => Some(Node::Text { mode: 0o600 }),
            ino if (LIST_BASE..LINK_BASE).contains(&ino) => {
                let index = (ino - LIST_BASE) as usize;
                self.files.get(index).map(|f| Node::List { index, mode: f.mode as u16 })
            }
            ino if ino >= LINK_BASE => {
                let link = self.links.get((ino - LINK_BASE) as usize)?;
                Some(Node::Link { target: link.target.clone() })
            }
            _ => None,
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, nlink, size) = match node {
            Node::Directory { children } => {
                let subdirectories = children.iter().filter(|(_, child)| matches!(*child, INTEGRITY | IMA_DIR)).count();
                (FileType::Directory, 0o755, 2 + subdirectories as u32, 0)
            }
            Node::Link { target } => (FileType::Symlink, 0o777, 1, target.len() as u64),
            Node::List { mode, .. } | Node::Text { mode } => (FileType::RegularFile, *mode, 1, 0),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn add_handle(&self, open: Open) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(fh, Arc::new(open));
        fh
    }

    fn handle(&self, fh: u64) -> Option<Arc<Open>> {
        self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&fh).cloned()
    }

    fn text(&self, ino: u64) -> String {
        let kernel = self.machine.kernel();
        match ino {
            COUNT => kernel.count_file(),
            VIOLATIONS => kernel.violations_file(),
            _ => String::new(),
        }
    }
}

impl Filesystem for ImaFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(Node::Directory { children }) = self.node(parent.0) else {
            reply.error(Errno::ENOTDIR);
            return;
        };
        let found = children.iter().find(|(child, _)| OsStr::new(child) == name).map(|(_, ino)| *ino);
        match found.and_then(|ino| self.node(ino).map(|node| (ino, node))) {
            Some((ino, node)) => reply.entry(&TTL, &self.attr(ino, &node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(node) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Accepts truncation to size 0 and time updates, so that `echo A >
    /// file` (which opens with O_TRUNC) works as on securityfs.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.node(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        if size.is_some_and(|s| s != 0) {
            reply.error(Errno::EINVAL);
            return;
        }
        reply.attr(&TTL, &self.attr(ino.0, &node));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0) {
            Some(Node::Link { target }) => reply.data(target.as_bytes()),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let direct = FopenFlags::FOPEN_DIRECT_IO;
        match self.node(ino.0) {
            Some(Node::List { index, .. }) => {
                let Some(info) = self.files.get(index) else {
                    reply.error(Errno::ENOENT);
                    return;
                };
                let kernel = self.machine.kernel();
                let caller = Caller { task: req.pid() as u64, cap_sys_admin: has_cap_sys_admin(req.pid(), req.uid()) };
                match kernel.open_list(info.file, write, caller) {
                    Ok(handle) => {
                        tracing::debug!(file = %info.name, write, task = req.pid(), "list file opened");
                        let fh = self.add_handle(Open::List {
                            ima: kernel,
                            handle,
                            opener: req.pid(),
                            closer: AtomicU32::new(0),
                        });
                        reply.opened(FileHandle(fh), direct);
                    }
                    Err(code) => {
                        tracing::debug!(file = %info.name, write, task = req.pid(), errno = %code, "list file open refused");
                        reply.error(errno(code.code()));
                    }
                }
            }
            Some(Node::Text { .. }) if ino.0 == POLICY => {
                // Write-only without CONFIG_IMA_READ_POLICY, one writer at a time.
                if !write {
                    reply.error(Errno::EACCES);
                    return;
                }
                let mut busy = self.policy_open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if *busy {
                    reply.error(Errno::EBUSY);
                    return;
                }
                *busy = true;
                let fh = self.add_handle(Open::Policy);
                reply.opened(FileHandle(fh), direct);
            }
            Some(Node::Text { .. }) => {
                if write {
                    reply.error(Errno::EACCES);
                    return;
                }
                let fh = self.add_handle(Open::Text { ino: ino.0 });
                reply.opened(FileHandle(fh), direct);
            }
            Some(Node::Directory { .. }) => reply.error(Errno::EISDIR),
            Some(Node::Link { .. }) => reply.error(Errno::ELOOP),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(open) = self.handle(fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        match &*open {
            Open::List { ima, handle, .. } => reply.data(&ima.read_list(handle, offset, size as usize)),
            Open::Text { ino } => {
                let text = self.text(*ino);
                let start = (offset as usize).min(text.len());
                let end = start.saturating_add(size as usize).min(text.len());
                reply.data(&text.as_bytes()[start..end]);
            }
            Open::Policy => reply.error(Errno::EBADF),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(open) = self.handle(fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        match &*open {
            Open::List { ima, handle, .. } => match ima.write_list(handle, data) {
                Ok(written) => {
                    tracing::info!(
                        command = %String::from_utf8_lossy(data).trim_end(),
                        current = ima.counters().current,
                        staged = ima.counters().staged,
                        "list command"
                    );
                    reply.written(written as u32);
                    // A long-running emulator gives deleted records' memory
                    // back to the system, as kfree does.
                    ima.release_free_memory();
                }
                Err(code) => {
                    tracing::info!(command = %String::from_utf8_lossy(data).trim_end(), errno = %code, "list command refused");
                    reply.error(errno(code.code()));
                }
            },
            Open::Policy => {
                self.policy.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(data);
                reply.written(data.len() as u32);
            }
            Open::Text { .. } => reply.error(Errno::EBADF),
        }
    }

    /// Notes which thread closes a descriptor: FUSE sends a flush on every
    /// `close`, with the caller's pid, before the release that has none.
    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        if let Some(Open::List { closer, .. }) = self.handle(fh.0).as_deref() {
            closer.store(req.pid(), Ordering::Relaxed);
        }
        reply.ok();
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let open = self.handles.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&fh.0);
        match open.as_deref() {
            Some(Open::List { ima, handle, opener, closer }) => {
                // Linux sends FUSE_RELEASE with pid 0 (no credentials) once the
                // last descriptor is gone. The writer rules need the closing
                // task, so take the thread of the last flush, else the opener.
                // NOTE: the release arrives after `close` has returned, so an
                // open right after a close can still fail with EBUSY, rarely,
                // when the CPUs are busy. A kernel releases before `close`
                // returns.
                let task =
                    [req.pid(), closer.load(Ordering::Relaxed), *opener].into_iter().find(|&pid| pid != 0).unwrap_or(0);
                ima.release_list_ref(handle, task as u64);
                tracing::debug!(task, "list file released");
            }
            Some(Open::Policy) => {
                *self.policy_open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = false;
            }
            _ => {}
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino.0) {
            Some(Node::Directory { .. }) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(Node::Directory { children }) = self.node(ino.0) else {
            reply.error(Errno::ENOTDIR);
            return;
        };
        let parent = match ino.0 {
            IMA_DIR => INTEGRITY,
            _ => ROOT,
        };
        let mut entries: Vec<(u64, FileType, String)> =
            vec![(ino.0, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
        for (name, child) in children {
            let kind = match self.node(child) {
                Some(Node::Directory { .. }) => FileType::Directory,
                Some(Node::Link { .. }) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            entries.push((child, kind, name));
        }
        for (position, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (position + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// The policy rules written to `policy`, for tests.
impl ImaFs {
    /// The bytes written to `policy` so far.
    pub fn policy_written(&self) -> Vec<u8> {
        self.policy.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}
