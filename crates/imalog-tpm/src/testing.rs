//! swtpm for tests (cargo feature `swtpm-testing`): [`Swtpm::start`] runs
//! a private swtpm on free loopback ports with its state in a new temporary
//! directory, and dropping the [`Swtpm`] kills it and removes the directory,
//! also when a test panics.
//!
//! Tests that need swtpm or tpm2-tools call [`Swtpm::start_for_test`] or
//! [`tool_for_test`], which skip with a message when the program is missing,
//! unless `IMALOG_REQUIRE_ORACLES=1` turns a missing program into a failure.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proxy::{Endpoint, ProxyConfig};

/// The environment variable that makes missing oracles fail tests.
pub const REQUIRE_ORACLES_VAR: &str = "IMALOG_REQUIRE_ORACLES";

/// Time swtpm has to respond after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting swtpm, each on newly chosen ports, because another
/// process may take a chosen port before swtpm binds it.
const START_ATTEMPTS: usize = 5;

/// True when `IMALOG_REQUIRE_ORACLES=1`, as `scripts/test` sets it.
pub fn oracles_required() -> bool {
    std::env::var(REQUIRE_ORACLES_VAR).as_deref() == Ok("1")
}

/// Reports whether `program` is on `PATH` for a test. A missing program
/// prints a skip message and returns false, or panics when
/// `IMALOG_REQUIRE_ORACLES=1`.
pub fn tool_for_test(program: &str, package: &str) -> bool {
    if find_on_path(program).is_some() {
        return true;
    }
    if oracles_required() {
        panic!("{program} not found on PATH, and {REQUIRE_ORACLES_VAR}=1 requires it (install {package})");
    }
    eprintln!("skipping: {program} not found on PATH (install {package}, or set {REQUIRE_ORACLES_VAR}=1 to fail)");
    false
}

/// Finds an executable file named `program` in the directories of `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|directory| directory.join(program)).find(|candidate| {
        std::fs::metadata(candidate).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// A failure to start swtpm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwtpmError {
    /// The `swtpm` program is not on `PATH`.
    #[error("swtpm not found on PATH (install the Debian package swtpm)")]
    NotInstalled,
    /// The state directory could not be created.
    #[error("cannot create the swtpm state directory {path}: {source}")]
    StateDirectory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No free ports were found.
    #[error("cannot find free loopback ports for swtpm: {0}")]
    Ports(#[source] io::Error),
    /// swtpm could not be run.
    #[error("cannot run swtpm: {0}")]
    Spawn(#[source] io::Error),
    /// swtpm exited before it responded.
    #[error("swtpm exited with {status} before it responded; its output:\n{output}")]
    Exited {
        /// The exit status.
        status: ExitStatus,
        /// swtpm's standard output and error.
        output: String,
    },
    /// swtpm did not respond in time.
    #[error("swtpm did not respond within {} s; its output:\n{output}", READY_TIMEOUT.as_secs())]
    NotReady {
        /// swtpm's standard output and error.
        output: String,
    },
}

/// The sockets swtpm listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Transport {
    Tcp { server: SocketAddr, control: SocketAddr },
    Unix { server: PathBuf, control: PathBuf },
}

/// A running swtpm 0.7 TPM 2.0 with the PCR banks it allocates by default
/// (sha1, sha256, sha384 and sha512), started with `TPM2_Startup(CLEAR)`
/// done.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    state_directory: PathBuf,
    transport: Transport,
}

impl Swtpm {
    /// Starts swtpm on two free consecutive loopback TCP ports (server, then
    /// control) and waits until it responds on both.
    pub fn start() -> Result<Swtpm, SwtpmError> {
        Self::start_with(false)
    }

    /// Starts swtpm on Unix sockets in its state directory: `swtpm.sock`
    /// for the server and `swtpm.sock.ctrl` for the control channel.
    pub fn start_unix() -> Result<Swtpm, SwtpmError> {
        Self::start_with(true)
    }

