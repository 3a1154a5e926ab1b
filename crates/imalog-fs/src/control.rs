//! The control socket of `imalog emulate`: a Unix socket through which
//! other processes make the emulated kernel measure files, buffers and
//! violations, or kexec, as hooks and the kexec system call would on a real
//! machine.
//!
//! The protocol is one JSON object per line in each direction. Requests
//! have an `op` field; every response has `ok` and, when `ok` is false,
//! `error`:
//!
//! ```text
//! {"op":"measure","paths":["/usr/bin/ls"],"pcr":null}
//! {"op":"buffer","name":"kernel_version","data":"362e31322e30","pcr":null}
//! {"op":"violation","path":"/tmp/file"}
//! {"op":"kexec"}
//! {"op":"status"}
//! {"op":"read_pcrs","pcrs":[10]}
//! ```
//!
//! Two more requests exist only when the server was started with test hooks:
//! `set_readers` (sets the reader count, to reach the overflow limit) and
//! `fail_htable_allocation` (makes the next `D` fail with ENOMEM).
//!
//! A request line has at most [`MAX_REQUEST`] bytes of UTF-8. At most
//! [`MAX_CLIENTS`] connections are served at once, and a connection that
//! sends nothing for [`IDLE_TIMEOUT`] is closed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use imalog_kernel::measure::FileOutcome;
use imalog_kernel::Appended;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::machine::Machine;

/// Maximum length of a request line, newline included.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Connections served at once; more are rejected with an error line.
pub const MAX_CLIENTS: usize = 64;
/// How long a connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Measure files, as a hook on open or exec would.
    Measure {
        /// Paths, each measured in turn.
        paths: Vec<PathBuf>,
        /// PCR, or the default one.
        #[serde(default)]
        pcr: Option<u32>,
    },
    /// Measure a buffer (critical data) with the buffer template.
    Buffer {
        /// Event name.
        name: String,
        /// Data, as hex.
        data: String,
        /// PCR, or the default one.
        #[serde(default)]
        pcr: Option<u32>,
    },
    /// Record a violation for a path.
    Violation {
        /// The path named in the record.
        path: String,
    },
    /// Soft-reboot into a new kernel instance that restores the list.
    Kexec,
    /// Report the counters.
    Status,
    /// Read PCRs of every bank from the TPM the kernel extends.
    ReadPcrs {
        /// PCR indexes.
        pcrs: Vec<u32>,
    },
    /// Test hook: set the reader count of the open rules.
    SetReaders {
        /// The new count.
        value: i64,
    },
    /// Test hook: make the next `D` with `ima_flush_htable` fail with ENOMEM.
    FailHtableAllocation,
}

/// A failed control exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket could not be created, reached or used.
    #[error("{path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server answered with something that is not a response.
    #[error("{path}: invalid response: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The request cannot be sent as it is.
    #[error("{path}: cannot send the request: {message}")]
    Request {
        /// The socket path.
        path: PathBuf,
        /// The problem with the request.
        message: String,
    },
    /// The server refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A running control server; the socket file is removed on drop.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Listens on `path` (mode 0600) and serves each connection on its own
    /// thread. A stale socket file left by a previous run is replaced.
    pub fn start(path: &Path, machine: Arc<Machine>, test_hooks: bool) -> Result<Self, ControlError> {
        let socket_error = |source| ControlError::Socket { path: path.to_path_buf(), source };
        if path.exists() && UnixStream::connect(path).is_err() {
            std::fs::remove_file(path).map_err(socket_error)?;
        }
        let listener = UnixListener::bind(path).map_err(socket_error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_error)?;
        let socket_name = path.display().to_string();
        let clients = Arc::new(AtomicUsize::new(0));
        thread::Builder::new()
            .name("imalog-control".into())
            .spawn(move || {
                let mut last_warning: Option<Instant> = None;
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                                clients.fetch_sub(1, Ordering::AcqRel);
                                tracing::warn!(socket = %socket_name, limit = MAX_CLIENTS, "control connection rejected: too many open connections");
                                reject_connection(stream);
                                continue;
                            }
                            let machine = Arc::clone(&machine);
                            let counter = Arc::clone(&clients);
                            let spawned =
                                thread::Builder::new().name("imalog-control-client".into()).spawn(move || {
                                    serve(stream, &machine, test_hooks);
                                    counter.fetch_sub(1, Ordering::AcqRel);
                                });
                            if let Err(error) = spawned {
                                clients.fetch_sub(1, Ordering::AcqRel);
                                tracing::warn!(socket = %socket_name, %error, "cannot start a control connection thread");
                            }
                        }
                        Err(error) => {
                            // Out of file descriptors, accept fails at once
                            // for as long as the connection waits: log once a
                            // second at most, and pause before trying again.
                            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                                tracing::warn!(socket = %socket_name, %error, "control accept failed");
                                last_warning = Some(Instant::now());
                            }
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
            .map_err(socket_error)?;
        tracing::info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer { path: path.to_path_buf() })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tells a connection over the limit why it is closed.
