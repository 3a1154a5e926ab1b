//! A TPM command proxy in the role of a resource manager: it keeps the one
//! connection to swtpm, which serves a single client connection at a time
//! (swtpm 0.7.1), and lets any number of local TSS clients share it.
//!
//! The proxy speaks swtpm's own protocol on loopback TCP and optionally on
//! Unix sockets, so tpm2-tools and tss-esapi connect with the swtpm TCTI
//! (`swtpm:host=127.0.0.1,port=P` or `swtpm:path=SOCKET`):
//!
//! - The server socket carries raw TPM 2.0 commands and responses. The proxy
//!   reads a whole command from a client (the 10-byte header gives its
//!   size), forwards it under a mutex, reads the whole response and returns
//!   it. Clients are served concurrently on threads of their own, but the
//!   TPM receives one whole command at a time. A client that stalls or
//!   disconnects inside a command never holds the mutex, because reading
//!   from clients happens outside it, and a partial command is never
//!   forwarded.
//! - The control socket (server port + 1, or the server path + `.ctrl`)
//!   carries swtpm control commands. The proxy responds to
//!   CMD_SET_LOCALITY itself and forwards the others to swtpm's control
//!   socket, also under the mutex.
//!
//! Commands larger than the TPM's maximum command size
//! (`TPM_PT_MAX_COMMAND_SIZE`, which the proxy asks the TPM for at start)
//! get a `TPM_RC_COMMAND_SIZE` response without reaching the TPM.
//!
//! NOTE: the proxy does not virtualize handles or sessions as
//! `/dev/tpmrm0` does. Clients share the TPM's object and session slots
//! (swtpm 0.7.1 has three object slots) and see each other's transient
//! handles, so a client should flush what it loads before it finishes.

mod session;
mod stream;
mod upstream;
mod wire;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use stream::Endpoint;
pub use upstream::UpstreamError;
pub use wire::{PROXY_RC_IO_ERROR, TPM_RC_COMMAND_SIZE};

use session::{Counters, Role, Shared, POLL_INTERVAL};
use stream::Stream;
use upstream::Upstream;

/// The maximum command size that the proxy assumes when the TPM does not
/// report one: swtpm 0.7.1's default.
pub const DEFAULT_MAX_COMMAND_SIZE: u32 = 4096;

/// Attempts at finding two free consecutive loopback ports.
const PORT_PAIR_ATTEMPTS: usize = 64;

/// Time the TPM has to respond to the proxy's first command.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a listener thread has to stop after the wake-up connection.
const ACCEPTOR_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// TCP listen addresses of a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListen {
    /// A loopback address. The proxy gives anyone who connects full use of
    /// the TPM, so other addresses are rejected.
    pub ip: IpAddr,
    /// The server port, or 0 for a free port.
    pub server_port: u16,
    /// The control port. `None` means `server_port + 1`, where the swtpm
    /// TCTI looks for it. `Some(0)` picks any free port.
    pub control_port: Option<u16>,
}

impl Default for TcpListen {
    /// Free ports on 127.0.0.1, the control port next to the server port.
    fn default() -> Self {
        TcpListen { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), server_port: 0, control_port: None }
    }
}

/// Unix socket paths of a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixListen {
    /// The server socket path.
    pub server: PathBuf,
    /// The control socket path.
    pub control: PathBuf,
}

impl UnixListen {
    /// Sockets at `server` and at `server` + `.ctrl`, where the swtpm TCTI
    /// looks for the control socket.
    pub fn new(server: impl Into<PathBuf>) -> Self {
        let server = server.into();
        let control = control_path(&server);
        UnixListen { server, control }
    }
}

/// Settings of a [`TpmProxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The TPM's server socket.
    pub upstream_server: Endpoint,
    /// The TPM's control socket.
    pub upstream_control: Endpoint,
    /// TCP listeners, or `None` for none.
    pub tcp: Option<TcpListen>,
    /// Unix socket listeners, or `None` for none.
    pub unix: Option<UnixListen>,
    /// Largest command accepted, in bytes. `None` queries the TPM's
    /// `TPM_PT_MAX_COMMAND_SIZE` and uses [`DEFAULT_MAX_COMMAND_SIZE`] when
    /// the TPM does not report it.
    pub max_command_size: Option<u32>,
    /// Time a client has to send a whole message once it has started one;
    /// also the time allowed to write a response to a client.
    pub client_timeout: Duration,
    /// Time allowed for the TPM's response to one command. Key generation
    /// can take seconds, so this is generous.
    pub upstream_timeout: Duration,
    /// Most client connections served at once. Further connections wait in
    /// the listen backlog until one closes.
    pub max_clients: usize,
}

