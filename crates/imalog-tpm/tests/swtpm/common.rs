//! Helpers shared by the swtpm tests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use imalog_core::{Bank, Digest};
use imalog_tpm::proxy::{TpmProxy, PROXY_RC_IO_ERROR};

/// Time one tpm2-tools run may take before the test counts it as blocked.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns the digest that the tests extend into `bank` as event `index`.
pub fn event_digest(bank: &Bank, index: usize) -> Digest {
    let algorithm = bank.tpm_algorithm().expect("test banks have known algorithms");
    algorithm.digest(format!("imalog-tpm test event {index}").as_bytes())
}

/// Returns one digest per bank for event `index`.
pub fn event_digests(banks: &[Bank], index: usize) -> Vec<Digest> {
    banks.iter().map(|bank| event_digest(bank, index)).collect()
}

/// PCR values of `bank` after extending events 0 to `count - 1` into a
/// PCR that started at zero: element `k` is the value after `k` events.
pub fn event_chain(bank: &Bank, count: usize) -> Vec<Digest> {
    let mut chain = vec![bank.reset_value()];
    for index in 0..count {
        let next = bank.extend(&chain[index], &event_digest(bank, index)).expect("known algorithm");
        chain.push(next);
    }
    chain
}

/// Starts a proxy in front of `swtpm` on free loopback TCP ports.
pub fn start_proxy(swtpm: &imalog_tpm::testing::Swtpm) -> TpmProxy {
    TpmProxy::start(swtpm.proxy_config()).expect("start the proxy")
}

/// Returns the proxy's TCP server address.
pub fn proxy_server(proxy: &TpmProxy) -> SocketAddr {
    proxy.tcp_addresses().expect("the proxy listens on TCP").0
}

/// Returns the proxy's TCP control address.
pub fn proxy_control(proxy: &TpmProxy) -> SocketAddr {
    proxy.tcp_addresses().expect("the proxy listens on TCP").1
}

/// Runs a tpm2-tools program with `TPM2TOOLS_TCTI=tcti` in `directory`,
/// and panics when it does not finish within [`TOOL_TIMEOUT`].
pub fn run_tool(program: &str, args: &[&str], tcti: &str, directory: &Path) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("TPM2TOOLS_TCTI", tcti)
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        if child.try_wait().expect("wait for the tool").is_some() {
            return child.wait_with_output().expect("collect the tool's output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect the tool's output");
            panic!(
                "{program} {args:?} blocked for more than {} s; stderr: {}",
                TOOL_TIMEOUT.as_secs(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a tool and panics with its stderr when it fails.
pub fn run_tool_ok(program: &str, args: &[&str], tcti: &str, directory: &Path) -> String {
    let output = run_tool(program, args, tcti, directory);
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("tool output is UTF-8")
}

/// Parses the PCR values that `tpm2_pcrread` and `tpm2_quote` print into
/// (bank name, PCR) -> value. Lines whose key is not a PCR index, such as
/// `quoted: ...`, are skipped.
pub fn parse_pcrread(output: &str) -> BTreeMap<(String, u32), Digest> {
    let mut values = BTreeMap::new();
    let mut bank = None;
    for line in output.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_suffix(':') {
            bank = Some(name.to_string());
            continue;
        }
        let Some((pcr, value)) = trimmed.split_once(':') else {
            continue;
        };
        let Ok(pcr) = pcr.trim().parse::<u32>() else {
            continue;
        };
        let bank = bank.clone().unwrap_or_else(|| panic!("PCR line before a bank line: {line}"));
        let value = Digest::from_hex(value.trim()).unwrap_or_else(|| panic!("invalid PCR value in: {line}"));
        values.insert((bank, pcr), value);
    }
    values
}

/// A fresh directory for tool files, removed on drop.
pub struct ScratchDirectory(pub std::path::PathBuf);

impl ScratchDirectory {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("imalog-tpm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the scratch directory");
        ScratchDirectory(path)
    }
}

impl Drop for ScratchDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TPM2_GetRandom of 8 bytes.
pub const GET_RANDOM: [u8; 12] = [0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x7b, 0x00, 0x08];

/// Connects to a proxy's server or control port with a read timeout.
pub fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect to the proxy");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set the read timeout");
    stream
}

/// Sends a TPM command and reads its whole response.
pub fn send_command(stream: &mut TcpStream, command: &[u8]) -> Vec<u8> {
    stream.write_all(command).expect("send the command");
    read_response(stream)
}

/// Reads one TPM response, whose header gives its size.
pub fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut response = vec![0u8; 10];
    stream.read_exact(&mut response).expect("read the response header");
    let size = u32::from_be_bytes(response[2..6].try_into().expect("4 bytes")) as usize;
    assert!((10..=4096).contains(&size), "response declares {size} bytes");
    response.resize(size, 0);
    stream.read_exact(&mut response[10..]).expect("read the response body");
    response
}

/// Returns the response code of a TPM response.
pub fn response_code(response: &[u8]) -> u32 {
    u32::from_be_bytes(response[6..10].try_into().expect("a response has a 10-byte header"))
}

/// Asserts that a response is a success, naming the proxy's I/O error
/// when that is what came back.
pub fn assert_success(response: &[u8]) {
    let code = response_code(response);
    assert_ne!(code, PROXY_RC_IO_ERROR, "the proxy could not reach the TPM");
    assert_eq!(code, 0, "TPM response code {code:#x}");
}

/// Waits up to 5 s for `condition`, which the proxy's client threads make
/// true asynchronously.
pub fn wait_for(description: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {description}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