fn reject_connection(mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let message = format!("the emulator already serves {MAX_CLIENTS} control connections; try again later");
    let _ = writeln!(stream, "{}", json!({"ok": false, "error": message}));
}

/// One request line, or why there is none.
enum Line {
    Text(String),
    End,
    TooLong,
    NotUtf8,
}

/// Reads one line of at most [`MAX_REQUEST`] bytes.
fn read_request(reader: &mut impl BufRead) -> io::Result<Line> {
    let mut bytes = Vec::new();
    reader.take(MAX_REQUEST as u64 + 1).read_until(b'\n', &mut bytes)?;
    if bytes.is_empty() {
        return Ok(Line::End);
    }
    if bytes.len() > MAX_REQUEST {
        return Ok(Line::TooLong);
    }
    Ok(String::from_utf8(bytes).map_or(Line::NotUtf8, Line::Text))
}

fn serve(stream: UnixStream, machine: &Machine, test_hooks: bool) {
    let Ok(mut writer) = stream.try_clone() else { return };
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        let response = match read_request(&mut reader) {
            Err(error) => {
                tracing::debug!(%error, "control connection ended");
                return;
            }
            Ok(Line::End) => return,
            Ok(Line::TooLong) => {
                tracing::warn!(limit = MAX_REQUEST, "control request too long; closing the connection");
                let error = format!("invalid request: longer than {MAX_REQUEST} bytes; send fewer paths per request");
                let _ = writeln!(writer, "{}", json!({"ok": false, "error": error}));
                return;
            }
            Ok(Line::NotUtf8) => json!({"ok": false, "error": "invalid request: not UTF-8 text"}),
            Ok(Line::Text(line)) if line.trim().is_empty() => continue,
            Ok(Line::Text(line)) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => handle(&request, machine, test_hooks),
                Err(error) => json!({"ok": false, "error": format!("invalid request: {error}")}),
            },
        };
        let mut text = response.to_string();
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn appended(outcome: Result<Appended, imalog_kernel::Errno>) -> Value {
    match outcome {
        Ok(Appended::Yes) => json!({"outcome": "measured"}),
        Ok(Appended::TpmFailed) => json!({"outcome": "measured", "tpm_error": true}),
        Err(imalog_kernel::Errno::Eexist) => json!({"outcome": "duplicate"}),
        Err(imalog_kernel::Errno::Enodev) => json!({"outcome": "suspended"}),
        Err(errno) => json!({"outcome": "error", "error": errno.to_string()}),
    }
}