    /// Starts swtpm on TCP for a test: returns `None` after printing a skip
    /// message when swtpm is not installed, and panics when
    /// `IMALOG_REQUIRE_ORACLES=1` or when swtpm fails to start.
    pub fn start_for_test() -> Option<Swtpm> {
        Self::for_test(Self::start())
    }

    /// Like [`Swtpm::start_for_test`], on Unix sockets.
    pub fn start_unix_for_test() -> Option<Swtpm> {
        Self::for_test(Self::start_unix())
    }

    fn for_test(started: Result<Swtpm, SwtpmError>) -> Option<Swtpm> {
        match started {
            Ok(swtpm) => Some(swtpm),
            Err(SwtpmError::NotInstalled) if !oracles_required() => {
                eprintln!(
                    "skipping: swtpm not found on PATH (install the Debian package swtpm, or set \
                     {REQUIRE_ORACLES_VAR}=1 to fail)"
                );
                None
            }
            Err(SwtpmError::NotInstalled) => {
                panic!("swtpm not found on PATH, and {REQUIRE_ORACLES_VAR}=1 requires it (install the Debian package swtpm)")
            }
            Err(error) => panic!("{error}"),
        }
    }

    fn start_with(unix: bool) -> Result<Swtpm, SwtpmError> {
        let program = find_on_path("swtpm").ok_or(SwtpmError::NotInstalled)?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let state_directory = create_state_directory()?;
            let transport = if unix {
                let server = state_directory.join("swtpm.sock");
                let control = state_directory.join("swtpm.sock.ctrl");
                Transport::Unix { server, control }
            } else {
                let (server, control) = free_port_pair().map_err(SwtpmError::Ports)?;
                Transport::Tcp { server, control }
            };
            match Self::spawn(&program, state_directory.clone(), transport) {
                Ok(swtpm) => return Ok(swtpm),
                // Another process may have bound a chosen port; try others.
                Err(error @ SwtpmError::Exited { .. }) if !unix => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(SwtpmError::NotInstalled))
    }

