//! The durable record store: every record since the cold boot, in the
//! kernel's SHA-1 binary list layout, in append-only segment files.
//!
//! Layout of a store folder:
//!
//! ```text
//! store.lock                 held (flock) by the one collector using the store
//! epochs/<epoch>/meta.json   epoch id, byte order, boot identity
//! epochs/<epoch>/seg-<first index, 20 digits>.imalog   segment files
//! epochs/<epoch>/pending/chunk-<first index>.imalog    exported, not yet committed
//! ```
//!
//! An epoch is the history of one cold boot: absolute record indexes start
//! at 0 in each. A segment is a sequence of frames, one per exported chunk,
//! integers little-endian:
//!
//! ```text
//! 0   u32  magic "CHNK"
//! 4   u32  format version (1)
//! 8   u64  absolute index of the chunk's first record
//! 16  u64  number of records
//! 24  u64  payload length
//! 32  payload: the records as the kernel's binary list writes them
//! ..  u32  CRC-32 of everything before it in the frame
//! ```
//!
//! A frame is appended and synced before the chunk's pending file is
//! removed, so a crash at any point leaves either a whole frame, or a torn
//! last frame whose chunk still has its pending file. Opening the store cuts
//! a bad last frame off only when that pending file exists; any other bad
//! frame is corruption, and opening the store fails. Pending files use the same frame layout with the
//! magic "PEND" and are written to a temporary name, synced and renamed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use imalog_core::ByteOrder;
use serde::{Deserialize, Serialize};

const CHUNK_MAGIC: &[u8; 4] = b"CHNK";
const PENDING_MAGIC: &[u8; 4] = b"PEND";
const FORMAT_VERSION: u32 = 1;
const FRAME_HEADER: usize = 32;

/// Segments are closed and a new one started past this size. A chunk is
/// never split, so a segment can exceed it by one chunk.
pub const SEGMENT_LIMIT: u64 = 64 << 20;

/// The reason a damaged pending chunk stops the collector.
const DAMAGED_PENDING: &str = "damaged pending chunk: the kernel may have deleted its records already, so the \
     collector stops; recover the records from the file if you can, then move it out of the pending folder";

/// Largest chunk payload accepted when reading frames back: 4 GiB bounds a
/// corrupt length, and no export comes close.
const MAX_PAYLOAD: u64 = 4 << 30;

/// A store that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another collector holds the store.
    #[error("{0}: another collector is using this store")]
    Locked(PathBuf),
    /// A frame before the last one is damaged, or frames do not follow
    /// each other.
    #[error("{path} at offset {offset}: {message}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the frame.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A chunk does not start where the stored history ends.
    #[error("chunk starts at record {found}, but the store holds records up to {expected}")]
    Gap {
        /// The next index the store expects.
        expected: u64,
        /// The chunk's first index.
        found: u64,
    },
    /// meta.json is unreadable.
    #[error("{path}: {message}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Facts about one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// Byte order of the stored records, once known.
    pub byte_order: Option<String>,
    /// The boot identity the collector last saw in this epoch.
    pub boot_identity: Option<String>,
}

/// A chunk read from the kernel but not yet known to be deleted there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Absolute index of its first record.
    pub first_index: u64,
    /// Number of records.
    pub count: u64,
    /// The records, in the binary list layout.
    pub payload: Vec<u8>,
}

/// Where a committed chunk lives.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChunkLocation {
    first_index: u64,
    count: u64,
    segment: usize,
    /// Offset of the payload in the segment file.
    payload_offset: u64,
    payload_len: u64,
}

