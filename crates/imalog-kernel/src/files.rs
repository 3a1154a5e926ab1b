//! The list files of securityfs as operations on the model: which files
//! exist, opening and releasing them under the mediation rules, reading them
//! as seq_file does, and writing commands to them (`ima_fs.c`).

use std::sync::{Arc, Mutex};

use imalog_core::format::ListKind;
use imalog_core::{ascii, binary};

use crate::command::{parse_command, Command, MAX_WRITE, MIN_WRITE};
use crate::entry::Entry;
use crate::errno::Errno;
use crate::kernel::Ima;
use crate::list::{Node, NodeIter};
use crate::open::{Caller, TaskId};

/// One list file: a format, a slot, and whether it shows the staged list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListFile {
    /// Binary or ASCII.
    pub format: ListKind,
    /// Index of the template digest slot the file prints.
    pub slot: usize,
    /// True for a `_staged` file.
    pub staged: bool,
}

/// A list file as securityfs creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// File name under `integrity/ima/`.
    pub name: String,
    /// The list and digest slot it shows.
    pub file: ListFile,
    /// Permission bits: 0660 when it takes commands, 0440 otherwise.
    pub mode: u32,
}

/// A symbolic link among the list files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Link name.
    pub name: String,
    /// Target file name, in the same folder.
    pub target: String,
}

/// An open list file.
pub struct Handle {
    file: ListFile,
    write: bool,
    cursor: Mutex<Cursor>,
    /// Set by the first release, so that a second one changes nothing.
    released: std::sync::atomic::AtomicBool,
}

impl Handle {
    /// The file.
    pub fn file(&self) -> ListFile {
        self.file
    }

    /// True when opened for writing (`O_WRONLY` or `O_RDWR`).
    pub fn is_write(&self) -> bool {
        self.write
    }
}

/// The seq_file position of an open file: `offset` bytes have been
/// returned, which cover `index` whole records plus the part of the next
/// record that is not still in `pending`.
#[derive(Default)]
struct Cursor {
    offset: u64,
    index: u64,
    pending: Vec<u8>,
    /// The last record rendered, valid while `generation` is current.
    last: Option<Arc<Node<Entry>>>,
    generation: u64,
}

fn format_name(format: ListKind) -> &'static str {
    match format {
        ListKind::Ascii => "ascii",
        ListKind::Binary => "binary",
    }
}

impl Ima {
    /// Returns the list files in the order securityfs creates them: per exported
    /// slot the ASCII then the binary file, then the `_staged` set when
    /// staging is configured.
    pub fn list_files(&self) -> Vec<FileInfo> {
        let original_mode = if self.config.original_files_writable() { 0o660 } else { 0o440 };
        let mut files = Vec::new();
        let passes: &[bool] = if self.config.staging { &[false, true] } else { &[false] };
        for &staged in passes {
            for (slot, info) in self.slots.all().iter().enumerate() {
                if !info.exported {
                    continue;
                }
                for format in [ListKind::Ascii, ListKind::Binary] {
                    let suffix = if staged { "_staged" } else { "" };
                    files.push(FileInfo {
                        name: format!(
                            "{}_runtime_measurements_{}{suffix}",
                            format_name(format),
                            info.bank.file_suffix()
                        ),
                        file: ListFile { format, slot, staged },
                        mode: if staged { 0o660 } else { original_mode },
                    });
                }
            }
        }
        files
    }

    /// Returns the symbolic links, which point the legacy names at the SHA-1 files.
    pub fn list_links(&self) -> Vec<LinkInfo> {
        let sha1 = self.slots.all()[self.slots.sha1()].bank.file_suffix();
        let mut links = Vec::new();
        let passes: &[bool] = if self.config.staging { &[true, false] } else { &[false] };
        for &staged in passes {
            let suffix = if staged { "_staged" } else { "" };
            for format in [ListKind::Binary, ListKind::Ascii] {
                let name = format_name(format);
                links.push(LinkInfo {
                    name: format!("{name}_runtime_measurements{suffix}"),
                    target: format!("{name}_runtime_measurements_{sha1}{suffix}"),
                });
            }
        }
        links
    }

    /// Finds a list file by name; links are not followed.
    pub fn lookup_file(&self, name: &str) -> Option<FileInfo> {
        self.list_files().into_iter().find(|f| f.name == name)
    }

