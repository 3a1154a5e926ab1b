//! Serving one client connection: TPM commands on a server socket, or swtpm
//! control commands on a control socket.

use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::stream::{read_message, ReadLimits, ReadOutcome, Stream};
use super::upstream::Upstream;
use super::wire::{control, declared_size, error_response, HEADER_SIZE, PROXY_RC_IO_ERROR, TPM_RC_COMMAND_SIZE};

/// How long a client read blocks before the proxy checks its stop flag.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Most bytes of an oversize command the proxy reads and discards so that
/// the connection stays usable. Beyond this the proxy responds and closes
/// the connection.
const DISCARD_LIMIT: usize = 64 * 1024;

/// How long the proxy keeps reading from a client it is closing, so that the
/// kernel does not reset the connection while the client still has a
/// response to read.
const LINGER: Duration = Duration::from_millis(200);

/// State that the listeners and client threads share.
pub(crate) struct Shared {
    pub(crate) upstream: Upstream,
    pub(crate) stop: AtomicBool,
    pub(crate) max_command_size: u32,
    pub(crate) client_timeout: Duration,
    pub(crate) counters: Counters,
}

/// Event counts, which also limit how often repeated events log a warning.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) control_commands: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) upstream_errors: AtomicU64,
}

/// Adds one to `counter` and returns the new count.
pub(crate) fn count(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// A repeated event logs a warning at its 1st, 2nd, 4th, 8th ... occurrence
/// and at debug level otherwise.
macro_rules! warn_repeated {
    ($count:expr, $($rest:tt)+) => {
        if $count.is_power_of_two() {
            tracing::warn!(count = $count, $($rest)+);
        } else {
            tracing::debug!(count = $count, $($rest)+);
        }
    };
}

/// The protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// TPM commands.
    Server,
    /// swtpm control commands.
    Control,
}

/// Serves a client until it disconnects, breaks the protocol, stalls inside
/// a message, or the proxy stops.
pub(crate) fn serve(shared: &Shared, mut stream: Stream, role: Role, client: u64) {
    if let Err(error) = configure(&stream, shared.client_timeout) {
        tracing::debug!(client, %error, "cannot set client socket timeouts");
        return;
    }
    let result = match role {
        Role::Server => serve_commands(shared, &mut stream, client),
        Role::Control => serve_control(shared, &mut stream, client),
    };
    if let Err(error) = result {
        tracing::debug!(client, ?role, %error, "client connection failed");
    }
}

fn configure(stream: &Stream, client_timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(client_timeout))
}

fn limits(shared: &Shared, started: Option<Instant>) -> ReadLimits<'_> {
    ReadLimits { stop: &shared.stop, message_timeout: shared.client_timeout, started }
}

/// Counts and logs a read that did not complete, unless it ended quietly:
/// an idle client that left, or the proxy stopping.
fn end_of_read(shared: &Shared, outcome: ReadOutcome, client: u64, message_part: &'static str) {
    match outcome {
        ReadOutcome::Complete | ReadOutcome::Stopped | ReadOutcome::Closed { read: 0 } => {}
        ReadOutcome::Closed { read } => {
            let count = count(&shared.counters.aborted);
            warn_repeated!(count, client, read, message_part, "client disconnected in the middle of a message");
        }
        ReadOutcome::TimedOut { read } => {
            let count = count(&shared.counters.aborted);
            let timeout_ms = shared.client_timeout.as_millis() as u64;
            warn_repeated!(
                count,
                client,
                read,
                message_part,
                timeout_ms,
                "client stalled in the middle of a message; closing"
            );
        }
    }
}

fn serve_commands(shared: &Shared, stream: &mut Stream, client: u64) -> io::Result<()> {
    loop {
        let mut header = [0u8; HEADER_SIZE];
        let outcome = read_message(stream, &mut header, &limits(shared, None))?;
        if outcome != ReadOutcome::Complete {
            end_of_read(shared, outcome, client, "command header");
            return Ok(());
        }

        let size = declared_size(&header) as usize;
        if size < HEADER_SIZE || size > shared.max_command_size as usize {
            let count = count(&shared.counters.rejected);
            let max = shared.max_command_size;
            warn_repeated!(count, client, size, max, "rejected a command whose size is out of range");
            if size >= HEADER_SIZE && size - HEADER_SIZE <= DISCARD_LIMIT {
                // Reading the body keeps the stream in step, so the client
                // may send its next command on the same connection.
                let outcome = discard(stream, size - HEADER_SIZE, &limits(shared, Some(Instant::now())))?;
                if outcome != ReadOutcome::Complete {
                    end_of_read(shared, outcome, client, "oversize command body");
                    return Ok(());
                }
                stream.write_all(&error_response(TPM_RC_COMMAND_SIZE))?;
                continue;
            }
            stream.write_all(&error_response(TPM_RC_COMMAND_SIZE))?;
            close_gracefully(stream);
            return Ok(());
        }

        let mut command = vec![0u8; size];
        command[..HEADER_SIZE].copy_from_slice(&header);
        let outcome = read_message(stream, &mut command[HEADER_SIZE..], &limits(shared, Some(Instant::now())))?;
        if outcome != ReadOutcome::Complete {
            end_of_read(shared, outcome, client, "command body");
            return Ok(());
        }

        let response = match shared.upstream.transmit(&command) {
            Ok(response) => response,
            Err(error) => {
                let count = count(&shared.counters.upstream_errors);
                warn_repeated!(count, client, error = %error, "TPM command failed; answering with a resource manager I/O error");
                error_response(PROXY_RC_IO_ERROR).to_vec()
            }
        };
        count(&shared.counters.commands);
        stream.write_all(&response)?;
    }
}

