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

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use imalog_kernel::measure::FileOutcome;
use imalog_kernel::Appended;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::machine::Machine;

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
        thread::Builder::new()
            .name("imalog-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let machine = Arc::clone(&machine);
                            let _ = thread::Builder::new()
                                .name("imalog-control-client".into())
                                .spawn(move || serve(stream, &machine, test_hooks));
                        }
                        Err(error) => tracing::warn!(socket = %socket_name, %error, "control accept failed"),
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

fn serve(stream: UnixStream, machine: &Machine, test_hooks: bool) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(&request, machine, test_hooks),
            Err(error) => json!({"ok": false, "error": format!("invalid request: {error}")}),
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
    match request {
        Request::Measure { paths, pcr } => {
            let results: Vec<Value> = paths
                .iter()
                .map(|path| {
                    let mut result = match kernel.measure_path(path, *pcr) {
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
/// response, or the server's refusal as an error.
pub fn send(path: &Path, request: &Request) -> Result<Value, ControlError> {
    let socket_error = |source| ControlError::Socket { path: path.to_path_buf(), source };
    let mut stream = UnixStream::connect(path).map_err(socket_error)?;
    let mut line = serde_json::to_string(request)
        .map_err(|e| ControlError::Protocol { path: path.to_path_buf(), message: e.to_string() })?;
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