    /// Opens a list file (`ima_measure_lock`). A file that securityfs did not
    /// create fails with ENOENT and a write open of a read-only file with
    /// EACCES, as the VFS path lookup and permission check would.
    pub fn open_list(&self, file: ListFile, write: bool, caller: Caller) -> Result<Handle, Errno> {
        let exported = self.slots.all().get(file.slot).is_some_and(|slot| slot.exported);
        if !exported || (file.staged && !self.config.staging) {
            return Err(Errno::Enoent);
        }
        if write && !file.staged && !self.config.original_files_writable() {
            return Err(Errno::Eacces);
        }
        self.open.open(write, caller)?;
        Ok(Handle {
            file,
            write,
            cursor: Mutex::new(Cursor::default()),
            released: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Releases an open list file; `task` closes its last reference.
    pub fn release_list(&self, handle: Handle, task: TaskId) {
        self.release_list_ref(&handle, task);
    }

    /// Releases an open list file that others may still reference (a FUSE
    /// file handle). Only the first release of a handle counts.
    pub fn release_list_ref(&self, handle: &Handle, task: TaskId) {
        if !handle.released.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.open.release(handle.write, task);
        }
    }

    /// Writes a command (`ima_measurements_write`). Returns the number of
    /// bytes consumed, which is all of them on success.
    pub fn write_list(&self, handle: &Handle, data: &[u8]) -> Result<usize, Errno> {
        if !handle.write {
            return Err(Errno::Ebadf);
        }
        let command = parse_command(data, handle.file.staged, self.config.flushes_htable())?;
        match command {
            Command::Stage => self.stage()?,
            Command::DeleteStaged => self.delete_staged()?,
            Command::DeleteFirst(count) => self.delete_first(count)?,
        }
        Ok(data.len())
    }

    /// Writes from a user buffer that cannot be copied: lengths are checked
    /// first, then the copy fails with EFAULT.
    pub fn write_list_faulting(&self, handle: &Handle, len: usize) -> Result<usize, Errno> {
        if !handle.write {
            return Err(Errno::Ebadf);
        }
        if !(MIN_WRITE..=MAX_WRITE).contains(&len) {
            return Err(Errno::Einval);
        }
        Err(Errno::Efault)
    }

    fn render(&self, file: ListFile, entry: &Entry, out: &mut Vec<u8>) {
        let digest = entry.slot_digest(&self.slots, file.slot);
        match file.format {
            ListKind::Binary => binary::encode_record(&entry.record, &digest, self.byte_order(), out),
            ListKind::Ascii => ascii::encode_record(&entry.record, &digest, out),
        }
    }

    fn head_of(&self, file: ListFile) -> NodeIter<Entry> {
        if file.staged {
            self.staged.iter()
        } else {
            self.current.iter()
        }
    }

    /// Reads up to `size` bytes at `offset`, as `seq_read` does: a read that
    /// continues where the last one stopped resumes after the last record
    /// (by record index when the list has changed since), any other offset
    /// restarts the walk from the head. Records appended while reading
    /// appear when the walk reaches them.
    pub fn read_list(&self, handle: &Handle, offset: u64, size: usize) -> Vec<u8> {
        let mut cursor = handle.cursor.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        if offset != cursor.offset {
            self.traverse(handle.file, &mut cursor, offset, generation);
        }

        let mut out = Vec::with_capacity(size.min(1 << 20));
        let take = cursor.pending.len().min(size);
        out.extend(cursor.pending.drain(..take));

        let mut next = if cursor.generation == generation {
            match &cursor.last {
                Some(last) => last.next(),
                None if cursor.index == 0 => self.head_of(handle.file).next(),
                None => self.head_of(handle.file).nth(cursor.index as usize),
            }
        } else {
            self.head_of(handle.file).nth(cursor.index as usize)
        };
        cursor.generation = generation;

        let mut rendered = Vec::with_capacity(512);
        while out.len() < size {
            let Some(node) = next else { break };
            rendered.clear();
            self.render(handle.file, &node.entry, &mut rendered);
            let room = size - out.len();
            if rendered.len() <= room {
                out.extend_from_slice(&rendered);
            } else {
                out.extend_from_slice(&rendered[..room]);
                cursor.pending.extend_from_slice(&rendered[room..]);
            }
            cursor.index += 1;
            next = node.next();
            cursor.last = Some(node);
        }
        cursor.offset = offset + out.len() as u64;
        out
    }

    /// Positions `cursor` at byte `offset` of the rendering, walking from
    /// the head (`traverse` in seq_file).
    fn traverse(&self, file: ListFile, cursor: &mut Cursor, offset: u64, generation: u64) {
        *cursor = Cursor { generation, ..Cursor::default() };
        let mut position = 0u64;
        let mut rendered = Vec::with_capacity(512);
        for node in self.head_of(file) {
            rendered.clear();
            self.render(file, &node.entry, &mut rendered);
            let end = position + rendered.len() as u64;
            if end > offset {
                let skip = (offset - position) as usize;
                cursor.pending.extend_from_slice(&rendered[skip..]);
                cursor.index += 1;
                cursor.last = Some(node);
                cursor.offset = offset;
                return;
            }
            position = end;
            cursor.index += 1;
            cursor.last = Some(node);
        }
        // Past the end: later reads return what is appended from here on.
        cursor.offset = offset;
    }

    /// Renders a whole list file at once, for tests and tools.
    pub fn render_file(&self, file: ListFile) -> Vec<u8> {
        let mut out = Vec::new();
        for node in self.head_of(file) {
            self.render(file, &node.entry, &mut out);
        }
        out
    }

    /// The content of `runtime_measurements_count`.
    pub fn count_file(&self) -> String {
        format!("{}\n", self.runtime_measurements_count())
    }

    /// The content of `violations`.
    pub fn violations_file(&self) -> String {
        format!("{}\n", self.violations.load(std::sync::atomic::Ordering::Relaxed))
    }
}