fn serve_control(shared: &Shared, stream: &mut Stream, client: u64) -> io::Result<()> {
    loop {
        let mut code_bytes = [0u8; 4];
        let outcome = read_message(stream, &mut code_bytes, &limits(shared, None))?;
        if outcome != ReadOutcome::Complete {
            end_of_read(shared, outcome, client, "control command code");
            return Ok(());
        }
        let code = u32::from_be_bytes(code_bytes);
        let body_limits = limits(shared, Some(Instant::now()));

        let mut request = code_bytes.to_vec();
        match control::request(code) {
            control::Request::Fixed(length) => {
                request.resize(4 + length, 0);
                let outcome = read_message(stream, &mut request[4..], &body_limits)?;
                if outcome != ReadOutcome::Complete {
                    end_of_read(shared, outcome, client, "control command body");
                    return Ok(());
                }
            }
            control::Request::HashData => {
                let mut length_bytes = [0u8; 4];
                let outcome = read_message(stream, &mut length_bytes, &body_limits)?;
                if outcome != ReadOutcome::Complete {
                    end_of_read(shared, outcome, client, "CMD_HASH_DATA length");
                    return Ok(());
                }
                let length = u32::from_be_bytes(length_bytes);
                if length > control::HASH_DATA_LIMIT {
                    count(&shared.counters.rejected);
                    tracing::warn!(
                        client,
                        length,
                        limit = control::HASH_DATA_LIMIT,
                        "rejected CMD_HASH_DATA beyond the limit"
                    );
                    stream.write_all(&control::RESULT_BAD_PARAMETER.to_be_bytes())?;
                    close_gracefully(stream);
                    return Ok(());
                }
                request.extend_from_slice(&length_bytes);
                request.resize(8 + length as usize, 0);
                let outcome = read_message(stream, &mut request[8..], &body_limits)?;
                if outcome != ReadOutcome::Complete {
                    end_of_read(shared, outcome, client, "CMD_HASH_DATA data");
                    return Ok(());
                }
            }
            control::Request::Unsupported => {
                count(&shared.counters.rejected);
                tracing::warn!(client, code, "rejected a control command that the proxy cannot forward");
                // The request's length is unknown, so the stream cannot be
                // read any further.
                stream.write_all(&control::RESULT_BAD_ORDINAL.to_be_bytes())?;
                close_gracefully(stream);
                return Ok(());
            }
        }

        count(&shared.counters.control_commands);
        let response = if code == control::SET_LOCALITY {
            set_locality(request[4], client)
        } else {
            match shared.upstream.control_command(&request) {
                Ok(response) => response,
                Err(error) => {
                    let count = count(&shared.counters.upstream_errors);
                    warn_repeated!(count, client, code, error = %error, "control command failed");
                    control::RESULT_IO_ERROR.to_be_bytes().to_vec()
                }
            }
        };
        stream.write_all(&response)?;
    }
}

/// Responds to CMD_SET_LOCALITY without the TPM. Every client's commands share
/// the proxy's one TPM connection, which stays at locality 0, so only
/// locality 0 is honest to accept. Linux's /dev/tpmrm0 offers user space no
/// other locality either.
fn set_locality(locality: u8, client: u64) -> Vec<u8> {
    if locality == 0 {
        return control::RESULT_SUCCESS.to_be_bytes().to_vec();
    }
    tracing::warn!(client, locality, "rejected CMD_SET_LOCALITY: the proxy serves locality 0 only");
    control::RESULT_BAD_LOCALITY.to_be_bytes().to_vec()
}

/// Reads and drops `length` bytes.
fn discard(stream: &mut Stream, mut length: usize, limits: &ReadLimits<'_>) -> io::Result<ReadOutcome> {
    let mut buffer = [0u8; 4096];
    while length > 0 {
        let chunk = length.min(buffer.len());
        let outcome = read_message(stream, &mut buffer[..chunk], limits)?;
        if outcome != ReadOutcome::Complete {
            return Ok(outcome);
        }
        length -= chunk;
    }
    Ok(ReadOutcome::Complete)
}

/// Closes the sending side and drains what the client still sends for a
/// short while. Closing a socket with unread input makes Linux send a reset,
/// which can destroy the response before the client reads it.
fn close_gracefully(stream: &mut Stream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match io::Read::read(stream, &mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if super::stream::is_timeout(&error) => {}
            Err(_) => return,
        }
    }
}