impl ProxyConfig {
    /// Forwards to swtpm listening on TCP at `host`, with the server on
    /// `server_port` and the control channel on `server_port + 1`. The proxy
    /// listens on free loopback TCP ports.
    pub fn swtpm_tcp(host: IpAddr, server_port: u16) -> Self {
        let control_port = server_port.wrapping_add(1);
        Self::new(Endpoint::Tcp(SocketAddr::new(host, server_port)), Endpoint::Tcp(SocketAddr::new(host, control_port)))
    }

    /// Forwards to swtpm listening on the Unix socket `server`, with the
    /// control channel at `server` + `.ctrl`. The proxy listens on free
    /// loopback TCP ports.
    pub fn swtpm_unix(server: impl Into<PathBuf>) -> Self {
        let server = server.into();
        let control = control_path(&server);
        Self::new(Endpoint::Unix(server), Endpoint::Unix(control))
    }

    /// Forwards to the given server and control sockets, listening on free
    /// loopback TCP ports.
    pub fn new(upstream_server: Endpoint, upstream_control: Endpoint) -> Self {
        ProxyConfig {
            upstream_server,
            upstream_control,
            tcp: Some(TcpListen::default()),
            unix: None,
            max_command_size: None,
            client_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(120),
            max_clients: 64,
        }
    }
}

/// A failure to start the proxy or to send a command through it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listen address is not a loopback address.
    #[error("cannot listen on {0}: the proxy listens on loopback addresses only (127.0.0.0/8 or ::1)")]
    NotLoopback(IpAddr),
    /// Binding a listener failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        /// The address or path.
        endpoint: Endpoint,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No two consecutive free ports were found.
    #[error("found no two free consecutive loopback ports in {attempts} attempts; set the ports explicitly")]
    NoFreePortPair {
        /// Attempts made.
        attempts: usize,
    },
    /// A Unix socket path is in use by a live listener.
    #[error("Unix socket {0} is in use; stop its owner or choose another path")]
    SocketInUse(PathBuf),
    /// The TPM could not be reached, or its response was invalid.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A command given to [`TpmProxy::transmit`] is malformed or too large.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// A thread could not be started.
    #[error("cannot start a proxy thread: {0}")]
    Thread(#[source] io::Error),
}

/// Counts of what the proxy has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// TPM commands forwarded, counting those that got the proxy's error
    /// response because the TPM could not be reached.
    pub commands: u64,
    /// Control commands that got a response.
    pub control_commands: u64,
    /// Commands and control commands rejected without reaching the TPM.
    pub rejected: u64,
    /// Client messages cut off by a disconnect or a stall.
    pub aborted: u64,
    /// Failed exchanges with the TPM.
    pub upstream_errors: u64,
}

/// A running proxy. Dropping it, or [`TpmProxy::shutdown`], stops the
/// listeners, waits for the client threads and removes the Unix sockets.
pub struct TpmProxy {
    shared: Arc<Shared>,
    clients: Arc<Clients>,
    acceptors: Vec<JoinHandle<()>>,
    /// Listen addresses of the acceptor threads, to wake them at shutdown.
    listen_endpoints: Vec<Endpoint>,
    tcp: Option<(SocketAddr, SocketAddr)>,
    unix: Option<UnixListen>,
    stopped: bool,
}

