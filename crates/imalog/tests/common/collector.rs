//! Helpers for tests of `imalog collect` against a running `imalog emulate`:
//! collector processes that are killed when they drop, a measurement
//! workload on its own thread, the HTTP API, the store's pending files, a
//! tmpfs mount, and PCR reads with `tpm2_pcrread`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use imalog_core::{BinaryDecoder, BinaryLayout, ByteOrder};
use imalog_fs::control::{send, Request};

use crate::common::arg;

/// Time allowed for a collector that should exit on its own.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Settings for running `imalog collect` against one securityfs: the same store,
/// boot id file and flavour for every run.
#[derive(Clone, Debug)]
pub struct CollectSetup {
    /// The emulator's mount point.
    pub securityfs: PathBuf,
    /// The store folder.
    pub store: PathBuf,
    /// The emulator's boot id file.
    pub boot_id_file: PathBuf,
    /// `--flavor`, or the collector's default.
    pub flavor: Option<String>,
    /// Folder for the collectors' logs.
    pub log_dir: PathBuf,
}

/// The exit status and log of a collector run that ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output and standard error.
    pub log: String,
}

impl Finished {
    /// Returns whether the process died of SIGKILL, as fault injection does.
    pub fn killed(&self) -> bool {
        self.status.signal() == Some(libc::SIGKILL)
    }
}

impl CollectSetup {
    fn command(&self, log: &Path, extra: &[&str], fault: Option<&str>) -> Command {
        let output = File::create(log).expect("failed to create the collector log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_imalog"));
        command
            .args(["collect", "--securityfs", arg(&self.securityfs), "--store", arg(&self.store)])
            .args(["--boot-id-file", arg(&self.boot_id_file)])
            .args(extra)
            .env_remove("IMALOG_FAULT")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("failed to duplicate the log descriptor"))
            .stderr(output);
        if let Some(flavor) = &self.flavor {
            command.args(["--flavor", flavor]);
        }
        if let Some(fault) = fault {
            command.env("IMALOG_FAULT", fault);
        }
        command
    }

    /// Runs the collector with `extra` arguments and `IMALOG_FAULT=fault`
    /// until it exits; kills it and panics after `timeout`.
    pub fn run(&self, extra: &[&str], fault: Option<&str>, timeout: Duration) -> Finished {
        let log = self.log_dir.join("collect-run.log");
        let mut child = self.command(&log, extra, fault).spawn().expect("failed to start imalog collect");
        let status = wait_timeout(&mut child, timeout);
        let text = fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(status) => Finished { status, log: text },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("imalog collect {extra:?} (IMALOG_FAULT={fault:?}) did not exit within {timeout:?}:\n{text}");
            }
        }
    }

    /// Runs one clean round (`--once`), which must succeed and leave no
    /// pending chunk behind. Returns its log.
    pub fn clean_round(&self) -> String {
        let finished = self.run(&["--once", "--listen", "none"], None, EXIT_TIMEOUT);
        assert!(finished.status.success(), "clean collector round failed with {}:\n{}", finished.status, finished.log);
        assert!(!finished.log.to_lowercase().contains("corrupt"), "store corruption reported:\n{}", finished.log);
        let pending = pending_files(&self.store);
        assert!(pending.is_empty(), "pending files remain after a clean round: {pending:?}\n{}", finished.log);
        finished.log
    }

    /// Starts a collector with `extra` arguments and `IMALOG_FAULT=fault`,
    /// without waiting for anything.
    pub fn spawn(&self, extra: &[&str], fault: Option<&str>) -> Service {
        let log = self.log_dir.join("collect-service.log");
        let child = self.command(&log, extra, fault).spawn().expect("failed to start imalog collect");
        Service { child, log, address: String::new(), exited: None }
    }

    /// Starts a collector that serves HTTP on a free loopback port and runs
    /// rounds every `interval`; waits until it reports its address.
    pub fn start_service(&self, interval: &str) -> Service {
        let mut service = self.spawn(&["--interval", interval, "--listen", "127.0.0.1:0"], None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = service.log();
            let address = text.lines().find_map(|line| {
                line.contains("HTTP API listening")
                    .then(|| line.split("address=").nth(1).map(|a| a.trim().to_string()))?
            });
            if let Some(address) = address {
                service.address = address;
                return service;
            }
            if let Some(status) = service.try_exit() {
                panic!("imalog collect exited with {status} before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "imalog collect did not start listening:\n{text}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running `imalog collect` service; killed when it drops.
pub struct Service {
    child: Child,
    log: PathBuf,
    /// The HTTP API's address.
    pub address: String,
    exited: Option<ExitStatus>,
}

impl Service {
    /// Returns the collector's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Returns the exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Stops the collector with SIGTERM, which ends it after the round under
    /// way, and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        // SAFETY: kill(2) takes plain integers and touches no memory.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_timeout(&mut self.child, EXIT_TIMEOUT).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("imalog collect did not exit within {EXIT_TIMEOUT:?} of SIGTERM:\n{}", self.log())
        });
        self.exited = Some(status);
        status
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("imalog collect log:\n{}", self.log());
        }
    }
}