fn handle(request: &Request, machine: &Machine, test_hooks: bool) -> Value {
    let kernel = machine.kernel();
    let max_pcr = imalog_core::binary::MAX_PCR_INDEX;
    match request {
        Request::Measure { pcr: Some(pcr), .. } | Request::Buffer { pcr: Some(pcr), .. } if *pcr > max_pcr => {
            json!({"ok": false, "error": format!("pcr {pcr} is out of range 0 to {max_pcr}")})
        }
        Request::Measure { paths, pcr } => {
            let results: Vec<Value> = paths
                .iter()
                .map(|path| {
                    // Each path goes to the kernel running now: a kexec in
                    // the middle of a request boots a new instance.
                    let mut result = match machine.kernel().measure_path(path, *pcr) {
                        Ok(FileOutcome::Measured(done)) => appended(Ok(done)),
                        Ok(FileOutcome::Duplicate) => json!({"outcome": "duplicate"}),
                        Ok(FileOutcome::Suspended) => json!({"outcome": "suspended"}),
                        Err(error) => json!({"outcome": "error", "error": error.to_string()}),
                    };
                    result["path"] = json!(path);
                    result
                })
                .collect();
            tracing::debug!(files = paths.len(), "measure request");
            json!({"ok": true, "results": results})
        }
        Request::Buffer { name, data, pcr } => match imalog_core::hex::decode(data.as_bytes()) {
            Ok(bytes) => {
                json!({"ok": true, "results": [appended(kernel.measure_buffer(name.as_bytes(), &bytes, *pcr))]})
            }
            Err(e) => json!({"ok": false, "error": format!("data: invalid hex at character {}", e.position)}),
        },
        Request::Violation { path } => {
            json!({"ok": true, "results": [appended(kernel.add_violation(path.as_bytes()))]})
        }
        Request::Kexec => match machine.kexec() {
            Ok(report) => json!({
                "ok": true,
                "load": match &report.load { Ok(size) => json!({"segment_size": size}), Err(e) => json!({"error": e}) },
                "dump_bytes": report.dump_bytes,
                "restored": report.restore.restored,
                "restore_error": report.restore.error,
                "boots": report.boots,
            }),
            Err(error) => json!({"ok": false, "error": error.to_string()}),
        },
        Request::Status => {
            let counters = kernel.counters();
            json!({
                "ok": true,
                "current": counters.current,
                "staged": counters.staged,
                "full": counters.full,
                "violations": counters.violations,
                "suspended": kernel.is_suspended(),
                "open_users": kernel.open_state().users,
            })
        }
        Request::ReadPcrs { pcrs } => {
            let mut banks = serde_json::Map::new();
            for slot in kernel.slots().all().iter().filter(|s| s.tpm_bank) {
                let mut values = serde_json::Map::new();
                for pcr in pcrs {
                    match kernel.read_pcr(&slot.bank, *pcr) {
                        Ok(Some(value)) => {
                            values.insert(pcr.to_string(), json!(value.to_hex()));
                        }
                        Ok(None) => {}
                        Err(error) => return json!({"ok": false, "error": error.to_string()}),
                    }
                }
                banks.insert(slot.bank.to_string(), Value::Object(values));
            }
            json!({"ok": true, "banks": banks})
        }
        Request::SetReaders { value } if test_hooks => {
            kernel.mediator().set_readers_for_test(*value);
            json!({"ok": true})
        }
        Request::FailHtableAllocation if test_hooks => {
            kernel.fail_next_htable_allocation();
            json!({"ok": true})
        }
        Request::SetReaders { .. } | Request::FailHtableAllocation => {
            json!({"ok": false, "error": "test hooks are disabled; start imalog emulate with --test-hooks"})
        }
    }
}