/// The store of one epoch, opened for a collector.
pub struct Store {
    root: PathBuf,
    dir: PathBuf,
    _lock: File,
    meta: Meta,
    segments: Vec<PathBuf>,
    chunks: Vec<ChunkLocation>,
    next_index: u64,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Takes an exclusive, non-blocking flock on `file`.
fn lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes the raw descriptor of a File that stays open for
    // the whole call; it touches no memory of ours.
    #[allow(unsafe_code)]
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

fn frame(magic: &[u8; 4], first_index: u64, count: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FRAME_HEADER + payload.len() + 4);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&first_index.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(payload);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// A frame header, checked for magic and version.
struct Header {
    first_index: u64,
    count: u64,
    payload_len: u64,
}

fn parse_header(bytes: &[u8; FRAME_HEADER], magic: &[u8; 4]) -> Result<Header, String> {
    if &bytes[0..4] != magic {
        return Err(format!("bad magic {:02x?}; expected {:?}", &bytes[0..4], String::from_utf8_lossy(magic)));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or([0; 4]));
    if version != FORMAT_VERSION {
        return Err(format!("format version {version}; this imalog reads version {FORMAT_VERSION}"));
    }
    let header = Header { first_index: word(8), count: word(16), payload_len: word(24) };
    if header.payload_len > MAX_PAYLOAD {
        return Err(format!("payload length {} exceeds {MAX_PAYLOAD}", header.payload_len));
    }
    Ok(header)
}

/// A frame read back: its header and payload, `None` at a clean end of the
/// file, or the reason it is torn or damaged.
type FrameRead = Result<Option<(Header, Vec<u8>)>, String>;

/// Reads one frame at the reader's position.
fn read_frame(reader: &mut impl Read, magic: &[u8; 4]) -> io::Result<FrameRead> {
    let mut payload = Vec::new();
    Ok(check_frame(reader, magic, Some(&mut payload))?.map(|header| header.map(|header| (header, payload))))
}

/// Reads one frame at the reader's position and checks its checksum,
/// streaming the payload through in pieces: into `payload` when given,
/// else only through the checksum, so that a scan of large chunks keeps
/// none of them in memory. Returns the header, `None` at a clean end of the
/// file, or the reason the frame is torn or damaged.
fn check_frame(
    reader: &mut impl Read,
    magic: &[u8; 4],
    mut payload: Option<&mut Vec<u8>>,
) -> io::Result<Result<Option<Header>, String>> {
    let mut header_bytes = [0u8; FRAME_HEADER];
    let filled = read_up_to(reader, &mut header_bytes)?;
    if filled == 0 {
        return Ok(Ok(None));
    }
    if filled < FRAME_HEADER {
        return Ok(Err(format!("frame header cut after {filled} of {FRAME_HEADER} bytes")));
    }
    let header = match parse_header(&header_bytes, magic) {
        Ok(header) => header,
        Err(reason) => return Ok(Err(reason)),
    };

    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_bytes);
    let mut buffer = vec![0u8; (64 * 1024).min(header.payload_len as usize)];
    let mut remaining = header.payload_len;
    while remaining > 0 {
        let piece = remaining.min(buffer.len() as u64) as usize;
        let read = read_up_to(reader, &mut buffer[..piece])?;
        hasher.update(&buffer[..read]);
        if let Some(payload) = payload.as_deref_mut() {
            payload.extend_from_slice(&buffer[..read]);
        }
        remaining -= read as u64;
        if read < piece {
            break;
        }
    }

    let mut crc = [0u8; 4];
    let crc_read = if remaining == 0 { read_up_to(reader, &mut crc)? } else { 0 };
    if remaining > 0 || crc_read < crc.len() {
        let got = header.payload_len - remaining + crc_read as u64;
        return Ok(Err(format!("frame cut: {got} of {} payload and checksum bytes", header.payload_len + 4)));
    }
    if hasher.finalize() != u32::from_le_bytes(crc) {
        return Ok(Err("checksum mismatch".into()));
    }
    Ok(Ok(Some(header)))
}