impl TpmProxy {
    /// Binds the listeners, queries the TPM's maximum command size unless
    /// the configuration sets it, and starts serving.
    pub fn start(config: ProxyConfig) -> Result<TpmProxy, ProxyError> {
        if let Some(tcp) = &config.tcp {
            if !tcp.ip.is_loopback() {
                return Err(ProxyError::NotLoopback(tcp.ip));
            }
        }

        // Binding first reports a taken port or socket without touching the
        // TPM. Clients that connect meanwhile wait in the listen backlog.
        let mut listeners = Vec::new();
        let tcp = match &config.tcp {
            Some(tcp) => {
                let (server, control) = bind_tcp_pair(tcp)?;
                let addresses = (local_address(&server)?, local_address(&control)?);
                listeners.push((Listener::Tcp(server), Role::Server));
                listeners.push((Listener::Tcp(control), Role::Control));
                Some(addresses)
            }
            None => None,
        };
        let mut socket_files = SocketFiles(Vec::new());
        let unix = match &config.unix {
            Some(unix) => {
                listeners.push((Listener::Unix(bind_unix(&unix.server)?), Role::Server));
                socket_files.0.push(unix.server.clone());
                listeners.push((Listener::Unix(bind_unix(&unix.control)?), Role::Control));
                socket_files.0.push(unix.control.clone());
                Some(unix.clone())
            }
            None => None,
        };

        let upstream = Upstream::new(config.upstream_server, config.upstream_control, config.upstream_timeout);
        let max_command_size = match config.max_command_size {
            Some(size) => size,
            None => query_max_command_size(&upstream)?,
        };
        // From here on the proxy's own shutdown removes the sockets.
        socket_files.0.clear();

        let shared = Arc::new(Shared {
            upstream,
            stop: AtomicBool::new(false),
            max_command_size,
            client_timeout: config.client_timeout,
            counters: Counters::default(),
        });
        let clients = Arc::new(Clients::new(config.max_clients.max(1)));
        let mut proxy = TpmProxy {
            shared,
            clients,
            acceptors: Vec::new(),
            listen_endpoints: Vec::new(),
            tcp,
            unix,
            stopped: false,
        };

        for (listener, role) in listeners {
            let endpoint = listener.endpoint();
            let shared = Arc::clone(&proxy.shared);
            let clients = Arc::clone(&proxy.clients);
            let spawned = std::thread::Builder::new()
                .name(format!("tpm-proxy-accept-{role:?}").to_lowercase())
                .spawn(move || accept_loop(&shared, &clients, &listener, role));
            match spawned {
                Ok(handle) => {
                    proxy.acceptors.push(handle);
                    proxy.listen_endpoints.push(endpoint);
                }
                // Dropping the proxy stops the acceptors already started.
                Err(error) => return Err(ProxyError::Thread(error)),
            }
        }

        tracing::info!(
            tpm = %proxy.shared.upstream.server(),
            tpm_control = %proxy.shared.upstream.control(),
            listen = ?proxy.listen_endpoints,
            max_command_size,
            "TPM proxy started"
        );
        Ok(proxy)
    }

    /// Returns the TCP server and control addresses, if the proxy listens on
    /// TCP.
    pub fn tcp_addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.tcp
    }

    /// Returns the Unix server and control socket paths, if the proxy
    /// listens on Unix sockets.
    pub fn unix_paths(&self) -> Option<&UnixListen> {
        self.unix.as_ref()
    }

    /// Returns a configuration string for the swtpm TCTI of tpm2-tss that
    /// reaches this proxy: TCP when the proxy listens on TCP with the
    /// control port next to the server port, else the Unix socket.
    pub fn tcti(&self) -> Option<String> {
        if let Some((server, control)) = self.tcp {
            if u32::from(control.port()) == u32::from(server.port()) + 1 {
                return Some(format!("swtpm:host={},port={}", server.ip(), server.port()));
            }
        }
        let unix = self.unix.as_ref()?;
        (unix.control == control_path(&unix.server)).then(|| format!("swtpm:path={}", unix.server.display()))
    }

    /// Returns the largest command the proxy forwards, in bytes.
    pub fn max_command_size(&self) -> u32 {
        self.shared.max_command_size
    }

    /// Counts of what the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        let counters = &self.shared.counters;
        ProxyStats {
            commands: counters.commands.load(Ordering::Relaxed),
            control_commands: counters.control_commands.load(Ordering::Relaxed),
            rejected: counters.rejected.load(Ordering::Relaxed),
            aborted: counters.aborted.load(Ordering::Relaxed),
            upstream_errors: counters.upstream_errors.load(Ordering::Relaxed),
        }
    }

    /// Sends one whole TPM command from this process, serialized with the
    /// clients' commands, and returns the TPM's whole response.
    pub fn transmit(&self, command: &[u8]) -> Result<Vec<u8>, ProxyError> {
        let header: &[u8; wire::HEADER_SIZE] = command
            .get(..wire::HEADER_SIZE)
            .and_then(|header| header.try_into().ok())
            .ok_or_else(|| ProxyError::InvalidCommand(format!("{} bytes is shorter than a header", command.len())))?;
        let declared = wire::declared_size(header) as usize;
        if declared != command.len() {
            let message = format!("header declares {declared} bytes, but the command has {}", command.len());
            return Err(ProxyError::InvalidCommand(message));
        }
        if declared > self.shared.max_command_size as usize {
            let message = format!("{declared} bytes exceeds the TPM's maximum of {}", self.shared.max_command_size);
            return Err(ProxyError::InvalidCommand(message));
        }
        Ok(self.shared.upstream.transmit(command)?)
    }

    /// Stops the listeners, waits for the client threads to finish and
    /// removes the Unix sockets. A client in the middle of a TPM command
    /// gets its response first.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stop.store(true, Ordering::SeqCst);
        self.clients.slot_freed.notify_all();

        // A blocking accept returns only for a connection, so connect to
        // each listener once.
        for endpoint in &self.listen_endpoints {
            let _ = Stream::connect(endpoint, Duration::from_secs(1));
        }
        let deadline = Instant::now() + ACCEPTOR_STOP_TIMEOUT;
        for acceptor in self.acceptors.drain(..) {
            while !acceptor.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if acceptor.is_finished() {
                let _ = acceptor.join();
            } else {
                // Only a failed wake-up connection, for example to a Unix
                // socket whose file was deleted, leaves accept() blocked.
                tracing::warn!("a listener thread did not stop; leaving it blocked in accept()");
            }
        }
        let handles = std::mem::take(&mut self.clients.lock().handles);
        for handle in handles {
            let _ = handle.join();
        }
        if let Some(unix) = &self.unix {
            let _ = std::fs::remove_file(&unix.server);
            let _ = std::fs::remove_file(&unix.control);
        }
        tracing::info!(tpm = %self.shared.upstream.server(), stats = ?self.stats(), "TPM proxy stopped");
    }
}