/// Returns the pending chunk files of every epoch of `store`, including
/// leftover temporary and damaged ones.
pub fn pending_files(store: &Path) -> Vec<PathBuf> {
    let Ok(epochs) = fs::read_dir(store.join("epochs")) else { return Vec::new() };
    let mut files = Vec::new();
    for epoch in epochs.flatten() {
        if let Ok(entries) = fs::read_dir(epoch.path().join("pending")) {
            files.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    files.sort();
    files
}

/// Measures files with unique names and contents through the control
/// socket, one after another on a thread, until stopped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<String>>>,
}

impl Workload {
    /// Starts measuring files `PREFIX-<n>` written to `folder`, with `pause`
    /// between measurements.
    pub fn start(control: PathBuf, folder: PathBuf, prefix: &str, pause: Duration) -> Workload {
        fs::create_dir_all(&folder).expect("failed to create the workload folder");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let prefix = prefix.to_string();
        let thread = thread::spawn(move || {
            let mut measured = Vec::new();
            let mut serial = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let path = folder.join(format!("{prefix}-{serial:06}"));
                serial += 1;
                fs::write(&path, format!("{prefix} workload file {serial}\n")).expect("failed to write a file");
                if let Some(path) = measure_one(&control, &path) {
                    measured.push(path);
                }
                thread::sleep(pause);
            }
            measured
        });
        Workload { stop, thread: Some(thread) }
    }

    /// Stops the workload and returns the paths it measured, in order.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("the workload runs");
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Measures one file; returns its path when the kernel appended a record,
/// `None` when the kernel was suspended for a kexec. Panics on any other
/// outcome, because the workload's files are all distinct.
pub fn measure_one(control: &Path, path: &Path) -> Option<String> {
    let request = Request::Measure { paths: vec![path.to_path_buf()], pcr: None };
    let response = send(control, &request).unwrap_or_else(|e| panic!("measure {}: {e}", path.display()));
    let result = &response["results"][0];
    match result["outcome"].as_str() {
        Some("measured") => {
            assert!(result.get("tpm_error").is_none(), "the TPM extend failed for {}: {result}", path.display());
            Some(arg(path).to_string())
        }
        Some("suspended") => None,
        _ => panic!("measure {}: unexpected result {result}", path.display()),
    }
}

/// A plain HTTP GET on loopback; returns the status and the body, with a
/// chunked body decoded.
pub fn http_get(address: &str, target: &str) -> (u16, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(address).expect("failed to connect to the collector");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("set a read timeout");
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("failed to read the response");
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("response has no head") + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).to_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("response has no status code");
    let body = &response[head_end..];
    if head.contains("transfer-encoding: chunked") {
        (status, dechunk(body))
    } else {
        (status, body.to_vec())
    }
}

/// Decodes an HTTP chunked body; panics when it is cut short, as the
/// collector does on a failure after the status line.
pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").expect("chunked body ends without a size line");
        let size_text = std::str::from_utf8(&body[..line_end]).expect("chunk size is not text");
        let size = usize::from_str_radix(size_text, 16).expect("chunk size is not hex");
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        assert!(body.len() >= size + 2, "chunked body cut after {} bytes", out.len());
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Returns the event names (file paths, `boot_aggregate`, `kexec_load`,
/// ...) of a little-endian SHA-1 binary list, in order.
pub fn event_names(list: &[u8]) -> Vec<String> {
    let layout = BinaryLayout { digest_size: 20, byte_order: ByteOrder::Little };
    let mut decoder = BinaryDecoder::new(list, layout);
    let mut record = imalog_core::binary::empty_record();
    let mut names = Vec::new();
    while decoder.read_record(&mut record).expect("the history does not decode") {
        let name = record.event_name().map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
        names.push(name);
    }
    assert_eq!(decoder.offset() as usize, list.len(), "the history has trailing bytes");
    names
}

/// The `--tpm` argument that reaches `swtpm` over TCP.
pub fn swtpm_argument(swtpm: &imalog_tpm::testing::Swtpm) -> String {
    match swtpm.server_endpoint() {
        imalog_tpm::proxy::Endpoint::Tcp(address) => format!("swtpm:{address}"),
        other => panic!("swtpm listens on {other:?}, expected TCP"),
    }
}

/// PCR banks of swtpm.
pub const BANKS: [&str; 4] = ["sha1", "sha256", "sha384", "sha512"];

/// Reads PCR 10 of every bank with `tpm2_pcrread` through the TCTI `tcti`.
pub fn pcrread(tcti: &str) -> Vec<(String, String)> {
    let selection = BANKS.iter().map(|b| format!("{b}:10")).collect::<Vec<_>>().join("+");
    let output = Command::new("tpm2_pcrread")
        .arg(selection)
        .env("TPM2TOOLS_TCTI", tcti)
        .output()
        .expect("failed to start tpm2_pcrread");
    assert!(output.status.success(), "tpm2_pcrread: {}", String::from_utf8_lossy(&output.stderr));
    let values = imalog_core::parse_pcr_yaml(&String::from_utf8_lossy(&output.stdout)).expect("tpm2_pcrread YAML");
    values.iter().map(|v| (v.bank.to_string(), v.value.to_hex())).collect()
}

/// A tmpfs mounted on a folder of its own; unmounted (lazily, if busy) when
/// it drops.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` bytes. Returns `None` when the mount
    /// fails, which needs root.
    pub fn mount(size_bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("failed to create a temporary folder");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "imalog-test", arg(dir.path())])
            .status()
            .expect("failed to start mount");
        status.success().then_some(Tmpfs { dir })
    }

    /// Returns the mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the free bytes for unprivileged writes, from statvfs.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(arg(self.path())).expect("path without NUL");
        // SAFETY: statvfs writes into the zeroed struct we pass and reads
        // the NUL-terminated path, both alive for the call.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
        assert_eq!(result, 0, "statvfs {}: {}", self.path().display(), std::io::Error::last_os_error());
        stats.f_bavail as u64 * stats.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