/// Reads until `buffer` is full or the reader ends; returns the bytes read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Store {
    /// Opens (or creates) the store at `root` and its latest epoch, taking
    /// the store lock. A torn last frame is cut off and logged.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let lock = Self::lock(root)?;
        let latest = Self::epochs(root)?.last().copied();
        let epoch = match latest {
            Some(epoch) => epoch,
            None => Self::create_epoch(root, 1)?,
        };
        Self::open_epoch(root, epoch, lock)
    }

    /// Opens an existing epoch of the store at `root` (an earlier boot, for
    /// reading its history), taking the store lock. Returns `None` when
    /// the store has no such epoch.
    pub fn open_existing_epoch(root: &Path, epoch: u64) -> Result<Option<Store>, StoreError> {
        let lock = Self::lock(root)?;
        if !Self::epochs(root)?.contains(&epoch) {
            return Ok(None);
        }
        Self::open_epoch(root, epoch, lock).map(Some)
    }

    /// The epochs of the store at `root`, in ascending order.
    pub fn list_epochs(root: &Path) -> Result<Vec<u64>, StoreError> {
        Self::epochs(root)
    }

    fn lock(root: &Path) -> Result<File, StoreError> {
        fs::create_dir_all(root.join("epochs")).map_err(io_error(root))?;
        let lock_path = root.join("store.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        if !lock_exclusive(&lock).map_err(io_error(&lock_path))? {
            return Err(StoreError::Locked(root.to_path_buf()));
        }
        Ok(lock)
    }

    fn epochs(root: &Path) -> Result<Vec<u64>, StoreError> {
        let folder = root.join("epochs");
        let mut epochs: Vec<u64> = fs::read_dir(&folder)
            .map_err(io_error(&folder))?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    fn create_epoch(root: &Path, epoch: u64) -> Result<u64, StoreError> {
        let dir = root.join("epochs").join(epoch.to_string());
        fs::create_dir_all(dir.join("pending")).map_err(io_error(&dir))?;
        let meta = Meta { epoch, byte_order: None, boot_identity: None };
        write_meta(&dir, &meta)?;
        sync_dir(&root.join("epochs"))?;
        Ok(epoch)
    }

    fn open_epoch(root: &Path, epoch: u64, lock: File) -> Result<Store, StoreError> {
        let dir = root.join("epochs").join(epoch.to_string());
        fs::create_dir_all(dir.join("pending")).map_err(io_error(&dir))?;
        let meta_path = dir.join("meta.json");
        if !meta_path.exists() && Self::is_unused_epoch(&dir)? {
            // The epoch's creation stopped before meta.json was in place
            // (a crash or a full disk): finish it.
            tracing::warn!(epoch = %dir.display(), "finishing an epoch whose creation was interrupted");
            write_meta(&dir, &Meta { epoch, byte_order: None, boot_identity: None })?;
        }
        require_file(&meta_path)?;
        let meta: Meta = serde_json::from_slice(&fs::read(&meta_path).map_err(io_error(&meta_path))?)
            .map_err(|e| StoreError::Meta { path: meta_path.clone(), message: e.to_string() })?;
        if let Some(order) = meta.byte_order.as_deref().filter(|o| o.parse::<ByteOrder>().is_err()) {
            return Err(StoreError::Meta {
                path: meta_path,
                message: format!("byte_order {order:?}: expected \"le\" or \"be\""),
            });
        }
        if meta.epoch != epoch {
            return Err(StoreError::Meta {
                path: meta_path,
                message: format!("epoch {} does not match its folder, epochs/{epoch}", meta.epoch),
            });
        }
        let mut segments: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let name = path.file_name()?.to_str()?;
                (name.starts_with("seg-") && name.ends_with(".imalog")).then_some(path)
            })
            .collect();
        segments.sort();
        for segment in &segments {
            require_file(segment)?;
        }
        let mut store =
            Store { root: root.to_path_buf(), dir, _lock: lock, meta, segments, chunks: Vec::new(), next_index: 0 };
        store.scan()?;
        Ok(store)
    }

    /// Returns whether an epoch folder has no segment and no pending chunk.
    fn is_unused_epoch(dir: &Path) -> Result<bool, StoreError> {
        let has_segment = fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(|entry| entry.ok())
            .any(|entry| entry.file_name().to_string_lossy().starts_with("seg-"));
        let pending = dir.join("pending");
        let has_pending = fs::read_dir(&pending)
            .map_err(io_error(&pending))?
            .filter_map(|entry| entry.ok())
            .any(|entry| entry.file_name().to_string_lossy().starts_with("chunk-"));
        Ok(!has_segment && !has_pending)
    }

    /// Reads every frame header, checks checksums and continuity, and cuts
    /// a torn last frame off the last segment when its pending chunk
    /// remains.
    fn scan(&mut self) -> Result<(), StoreError> {
        let last_segment = self.segments.len().saturating_sub(1);
        for (segment, path) in self.segments.clone().iter().enumerate() {
            let mut file = File::open(path).map_err(io_error(path))?;
            let mut offset = 0u64;
            loop {
                let frame = check_frame(&mut file, CHUNK_MAGIC, None).map_err(io_error(path))?;
                match frame {
                    Ok(None) => break,
                    Ok(Some(header)) => {
                        if header.first_index != self.next_index {
                            return Err(StoreError::Corrupt {
                                path: path.clone(),
                                offset,
                                message: format!(
                                    "chunk starts at record {}, but the previous one ended at {}",
                                    header.first_index, self.next_index
                                ),
                            });
                        }
                        self.chunks.push(ChunkLocation {
                            first_index: header.first_index,
                            count: header.count,
                            segment,
                            payload_offset: offset + FRAME_HEADER as u64,
                            payload_len: header.payload_len,
                        });
                        self.next_index =
                            self.next_index.checked_add(header.count).ok_or_else(|| StoreError::Corrupt {
                                path: path.clone(),
                                offset,
                                message: format!("record count {} overflows the record index", header.count),
                            })?;
                        offset += FRAME_HEADER as u64 + header.payload_len + 4;
                    }
                    Err(reason) if segment == last_segment && self.pending_path(self.next_index).is_file() => {
                        // Only a commit interrupted before its sync leaves a
                        // bad last frame, and its pending file is removed
                        // only after that sync: the chunk is still there.
                        tracing::warn!(
                            segment = %path.display(),
                            offset,
                            reason,
                            pending = %self.pending_path(self.next_index).display(),
                            "cutting off a torn last frame left by an interrupted write; its pending chunk remains"
                        );
                        let writer = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
                        writer.set_len(offset).map_err(io_error(path))?;
                        writer.sync_all().map_err(io_error(path))?;
                        break;
                    }
                    Err(reason) => {
                        let message = if segment == last_segment {
                            format!(
                                "{reason}; no pending chunk covers record {}, so this is damage, not an \
                                 interrupted write",
                                self.next_index
                            )
                        } else {
                            reason
                        };
                        return Err(StoreError::Corrupt { path: path.clone(), offset, message });
                    }
                }
            }
        }
        Ok(())
    }

    /// The epoch's number.
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    /// The epoch's facts.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Records the byte order and boot identity in the epoch's meta.json.
    pub fn set_meta(&mut self, byte_order: ByteOrder, boot_identity: Option<String>) -> Result<(), StoreError> {
        let meta = Meta { epoch: self.meta.epoch, byte_order: Some(byte_order.to_string()), boot_identity };
        if meta != self.meta {
            write_meta(&self.dir, &meta)?;
            self.meta = meta;
        }
        Ok(())
    }

    /// The byte order of stored records (little-endian until known).
    pub fn byte_order(&self) -> ByteOrder {
        self.meta.byte_order.as_deref().and_then(|o| o.parse().ok()).unwrap_or_default()
    }

    /// Absolute index of the next record to store.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Returns the first index of the last committed chunk.
    pub fn last_chunk_start(&self) -> Option<u64> {
        self.chunks.last().map(|chunk| chunk.first_index)
    }

    /// Number of committed chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Starts a new epoch (after a cold boot) and switches to it. Pending
    /// chunks of the old epoch must have been resolved first.
    pub fn start_new_epoch(&mut self) -> Result<(), StoreError> {
        let next = self.meta.epoch + 1;
        Self::create_epoch(&self.root, next)?;
        let dir = self.root.join("epochs").join(next.to_string());
        let meta_path = dir.join("meta.json");
        self.meta = serde_json::from_slice(&fs::read(&meta_path).map_err(io_error(&meta_path))?)
            .map_err(|e| StoreError::Meta { path: meta_path.clone(), message: e.to_string() })?;
        self.dir = dir;
        self.segments.clear();
        self.chunks.clear();
        self.next_index = 0;
        tracing::info!(epoch = next, "new epoch: the machine booted from cold");
        Ok(())
    }

    /// The byte order of stored records, if an export has fixed it.
    pub fn known_byte_order(&self) -> Option<ByteOrder> {
        self.meta.byte_order.as_deref().and_then(|o| o.parse().ok())
    }

    fn segment_path(&self, first_index: u64) -> PathBuf {
        self.dir.join(format!("seg-{first_index:020}.imalog"))
    }

    /// Appends a chunk and makes it durable. `first_index` must be where
    /// the stored history ends.
    pub fn commit(&mut self, first_index: u64, count: u64, payload: &[u8]) -> Result<(), StoreError> {
        if first_index != self.next_index {
            return Err(StoreError::Gap { expected: self.next_index, found: first_index });
        }
        let start_new = match self.segments.last() {
            None => true,
            Some(path) => fs::metadata(path).map(|m| m.len()).unwrap_or(0) >= SEGMENT_LIMIT,
        };
        if start_new {
            let path = self.segment_path(first_index);
            File::create(&path).map_err(io_error(&path))?;
            sync_dir(&self.dir)?;
            self.segments.push(path);
        }
        let segment = self.segments.len() - 1;
        let path = self.segments[segment].clone();
        let mut file = OpenOptions::new().append(true).open(&path).map_err(io_error(&path))?;
        let offset = file.seek(SeekFrom::End(0)).map_err(io_error(&path))?;
        let bytes = frame(CHUNK_MAGIC, first_index, count, payload);
        crate::faults::check(crate::faults::Point::SegmentWrite, || {
            // A crash in the middle of the append: half the frame reaches
            // the file.
            let _ = file.write_all(&bytes[..bytes.len() / 2]);
            let _ = file.sync_data();
        });
        if let Err(source) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            // Leave no partial frame behind for the next append to build on.
            let _ = file.set_len(offset);
            return Err(StoreError::Io { path, source });
        }
        self.chunks.push(ChunkLocation {
            first_index,
            count,
            segment,
            payload_offset: offset + FRAME_HEADER as u64,
            payload_len: payload.len() as u64,
        });
        self.next_index += count;
        Ok(())
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join("pending")
    }

    fn pending_path(&self, first_index: u64) -> PathBuf {
        self.pending_dir().join(format!("chunk-{first_index:020}.imalog"))
    }

    /// Writes a pending chunk durably (temporary file, sync, rename, sync).
    pub fn write_pending(&self, pending: &Pending) -> Result<(), StoreError> {
        let path = self.pending_path(pending.first_index);
        let temporary = path.with_extension("tmp");
        let bytes = frame(PENDING_MAGIC, pending.first_index, pending.count, &pending.payload);
        let written = File::create(&temporary).and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        });
        if let Err(source) = written {
            let _ = fs::remove_file(&temporary);
            return Err(StoreError::Io { path: temporary, source });
        }
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        sync_dir(&self.pending_dir())
    }

    /// Every pending chunk, oldest first. Damaged or leftover temporary
    /// files are removed: their chunks never reached the point where the
    /// kernel could delete them.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        let folder = self.pending_dir();
        let mut paths: Vec<PathBuf> =
            fs::read_dir(&folder).map_err(io_error(&folder))?.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        let mut chunks = Vec::new();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                tracing::warn!(file = %path.display(), "removing an unfinished pending chunk");
                fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            require_file(&path)?;
            let mut file = File::open(&path).map_err(io_error(&path))?;
            match read_frame(&mut file, PENDING_MAGIC).map_err(io_error(&path))? {
                Ok(Some((header, payload))) => {
                    chunks.push(Pending { first_index: header.first_index, count: header.count, payload })
                }
                Ok(None) => {
                    return Err(StoreError::Corrupt { path, offset: 0, message: DAMAGED_PENDING.into() });
                }
                Err(reason) => {
                    // Renamed into place only after a sync, so this cannot
                    // come from a crash, and the kernel may have deleted
                    // its records already: stop rather than lose them.
                    return Err(StoreError::Corrupt {
                        path,
                        offset: 0,
                        message: format!("{reason}; {DAMAGED_PENDING}"),
                    });
                }
            }
        }
        Ok(chunks)
    }

    /// Removes a pending chunk once it is committed or known to be carried
    /// to the next kernel.
    pub fn remove_pending(&self, first_index: u64) -> Result<(), StoreError> {
        let path = self.pending_path(first_index);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.pending_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Streams the stored records from absolute index `from` to `out`, in
    /// the binary list layout, a piece at a time. Returns the index after
    /// the last record.
    pub fn write_records(&self, from: u64, out: &mut impl Write) -> Result<u64, StoreError> {
        let start = self.chunks.partition_point(|c| c.first_index + c.count <= from);
        let order = self.byte_order();
        for chunk in &self.chunks[start..] {
            let path = &self.segments[chunk.segment];
            let corrupt = |message: String| StoreError::Corrupt {
                path: path.clone(),
                offset: chunk.payload_offset - FRAME_HEADER as u64,
                message,
            };
            let mut file = File::open(path).map_err(io_error(path))?;
            let skip = from.saturating_sub(chunk.first_index);
            let offset = if skip == 0 {
                0
            } else {
                file.seek(SeekFrom::Start(chunk.payload_offset)).map_err(io_error(path))?;
                let payload = io::BufReader::new((&mut file).take(chunk.payload_len));
                record_offset(payload, skip, order).map_err(&corrupt)?
            };
            // The frame's checksum is checked again while the chunk is
            // served, so a segment damaged after the store opened ends the
            // output with an error instead of passing the damage on.
            file.seek(SeekFrom::Start(chunk.payload_offset - FRAME_HEADER as u64)).map_err(io_error(path))?;
            let mut hashing = HashingWriter { inner: io::sink(), hasher: crc32fast::Hasher::new() };
            let before = FRAME_HEADER as u64 + offset;
            let copied = io::copy(&mut (&mut file).take(before), &mut hashing).map_err(io_error(path))?;
            let mut hashing = HashingWriter { inner: &mut *out, hasher: hashing.hasher };
            let length = chunk.payload_len - offset;
            let sent = io::copy(&mut (&mut file).take(length), &mut hashing).map_err(io_error(path))?;
            let mut crc = [0u8; 4];
            let crc_read = read_up_to(&mut file, &mut crc).map_err(io_error(path))?;
            if copied != before || sent != length || crc_read != crc.len() {
                return Err(corrupt(format!(
                    "the segment ends inside this {}-byte chunk, which was whole when the store opened",
                    chunk.payload_len
                )));
            }
            if hashing.hasher.finalize() != u32::from_le_bytes(crc) {
                return Err(corrupt("checksum mismatch: the segment changed after the store opened".into()));
            }
        }
        Ok(self.next_index)
    }
}