impl Drop for TpmProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for TpmProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmProxy")
            .field("tpm", self.shared.upstream.server())
            .field("listen", &self.listen_endpoints)
            .field("max_command_size", &self.shared.max_command_size)
            .finish_non_exhaustive()
    }
}

fn control_path(server: &Path) -> PathBuf {
    let mut control = server.as_os_str().to_owned();
    control.push(".ctrl");
    PathBuf::from(control)
}

/// Removes Unix sockets when starting the proxy fails after binding them.
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Queries the TPM's maximum command size, waiting at most
/// [`STARTUP_TIMEOUT`]. swtpm 0.7.1 accepts a second connection but serves it
/// only after the first closes. Without the short bound, a proxy started
/// while another client uses swtpm would wait for the whole upstream timeout.
fn query_max_command_size(upstream: &Upstream) -> Result<u32, ProxyError> {
    let response = upstream.transmit_within(&wire::GET_MAX_SIZES_COMMAND, STARTUP_TIMEOUT).inspect_err(|error| {
        if stream::is_timeout(&error.source) {
            tracing::warn!(
                tpm = %upstream.server(),
                timeout_s = STARTUP_TIMEOUT.as_secs(),
                "the TPM did not respond; another client may be using swtpm's only connection"
            );
        }
    })?;
    match wire::parse_max_command_size(&response) {
        Some(size) => Ok(size),
        None => {
            let response_code = wire::header_code(&response);
            tracing::warn!(
                tpm = %upstream.server(),
                response_code,
                default = DEFAULT_MAX_COMMAND_SIZE,
                "the TPM did not report TPM_PT_MAX_COMMAND_SIZE; using the default"
            );
            Ok(DEFAULT_MAX_COMMAND_SIZE)
        }
    }
}

fn local_address(listener: &TcpListener) -> Result<SocketAddr, ProxyError> {
    listener.local_addr().map_err(|source| ProxyError::Listen {
        endpoint: Endpoint::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        source,
    })
}

fn bind_tcp(ip: IpAddr, port: u16) -> Result<TcpListener, ProxyError> {
    let address = SocketAddr::new(ip, port);
    TcpListener::bind(address).map_err(|source| ProxyError::Listen { endpoint: Endpoint::Tcp(address), source })
}

