//! The one connection to the TPM's server socket, and short-lived
//! connections to its control socket. A mutex makes every exchange with the
//! TPM whole: one command and its response, or one control command and its
//! response, with nothing from another client in between.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::stream::{Endpoint, Stream};
use super::wire::{declared_size, HEADER_SIZE, RESPONSE_LIMIT};

/// Largest control channel response the proxy accepts. CMD_GET_STATEBLOB
/// returns a whole state blob, which for swtpm 0.7.1 is tens of kilobytes.
const CONTROL_RESPONSE_LIMIT: u64 = 4 * 1024 * 1024;

/// A failed exchange with the TPM.
#[derive(Debug, thiserror::Error)]
#[error("TPM at {endpoint}: {action}: {source}")]
pub struct UpstreamError {
    /// The socket of the TPM.
    pub endpoint: Endpoint,
    /// The operation that failed, such as `connecting`.
    pub action: &'static str,
    /// The cause.
    #[source]
    pub source: io::Error,
}

pub(crate) struct Upstream {
    server: Endpoint,
    control: Endpoint,
    timeout: Duration,
    /// The connection to the server socket, `None` until the first command
    /// and after an error. Holding this lock is what serializes the TPM.
    connection: Mutex<Option<Stream>>,
    connect_failures: AtomicU64,
}

impl Upstream {
    pub(crate) fn new(server: Endpoint, control: Endpoint, timeout: Duration) -> Self {
        Upstream { server, control, timeout, connection: Mutex::new(None), connect_failures: AtomicU64::new(0) }
    }

    pub(crate) fn server(&self) -> &Endpoint {
        &self.server
    }

    pub(crate) fn control(&self) -> &Endpoint {
        &self.control
    }

    /// Sends one whole command and returns the whole response. After any
    /// error the connection is dropped, because a late response could
    /// otherwise be taken for the response to the next command. The next
    /// command reconnects. A command is never resent, because the TPM may
    /// have executed it.
    pub(crate) fn transmit(&self, command: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        self.transmit_within(command, self.timeout)
    }

    /// Like [`Upstream::transmit`], waiting at most `timeout` for the
    /// response instead of the configured upstream timeout.
    pub(crate) fn transmit_within(&self, command: &[u8], timeout: Duration) -> Result<Vec<u8>, UpstreamError> {
        let mut connection = self.lock();
        if let Some(stream) = connection.as_mut() {
            if stream.is_stale() {
                tracing::debug!(tpm = %self.server, "TPM connection closed or out of step; reconnecting");
                *connection = None;
            }
        }
        let stream = match connection.as_mut() {
            Some(stream) => stream,
            None => connection.insert(self.connect_server()?),
        };
        let result = exchange(stream, command, timeout, self.timeout).map_err(|(action, source)| UpstreamError {
            endpoint: self.server.clone(),
            action,
            source,
        });
        if result.is_err() {
            *connection = None;
        }
        result
    }

    /// Sends one control command on a connection of its own and returns the
    /// control channel's response. The proxy half-closes the connection
    /// after the request, so swtpm closes it after its response, and the
    /// response needs no length field. The TPM lock is held meanwhile, so
    /// that a reset or stop does not cut a command in two.
    pub(crate) fn control_command(&self, request: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        let _serialized = self.lock();
        let error = |action, source| UpstreamError { endpoint: self.control.clone(), action, source };

        let mut stream = Stream::connect(&self.control, self.timeout).map_err(|e| error("connecting", e))?;
        stream.set_read_timeout(Some(self.timeout)).map_err(|e| error("setting the read timeout", e))?;
        stream.set_write_timeout(Some(self.timeout)).map_err(|e| error("setting the write timeout", e))?;
        stream.write_all(request).map_err(|e| error("sending a control command", e))?;
        stream.shutdown(Shutdown::Write).map_err(|e| error("closing the request side", e))?;

        let mut response = Vec::new();
        (&mut stream)
            .take(CONTROL_RESPONSE_LIMIT + 1)
            .read_to_end(&mut response)
            .map_err(|e| error("reading a control response", e))?;
        if response.len() as u64 > CONTROL_RESPONSE_LIMIT {
            let message = format!("control response exceeds {CONTROL_RESPONSE_LIMIT} bytes");
            return Err(error("reading a control response", io::Error::new(io::ErrorKind::InvalidData, message)));
        }
        Ok(response)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Stream>> {
        // A thread that panicked while holding the lock leaves a connection
        // in an unknown state, so it is dropped.
        self.connection.lock().unwrap_or_else(|poisoned| {
            let mut connection = poisoned.into_inner();
            *connection = None;
            connection
        })
    }

    fn connect_server(&self) -> Result<Stream, UpstreamError> {
        let error = |action, source| UpstreamError { endpoint: self.server.clone(), action, source };
        let stream = match Stream::connect(&self.server, self.timeout) {
            Ok(stream) => stream,
            Err(source) => {
                let failures = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures.is_power_of_two() {
                    tracing::warn!(tpm = %self.server, failures, error = %source, "cannot connect to the TPM");
                }
                return Err(error("connecting", source));
            }
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(|e| error("setting the read timeout", e))?;
        stream.set_write_timeout(Some(self.timeout)).map_err(|e| error("setting the write timeout", e))?;
        tracing::debug!(tpm = %self.server, "connected to the TPM");
        Ok(stream)
    }
}

/// Writes `command` and reads one response, whose header gives its size,
/// waiting at most `timeout` for the header. The stream's read timeout is
/// `usual_timeout` before and after.
fn exchange(
    stream: &mut Stream,
    command: &[u8],
    timeout: Duration,
    usual_timeout: Duration,
) -> Result<Vec<u8>, (&'static str, io::Error)> {
    stream.write_all(command).map_err(|e| ("sending a command", e))?;

    let mut header = [0u8; HEADER_SIZE];
    if timeout != usual_timeout {
        stream.set_read_timeout(Some(timeout)).map_err(|e| ("setting the read timeout", e))?;
    }
    let header_read = stream.read_exact(&mut header);
    if timeout != usual_timeout {
        stream.set_read_timeout(Some(usual_timeout)).map_err(|e| ("setting the read timeout", e))?;
    }
    header_read.map_err(|e| ("reading a response header", e))?;
    let size = declared_size(&header) as usize;
    if !(HEADER_SIZE..=RESPONSE_LIMIT).contains(&size) {
        let message = format!("response header declares {size} bytes, expected {HEADER_SIZE} to {RESPONSE_LIMIT}");
        return Err(("reading a response header", io::Error::new(io::ErrorKind::InvalidData, message)));
    }

    let mut response = vec![0u8; size];
    response[..HEADER_SIZE].copy_from_slice(&header);
    stream.read_exact(&mut response[HEADER_SIZE..]).map_err(|e| ("reading a response body", e))?;
    Ok(response)
}