/// Byte offset of record `skip` inside a chunk payload.
fn record_offset(payload: impl io::BufRead, skip: u64, order: ByteOrder) -> Result<u64, String> {
    let layout = imalog_core::BinaryLayout { digest_size: 20, byte_order: order };
    let mut decoder = imalog_core::BinaryDecoder::new(payload, layout);
    let mut record = imalog_core::binary::empty_record();
    for _ in 0..skip {
        match decoder.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Err("chunk ends before the requested record".into()),
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(decoder.offset())
}

/// Passes bytes on to `inner` and hashes them.
struct HashingWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Fails unless `path` is a regular file: a FIFO or a device in the store
/// would block a read or never end.
fn require_file(path: &Path) -> Result<(), StoreError> {
    let metadata = fs::symlink_metadata(path).map_err(io_error(path))?;
    if metadata.is_file() {
        return Ok(());
    }
    Err(StoreError::Corrupt { path: path.to_path_buf(), offset: 0, message: "not a regular file".into() })
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    let path = dir.join("meta.json");
    let temporary = dir.join("meta.json.tmp");
    let text =
        serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Meta { path: path.clone(), message: e.to_string() })?;
    File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        })
        .map_err(io_error(&temporary))?;
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates a store with three committed chunks of two fake records each,
    /// and returns the last segment's path and the last frame's offset.
    fn filled(root: &Path) -> (PathBuf, u64) {
        let mut store = Store::open(root).unwrap();
        for chunk in 0..3u64 {
            store.commit(chunk * 2, 2, &[chunk as u8; 40]).unwrap();
        }
        let segment = store.segments.last().unwrap().clone();
        let offset = store.chunks.last().unwrap().payload_offset - FRAME_HEADER as u64;
        (segment, offset)
    }

    fn corrupt(error: StoreError) -> (u64, String) {
        match error {
            StoreError::Corrupt { offset, message, .. } => (offset, message),
            other => panic!("expected Corrupt, got {other}"),
        }
    }

    fn flip(path: &Path, at: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at as usize] ^= 0xff;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn damaged_last_frame_without_pending_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (segment, last) = filled(dir.path());
        flip(&segment, last + 40);
        let (offset, message) = corrupt(Store::open(dir.path()).err().expect("damage is rejected"));
        assert_eq!(offset, last);
        assert_eq!(
            message,
            "checksum mismatch; no pending chunk covers record 4, so this is damage, not an interrupted write"
        );
        assert_eq!(fs::metadata(&segment).unwrap().len(), last + 76, "nothing was cut");
    }

    #[test]
    fn torn_last_frame_with_pending_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (segment, last) = filled(dir.path());
        {
            let store = Store::open(dir.path()).unwrap();
            store.write_pending(&Pending { first_index: 4, count: 2, payload: vec![2; 40] }).unwrap();
        }
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(last + 50).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_index(), 4);
        assert_eq!(fs::metadata(&segment).unwrap().len(), last);
        assert_eq!(store.pending().unwrap(), vec![Pending { first_index: 4, count: 2, payload: vec![2; 40] }]);
    }

    #[test]
    fn record_count_overflow_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (segment, last) = filled(dir.path());
        let mut bytes = fs::read(&segment).unwrap();
        let at = (last + 16) as usize;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[last as usize..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        fs::write(&segment, bytes).unwrap();
        let (offset, message) = corrupt(Store::open(dir.path()).err().expect("overflow is rejected"));
        assert_eq!(offset, last);
        assert_eq!(message, "record count 18446744073709551615 overflows the record index");
    }

    #[test]
    fn damaged_pending_chunk_stops_the_collector() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_pending(&Pending { first_index: 0, count: 1, payload: vec![1; 30] }).unwrap();
        let path = store.pending_path(0);
        flip(&path, 40);
        let (offset, message) = corrupt(store.pending().expect_err("damage is rejected"));
        assert_eq!(offset, 0);
        assert!(
            message.starts_with("checksum mismatch; damaged pending chunk: the kernel may have deleted"),
            "{message}"
        );
        assert!(path.is_file(), "the damaged chunk stays where it was");
    }

    #[test]
    fn epoch_without_meta_is_finished_when_unused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let second = dir.path().join("epochs/2");
        fs::create_dir_all(second.join("pending")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.epoch(), store.next_index()), (2, 0));
        assert!(second.join("meta.json").is_file());
    }

    #[test]
    fn meta_epoch_must_match_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let meta = dir.path().join("epochs/1/meta.json");
        fs::write(&meta, r#"{"epoch":7,"byte_order":null,"boot_identity":null}"#).unwrap();
        let error = Store::open(dir.path()).err().expect("a mismatched epoch is rejected");
        assert_eq!(error.to_string(), format!("{}: epoch 7 does not match its folder, epochs/1", meta.display()));
    }

    #[test]
    fn meta_byte_order_must_be_le_or_be() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let meta = dir.path().join("epochs/1/meta.json");
        fs::write(&meta, r#"{"epoch":1,"byte_order":"xx","boot_identity":null}"#).unwrap();
        let error = Store::open(dir.path()).err().expect("an unknown byte order is rejected");
        assert_eq!(error.to_string(), format!("{}: byte_order \"xx\": expected \"le\" or \"be\"", meta.display()));
    }

    #[test]
    fn pending_fifo_is_rejected_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fifo = store.pending_path(0);
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let (offset, message) = corrupt(store.pending().expect_err("a FIFO is rejected"));
        assert_eq!((offset, message.as_str()), (0, "not a regular file"));
    }

    #[test]
    fn damage_after_open_ends_the_served_history() {
        let dir = tempfile::tempdir().unwrap();
        let (segment, last) = filled(dir.path());
        let store = Store::open(dir.path()).unwrap();
        let mut whole = Vec::new();
        assert_eq!(store.write_records(0, &mut whole).unwrap(), 6);
        assert_eq!(whole, [vec![0u8; 40], vec![1; 40], vec![2; 40]].concat());
        flip(&segment, last + 45);
        let mut served = Vec::new();
        let (offset, message) = corrupt(store.write_records(0, &mut served).unwrap_err());
        assert_eq!((offset, message.as_str()), (last, "checksum mismatch: the segment changed after the store opened"));
        assert_eq!(served.len(), 120, "the damaged chunk was sent before its checksum was read");
    }
}