/// Sends one request to the control socket at `path` and returns the
/// response, or the server's rejection as an error.
pub fn send(path: &Path, request: &Request) -> Result<Value, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let socket_error = |source| ControlError::Socket { path: path.to_path_buf(), source };
    let metadata = std::fs::metadata(path).map_err(socket_error)?;
    if !metadata.file_type().is_socket() {
        return Err(ControlError::Request {
            path: path.to_path_buf(),
            message: "not a socket; give the --control path of a running imalog emulate".into(),
        });
    }
    let mut line = serde_json::to_string(request)
        .map_err(|e| ControlError::Request { path: path.to_path_buf(), message: e.to_string() })?;
    let mut stream = UnixStream::connect(path).map_err(socket_error)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(socket_error)?;
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response).map_err(socket_error)?;
    let value: Value = serde_json::from_str(&response)
        .map_err(|e| ControlError::Protocol { path: path.to_path_buf(), message: format!("{e}: {response:?}") })?;
    if value["ok"] != json!(true) {
        let message = value["error"].as_str().unwrap_or("request refused").to_string();
        return Err(ControlError::Refused(message));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imalog_kernel::{Ima, KernelConfig};

    /// Starts a control server over a kernel without a TPM.
    fn server() -> (tempfile::TempDir, PathBuf, ControlServer) {
        let dir = tempfile::tempdir().unwrap();
        let config = KernelConfig::default();
        let ima = Ima::cold_boot(config.clone(), None).unwrap();
        let path = dir.path().join("control.sock");
        let server = ControlServer::start(&path, Arc::new(Machine::new(config, ima)), false).unwrap();
        (dir, path, server)
    }

    /// Sends raw bytes and returns the response lines until the server
    /// closes or `lines` arrived.
    fn exchange(path: &Path, request: &[u8], lines: usize) -> Vec<String> {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(request);
        let mut reader = BufReader::new(stream);
        let mut responses = Vec::new();
        while responses.len() < lines {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            responses.push(line);
        }
        responses
    }

    #[test]
    fn request_over_limit_closes_connection() {
        let (_dir, path, _server) = server();
        let mut request = vec![b'x'; MAX_REQUEST + 10];
        request.push(b'\n');
        let responses = exchange(&path, &request, 2);
        assert_eq!(responses.len(), 1, "{responses:?}");
        let reply: Value = serde_json::from_str(&responses[0]).unwrap();
        assert_eq!(reply["error"], "invalid request: longer than 1048576 bytes; send fewer paths per request");
    }

    #[test]
    fn request_not_utf8_is_rejected() {
        let (_dir, path, _server) = server();
        let responses = exchange(&path, b"\xff\xfe\n{\"op\":\"status\"}\n", 2);
        assert_eq!(responses.len(), 2, "{responses:?}");
        let first: Value = serde_json::from_str(&responses[0]).unwrap();
        assert_eq!(first, json!({"ok": false, "error": "invalid request: not UTF-8 text"}));
        let second: Value = serde_json::from_str(&responses[1]).unwrap();
        assert_eq!(second["ok"], true);
    }

    #[test]
    fn request_pcr_beyond_63_is_rejected() {
        let (_dir, path, _server) = server();
        let error = send(&path, &Request::Buffer { name: "b".into(), data: "00".into(), pcr: Some(64) }).unwrap_err();
        assert_eq!(error.to_string(), "pcr 64 is out of range 0 to 63");
        let error =
            send(&path, &Request::Measure { paths: vec!["/etc/hostname".into()], pcr: Some(u32::MAX) }).unwrap_err();
        assert_eq!(error.to_string(), "pcr 4294967295 is out of range 0 to 63");
    }

    #[test]
    fn connections_over_limit_are_rejected() {
        let (_dir, path, _server) = server();
        let occupied: Vec<UnixStream> = (0..MAX_CLIENTS).map(|_| UnixStream::connect(&path).unwrap()).collect();
        // The server counts a connection when it accepts it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let rejection = loop {
            let responses = exchange(&path, b"{\"op\":\"status\"}\n", 1);
            let reply: Value = serde_json::from_str(&responses[0]).unwrap();
            if reply["ok"] == false {
                break reply;
            }
            assert!(Instant::now() < deadline, "no rejection with {MAX_CLIENTS} connections occupied");
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(rejection["error"], "the emulator already serves 64 control connections; try again later");
        drop(occupied);
        let deadline = Instant::now() + Duration::from_secs(10);
        while send(&path, &Request::Status).is_err() {
            assert!(Instant::now() < deadline, "slots were not released");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn send_rejects_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let error = send(&file, &Request::Status).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: cannot send the request: not a socket; give the --control path of a running imalog emulate",
                file.display()
            )
        );
    }
}