    fn spawn(program: &Path, state_directory: PathBuf, transport: Transport) -> Result<Swtpm, SwtpmError> {
        let (server_option, control_option) = match &transport {
            Transport::Tcp { server, control } => (
                format!("type=tcp,port={},bindaddr={}", server.port(), server.ip()),
                format!("type=tcp,port={},bindaddr={}", control.port(), control.ip()),
            ),
            Transport::Unix { server, control } => {
                (format!("type=unixio,path={}", server.display()), format!("type=unixio,path={}", control.display()))
            }
        };
        let output_path = state_directory.join("swtpm.out");
        let files = File::create(&output_path).and_then(|output| Ok((output.try_clone()?, output)));
        let (output, error_output) = match files {
            Ok(files) => files,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&state_directory);
                return Err(SwtpmError::StateDirectory { path: state_directory, source });
            }
        };

        let child = Command::new(program)
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state_directory.display()))
            .arg("--server")
            .arg(server_option)
            .arg("--ctrl")
            .arg(control_option)
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(error_output)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&state_directory);
                return Err(SwtpmError::Spawn(error));
            }
        };

        // From here on, dropping `swtpm` kills the child and removes the
        // directory, on errors too.
        let mut swtpm = Swtpm { child, state_directory, transport };
        swtpm.wait_until_ready()?;
        Ok(swtpm)
    }

    fn wait_until_ready(&mut self) -> Result<(), SwtpmError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SwtpmError::Exited { status, output: self.output() });
            }
            // A swtpm that cannot bind its ports exits during startup.
            // Checking the child again after the exchange guards against
            // taking another process on the same port for this swtpm.
            if self.answers() && matches!(self.child.try_wait(), Ok(None)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SwtpmError::NotReady { output: self.output() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reports whether the control channel responds to CMD_GET_CAPABILITY
    /// and the server to TPM2_GetCapability.
    fn answers(&self) -> bool {
        const GET_CAPABILITY: [u8; 4] = [0, 0, 0, 1];
        const TPM2_GET_CAPABILITY: [u8; 22] = [
            0x80, 0x01, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x01, 0x7a, // header
            0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x01, 0x1e, 0x00, 0x00, 0x00, 0x01, // TPM_PT_MAX_COMMAND_SIZE
        ];
        let control_answers = exchange(&self.control_endpoint(), &GET_CAPABILITY, 8).is_some();
        let server_answers = exchange(&self.server_endpoint(), &TPM2_GET_CAPABILITY, 10)
            .is_some_and(|response| response[6..10] == [0, 0, 0, 0]);
        control_answers && server_answers
    }

    /// Returns what swtpm has written to its standard output and error.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.state_directory.join("swtpm.out")).unwrap_or_default()
    }

    /// Returns swtpm's server socket.
    pub fn server_endpoint(&self) -> Endpoint {
        match &self.transport {
            Transport::Tcp { server, .. } => Endpoint::Tcp(*server),
            Transport::Unix { server, .. } => Endpoint::Unix(server.clone()),
        }
    }

    /// Returns swtpm's control socket.
    pub fn control_endpoint(&self) -> Endpoint {
        match &self.transport {
            Transport::Tcp { control, .. } => Endpoint::Tcp(*control),
            Transport::Unix { control, .. } => Endpoint::Unix(control.clone()),
        }
    }

    /// Returns the swtpm TCTI string that reaches this swtpm directly.
    pub fn tcti(&self) -> String {
        match &self.transport {
            Transport::Tcp { server, .. } => format!("swtpm:host={},port={}", server.ip(), server.port()),
            Transport::Unix { server, .. } => format!("swtpm:path={}", server.display()),
        }
    }

    /// Returns a proxy configuration that forwards to this swtpm and listens
    /// on free loopback TCP ports.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig::new(self.server_endpoint(), self.control_endpoint())
    }

    /// Returns the directory of swtpm's state and output.
    pub fn state_directory(&self) -> &Path {
        &self.state_directory
    }

    /// Returns swtpm's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_directory);
    }
}

/// Sends `request` and reads at least `expected` bytes of response, or
/// returns `None` on any failure.
fn exchange(endpoint: &Endpoint, request: &[u8], expected: usize) -> Option<Vec<u8>> {
    let timeout = Some(Duration::from_secs(2));
    let mut response = vec![0u8; expected];
    match endpoint {
        Endpoint::Tcp(address) => {
            let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(1)).ok()?;
            stream.set_read_timeout(timeout).ok()?;
            stream.write_all(request).ok()?;
            stream.read_exact(&mut response).ok()?;
        }
        Endpoint::Unix(path) => {
            let mut stream = UnixStream::connect(path).ok()?;
            stream.set_read_timeout(timeout).ok()?;
            stream.write_all(request).ok()?;
            stream.read_exact(&mut response).ok()?;
        }
    }
    Some(response)
}

/// Creates a new, empty directory under the system's temporary directory.
fn create_state_directory() -> Result<PathBuf, SwtpmError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut last_error = None;
    for _ in 0..16 {
        let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("imalog-swtpm-{}-{serial}-{nanos}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some((path, error)),
            Err(source) => return Err(SwtpmError::StateDirectory { path, source }),
        }
    }
    let (path, source) = last_error.unwrap_or_else(|| (std::env::temp_dir(), io::ErrorKind::AlreadyExists.into()));
    Err(SwtpmError::StateDirectory { path, source })
}

/// Finds a free loopback port whose successor is free too, and releases
/// both for swtpm to bind.
fn free_port_pair() -> io::Result<(SocketAddr, SocketAddr)> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for _ in 0..64 {
        let server = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let server_address = server.local_addr()?;
        let Some(control_port) = server_address.port().checked_add(1) else {
            continue;
        };
        let control_address = SocketAddr::new(ip, control_port);
        if TcpListener::bind(control_address).is_ok() {
            return Ok((server_address, control_address));
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "no two consecutive free ports in 64 attempts"))
}