/// Binds the server and control listeners. With server port 0 and no
/// control port, it looks for a free port whose successor is free too.
fn bind_tcp_pair(tcp: &TcpListen) -> Result<(TcpListener, TcpListener), ProxyError> {
    if tcp.server_port != 0 || tcp.control_port.is_some() {
        let server = bind_tcp(tcp.ip, tcp.server_port)?;
        let control_port = match tcp.control_port {
            Some(port) => port,
            None => tcp.server_port.checked_add(1).ok_or_else(|| ProxyError::Listen {
                endpoint: Endpoint::Tcp(SocketAddr::new(tcp.ip, tcp.server_port)),
                source: io::Error::new(io::ErrorKind::InvalidInput, "server port 65535 leaves no control port"),
            })?,
        };
        let control = bind_tcp(tcp.ip, control_port)?;
        return Ok((server, control));
    }

    for _ in 0..PORT_PAIR_ATTEMPTS {
        let server = bind_tcp(tcp.ip, 0)?;
        let Some(control_port) = local_address(&server)?.port().checked_add(1) else {
            continue;
        };
        if let Ok(control) = bind_tcp(tcp.ip, control_port) {
            return Ok((server, control));
        }
    }
    Err(ProxyError::NoFreePortPair { attempts: PORT_PAIR_ATTEMPTS })
}

/// Binds a Unix socket, replacing a stale socket file that no process
/// listens on.
fn bind_unix(path: &Path) -> Result<UnixListener, ProxyError> {
    if path.exists() {
        if !stream::is_stale_socket(path) {
            return Err(ProxyError::SocketInUse(path.to_path_buf()));
        }
        tracing::info!(path = %path.display(), "removing a stale Unix socket");
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path)
        .map_err(|source| ProxyError::Listen { endpoint: Endpoint::Unix(path.to_path_buf()), source })
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(listener) => Stream::from_tcp(listener.accept()?.0),
            Listener::Unix(listener) => Ok(Stream::Unix(listener.accept()?.0)),
        }
    }

    /// Returns the address that reaches this listener. That is the bound
    /// address, because the proxy binds no wildcard addresses.
    fn endpoint(&self) -> Endpoint {
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(address) => Endpoint::Tcp(address),
                Err(_) => Endpoint::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
            },
            Listener::Unix(listener) => {
                let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
                Endpoint::Unix(path.unwrap_or_default())
            }
        }
    }
}

/// The client threads and the count of client slots in use.
struct Clients {
    state: Mutex<ClientState>,
    slot_freed: Condvar,
    max: usize,
    next_id: AtomicU64,
}

struct ClientState {
    active: usize,
    handles: Vec<JoinHandle<()>>,
}

impl Clients {
    fn new(max: usize) -> Self {
        Clients {
            state: Mutex::new(ClientState { active: 0, handles: Vec::new() }),
            slot_freed: Condvar::new(),
            max,
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        // The state stays consistent even if a thread panicked holding it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a client slot, waiting while all are in use. Returns false
    /// when the proxy stops.
    fn acquire(&self, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            if state.active < self.max {
                state.active += 1;
                return true;
            }
            state = match self.slot_freed.wait_timeout(state, POLL_INTERVAL) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    fn release(&self) {
        self.lock().active -= 1;
        self.slot_freed.notify_one();
    }
}

/// Gives a client slot back when a client thread ends, or when starting the
/// thread fails and the closure holding it is dropped.
struct SlotGuard(Arc<Clients>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn accept_loop(shared: &Arc<Shared>, clients: &Arc<Clients>, listener: &Listener, role: Role) {
    let mut accept_failures = 0u64;
    while clients.acquire(&shared.stop) {
        let slot = SlotGuard(Arc::clone(clients));
        let stream = match listener.accept() {
            Ok(stream) => stream,
            Err(error) => {
                drop(slot);
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    tracing::warn!(?role, count = accept_failures, %error, "accepting a client failed");
                }
                // Errors such as EMFILE persist for a while; do not spin.
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }

        let client = clients.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client, ?role, "client connected");
        let thread_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new().name(format!("tpm-proxy-client-{client}")).spawn(move || {
            let _slot = slot;
            session::serve(&thread_shared, stream, role, client);
            tracing::debug!(client, "client connection closed");
        });
        match spawned {
            Ok(handle) => {
                let mut state = clients.lock();
                state.handles.retain(|handle| !handle.is_finished());
                state.handles.push(handle);
            }
            Err(error) => tracing::warn!(client, %error, "cannot start a client thread; closing the connection"),
        }
    }
}
