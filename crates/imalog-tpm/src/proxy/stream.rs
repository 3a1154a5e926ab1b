//! One socket type for TCP and Unix streams, and reads that wait for a
//! whole message while watching the proxy's stop flag and a deadline.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A socket address: a TCP address or a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(address) => write!(f, "{address}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A connected TCP or Unix stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `endpoint`, waiting at most `timeout` for a TCP handshake.
    pub(crate) fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect_timeout(address, timeout)?;
                // Commands and responses are written whole, so Nagle's
                // algorithm would only add delay.
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
        }
    }

    pub(crate) fn from_tcp(stream: TcpStream) -> io::Result<Stream> {
        stream.set_nodelay(true)?;
        Ok(Stream::Tcp(stream))
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_read_timeout(timeout),
            Stream::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_write_timeout(timeout),
            Stream::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_nonblocking(nonblocking),
            Stream::Unix(stream) => stream.set_nonblocking(nonblocking),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.shutdown(how),
            Stream::Unix(stream) => stream.shutdown(how),
        }
    }

    /// Reports whether the peer has closed the stream or sent bytes that no
    /// request asked for, without blocking. Either makes the stream unusable for a
    /// request and response protocol.
    pub(crate) fn is_stale(&mut self) -> bool {
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let stale = match self.read(&mut byte) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => false,
            // End of stream, or a late response to a command that timed out.
            Ok(_) | Err(_) => true,
        };
        self.set_nonblocking(false).is_err() || stale
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buffer),
            Stream::Unix(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buffer),
            Stream::Unix(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.flush(),
            Stream::Unix(stream) => stream.flush(),
        }
    }
}

/// The result of a read of a whole message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// The buffer is full.
    Complete,
    /// The peer closed the stream after `read` bytes of the buffer.
    Closed { read: usize },
    /// The deadline passed after `read` bytes.
    TimedOut { read: usize },
    /// The proxy is stopping.
    Stopped,
}

/// Limits of a read from a client.
pub(crate) struct ReadLimits<'a> {
    /// Set when the proxy stops.
    pub(crate) stop: &'a AtomicBool,
    /// Time allowed from the first byte of a message to its last.
    pub(crate) message_timeout: Duration,
    /// When set, the deadline also runs before the first byte arrives.
    pub(crate) started: Option<Instant>,
}

/// Fills `buffer` from a stream whose read timeout is a short poll interval.
/// Before the first byte the read waits as long as the client stays
/// connected, unless `limits.started` is set. From the first byte on, the
/// whole buffer must arrive within `limits.message_timeout`.
pub(crate) fn read_message(stream: &mut Stream, buffer: &mut [u8], limits: &ReadLimits<'_>) -> io::Result<ReadOutcome> {
    let mut filled = 0;
    let mut started = limits.started;
    while filled < buffer.len() {
        if limits.stop.load(Ordering::Relaxed) {
            return Ok(ReadOutcome::Stopped);
        }
        if let Some(start) = started {
            if start.elapsed() >= limits.message_timeout {
                return Ok(ReadOutcome::TimedOut { read: filled });
            }
        }
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(ReadOutcome::Closed { read: filled }),
            Ok(count) => {
                filled += count;
                started.get_or_insert_with(Instant::now);
            }
            Err(error) if is_timeout(&error) || error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(ReadOutcome::Complete)
}

/// True for the errors a read or write timeout produces on Linux.
pub(crate) fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reports whether `path` is a Unix socket that nothing listens on, as a
/// process that exited without removing it leaves behind.
pub(crate) fn is_stale_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).map(|m| m.file_type().is_socket()).unwrap_or(false);
    is_socket
        && matches!(
            UnixStream::connect(path),
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused
        )
}
