//! `TpmProxy` in front of swtpm: concurrent clients, clients that break off
//! or stall, oversize commands, the control channel, Unix sockets and
//! shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imalog_core::Bank;
use imalog_tpm::proxy::{ProxyConfig, ProxyError, TpmProxy, UnixListen, TPM_RC_COMMAND_SIZE};
use imalog_tpm::testing::{tool_for_test, Swtpm};
use imalog_tpm::{Tpm, TssTpm};

use crate::common::{
    assert_success, connect, event_chain, event_digests, parse_pcrread, proxy_control, proxy_server, read_response,
    response_code, run_tool_ok, send_command, start_proxy, wait_for, ScratchDirectory, GET_RANDOM,
};

/// Maximum number of extends the background thread makes, so the test ends
/// even if the reads never finish. The swtpm TCTI opens one TCP connection
/// per command, and each leaves a port in TIME_WAIT for a minute, so this
/// stays far below the 28,000 ports of Linux's default ephemeral range.
const MAX_EXTENDS: usize = 3_000;

#[test]
fn pcrread_during_extend_loop_is_consistent() {
    if !tool_for_test("tpm2_pcrread", "tpm2-tools") {
        return;
    }
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    let tcti = proxy.tcti().expect("TCP listener");
    let mut tpm = TssTpm::open(&tcti).expect("open swtpm through the proxy");
    let banks = tpm.banks();

    let stop = Arc::new(AtomicBool::new(false));
    let extends_done = Arc::new(AtomicUsize::new(0));
    let extender = {
        let stop = Arc::clone(&stop);
        let extends_done = Arc::clone(&extends_done);
        std::thread::spawn(move || {
            for event in 0..MAX_EXTENDS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tpm.extend(10, &event_digests(&banks, event)).expect("extend through the proxy");
                extends_done.store(event + 1, Ordering::Relaxed);
            }
        })
    };

    wait_for("the extender has started", || extends_done.load(Ordering::Relaxed) > 0);
    let scratch = ScratchDirectory::new("pcrread-loop");
    let mut reads = Vec::new();
    for _ in 0..12 {
        let output = run_tool_ok("tpm2_pcrread", &["sha1:10+sha256:10"], &tcti, &scratch.0);
        reads.push(parse_pcrread(&output));
    }
    stop.store(true, Ordering::Relaxed);
    extender.join().expect("the extender thread");

    let done = extends_done.load(Ordering::Relaxed);
    let sha1_chain = event_chain(&Bank::SHA1, done);
    let sha256_chain = event_chain(&Bank::SHA256, done);
    let mut positions = Vec::new();
    for read in &reads {
        let sha1 = read.get(&("sha1".to_string(), 10)).expect("sha1 PCR 10 in the output");
        let sha256 = read.get(&("sha256".to_string(), 10)).expect("sha256 PCR 10 in the output");
        let position = sha1_chain.iter().position(|value| value == sha1).expect("sha1 value is on the extend chain");
        // One TPM2_PCR_Read reads both banks, and one TPM2_PCR_Extend
        // extends both, so both values come from the same point in the chain.
        assert_eq!(*sha256, sha256_chain[position], "sha256 and sha1 read after different extends");
        positions.push(position);
    }
    assert!(positions.windows(2).all(|pair| pair[0] <= pair[1]), "PCR 10 went backwards: {positions:?}");
    assert!(positions.first() != positions.last(), "no extend happened between the reads: {positions:?}");
    assert_eq!(proxy.stats().upstream_errors, 0);
}

#[test]
fn client_disconnecting_mid_command_does_not_disturb_others() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    let mut tpm = TssTpm::open(&proxy.tcti().expect("TCP listener")).expect("open through the proxy");
    let banks = tpm.banks();

    // Half a header, then a whole header with only part of the body.
    let mut half_header = connect(proxy_server(&proxy));
    half_header.write_all(&GET_RANDOM[..5]).expect("send half a header");
    let mut half_body = connect(proxy_server(&proxy));
    let mut long_command = [0u8; 40];
    long_command[..10].copy_from_slice(&[0x80, 0x01, 0, 0, 0, 40, 0, 0, 0x01, 0x7e]);
    half_body.write_all(&long_command[..15]).expect("send a header and part of a body");

    tpm.extend(10, &event_digests(&banks, 0)).expect("extend while two commands hang");
    drop(half_header);
    drop(half_body);
    wait_for("the proxy has seen both aborts", || proxy.stats().aborted == 2);

    tpm.extend(10, &event_digests(&banks, 1)).expect("extend after the aborts");
    assert_eq!(tpm.read(&Bank::SHA256, 10).unwrap(), event_chain(&Bank::SHA256, 2)[2]);
    let mut client = connect(proxy_server(&proxy));
    assert_success(&send_command(&mut client, &GET_RANDOM));
    assert_eq!(proxy.stats().upstream_errors, 0);
}

#[test]
fn stalled_client_does_not_block_others() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let client_timeout = Duration::from_secs(3);
    let proxy = TpmProxy::start(ProxyConfig { client_timeout, ..swtpm.proxy_config() }).expect("start the proxy");
    let mut tpm = TssTpm::open(&proxy.tcti().expect("TCP listener")).expect("open through the proxy");
    let banks = tpm.banks();

    let mut stalled = connect(proxy_server(&proxy));
    stalled.write_all(&GET_RANDOM[..11]).expect("send all but the last byte");
    let start = Instant::now();
    for event in 0..20 {
        tpm.extend(10, &event_digests(&banks, event)).expect("extend while a client stalls");
    }
    assert!(start.elapsed() < client_timeout, "extends took {:?} while a client stalled", start.elapsed());
    assert_eq!(tpm.read(&Bank::SHA1, 10).unwrap(), event_chain(&Bank::SHA1, 20)[20]);

    // The proxy closes the stalled connection after the client timeout.
    let mut byte = [0u8; 1];
    assert_eq!(stalled.read(&mut byte).expect("read until the proxy closes"), 0);
    assert!(start.elapsed() >= client_timeout - Duration::from_millis(200), "closed after {:?}", start.elapsed());
    assert_eq!(proxy.stats().aborted, 1);
}

#[test]
fn oversize_command_is_rejected() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    assert_eq!(proxy.max_command_size(), 4096, "swtpm 0.7.1 reports 4096 bytes");

    // One byte over the maximum: the proxy reads and drops the body, so the
    // connection stays usable.
    let mut client = connect(proxy_server(&proxy));
    let mut oversize = vec![0u8; 4097];
    oversize[..10].copy_from_slice(&[0x80, 0x01, 0x00, 0x00, 0x10, 0x01, 0x00, 0x00, 0x01, 0x7b]);
    let response = send_command(&mut client, &oversize);
    assert_eq!(response.len(), 10);
    assert_eq!(response_code(&response), TPM_RC_COMMAND_SIZE);
    assert_success(&send_command(&mut client, &GET_RANDOM));

    // A size too large to drain, then one smaller than a header: the proxy
    // responds and closes the connection.
    for header in
        [[0x80, 0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x7b], [0x80, 0x01, 0, 0, 0, 5, 0, 0, 1, 0x7b]]
    {
        let mut client = connect(proxy_server(&proxy));
        client.write_all(&header).expect("send the header");
        let response = read_response(&mut client);
        assert_eq!(response_code(&response), TPM_RC_COMMAND_SIZE, "header {header:02x?}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("read until the proxy closes");
        assert!(rest.is_empty(), "unexpected bytes after the rejection: {rest:02x?}");
    }
    assert_eq!(proxy.stats().rejected, 3);

    let error = proxy.transmit(&oversize).unwrap_err();
    assert!(matches!(error, ProxyError::InvalidCommand(_)), "{error}");
    let response = proxy.transmit(&GET_RANDOM).expect("in-process transmit");
    assert_success(&response);
    assert_eq!(response.len(), 10 + 2 + 8);
}

/// Sends one control command on a connection of its own and reads its
/// response of `response_size` bytes.
fn control_exchange(proxy: &TpmProxy, request: &[u8], response_size: usize) -> Vec<u8> {
    let mut client = connect(proxy_control(proxy));
    client.write_all(request).expect("send the control command");
    let mut response = vec![0u8; response_size];
    client.read_exact(&mut response).expect("read the control response");
    response
}

#[test]
fn control_channel_answers_locality_and_forwards() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);

    assert_eq!(control_exchange(&proxy, &[0, 0, 0, 5, 0], 4), [0, 0, 0, 0], "CMD_SET_LOCALITY 0");
    assert_eq!(control_exchange(&proxy, &[0, 0, 0, 5, 3], 4), [0, 0, 0, 0x3d], "CMD_SET_LOCALITY 3");

    // CMD_GET_CAPABILITY returns swtpm's 64-bit capability mask.
    let mut direct = match swtpm.control_endpoint() {
        imalog_tpm::proxy::Endpoint::Tcp(address) => TcpStream::connect(address).expect("connect to swtpm"),
        other => panic!("expected a TCP control endpoint, got {other}"),
    };
    direct.write_all(&[0, 0, 0, 1]).expect("send CMD_GET_CAPABILITY");
    let mut expected = [0u8; 8];
    direct.read_exact(&mut expected).expect("read swtpm's capabilities");
    drop(direct);
    assert_eq!(control_exchange(&proxy, &[0, 0, 0, 1], 8), expected, "CMD_GET_CAPABILITY");

    // Several commands on one connection: CMD_GET_CONFIG, then
    // CMD_GET_TPMESTABLISHED.
    let mut client = connect(proxy_control(&proxy));
    client.write_all(&[0, 0, 0, 0x0f]).expect("send CMD_GET_CONFIG");
    let mut config = [0u8; 8];
    client.read_exact(&mut config).expect("read CMD_GET_CONFIG's response");
    assert_eq!(config[..4], [0, 0, 0, 0], "CMD_GET_CONFIG result");
    client.write_all(&[0, 0, 0, 0x04]).expect("send CMD_GET_TPMESTABLISHED");
    let mut established = [0u8; 8];
    client.read_exact(&mut established).expect("read CMD_GET_TPMESTABLISHED's response");
    assert_eq!(established[..4], [0, 0, 0, 0], "CMD_GET_TPMESTABLISHED result");

    // An unknown command gets TPM_BAD_ORDINAL, as from swtpm itself, and the
    // connection closes because the command's length is unknown.
    let mut client = connect(proxy_control(&proxy));
    client.write_all(&[0, 0, 0, 0x99]).expect("send an unknown control command");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("read until the proxy closes");
    assert_eq!(rest, [0, 0, 0, 0x0a]);

    let stats = proxy.stats();
    assert_eq!(stats.control_commands, 5, "{stats:?}");
    assert_eq!(stats.rejected, 1, "{stats:?}");
}

#[test]
fn proxy_serves_unix_sockets() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let socket = swtpm.state_directory().join("proxy.sock");
    let config = ProxyConfig { tcp: None, unix: Some(UnixListen::new(&socket)), ..swtpm.proxy_config() };
    let proxy = TpmProxy::start(config).expect("start the proxy on Unix sockets");
    assert!(proxy.tcp_addresses().is_none());
    let tcti = proxy.tcti().expect("Unix listener");
    assert_eq!(tcti, format!("swtpm:path={}", socket.display()));

    let mut client = UnixStream::connect(&socket).expect("connect to the proxy's Unix socket");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("set the read timeout");
    client.write_all(&GET_RANDOM).expect("send TPM2_GetRandom");
    let mut response = [0u8; 20];
    client.read_exact(&mut response).expect("read the response");
    assert_success(&response);
    drop(client);

    let mut tpm = TssTpm::open(&tcti).expect("open the proxy's Unix socket");
    tpm.extend(10, &event_digests(&tpm.banks(), 0)).expect("extend");
    assert_eq!(tpm.read(&Bank::SHA384, 10).unwrap(), event_chain(&Bank::SHA384, 1)[1]);
    drop(tpm);

    if tool_for_test("tpm2_pcrread", "tpm2-tools") {
        let scratch = ScratchDirectory::new("unix-pcrread");
        let output = run_tool_ok("tpm2_pcrread", &["sha384:10"], &tcti, &scratch.0);
        assert_eq!(parse_pcrread(&output)[&("sha384".to_string(), 10)], event_chain(&Bank::SHA384, 1)[1]);
    }

    proxy.shutdown();
    assert!(!socket.exists(), "shutdown removes the server socket");
    assert!(!UnixListen::new(&socket).control.exists(), "shutdown removes the control socket");
}

#[test]
fn proxy_rejects_socket_in_use() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let socket = swtpm.state_directory().join("in-use.sock");
    let listen = UnixListen::new(&socket);
    let config = ProxyConfig { tcp: None, unix: Some(listen.clone()), ..swtpm.proxy_config() };
    let first = TpmProxy::start(config.clone()).expect("start the first proxy");
    let error = TpmProxy::start(config.clone()).unwrap_err();
    assert!(matches!(error, ProxyError::SocketInUse(ref path) if *path == socket), "{error}");
    drop(first);

    // A socket file left behind with no listener is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).expect("bind a stale socket");
    drop(stale);
    assert!(socket.exists());
    let _second = TpmProxy::start(config).expect("start over a stale socket");
}

#[test]
fn proxy_rejects_non_loopback_listen_address() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let mut config = swtpm.proxy_config();
    if let Some(tcp) = config.tcp.as_mut() {
        tcp.ip = "0.0.0.0".parse().expect("an IP address");
    }
    let error = TpmProxy::start(config).unwrap_err();
    assert!(matches!(error, ProxyError::NotLoopback(_)), "{error}");
}

#[test]
fn proxy_shutdown_stops_listeners_and_idle_clients() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    let server = proxy_server(&proxy);
    let control = proxy_control(&proxy);
    assert_eq!(control.port(), server.port() + 1);

    let mut idle = connect(server);
    assert_success(&send_command(&mut idle, &GET_RANDOM));

    let start = Instant::now();
    proxy.shutdown();
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown took {:?}", start.elapsed());
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).expect("read after shutdown"), 0, "the idle client is disconnected");
    assert!(TcpStream::connect(server).is_err(), "the server port still accepts connections");
    assert!(TcpStream::connect(control).is_err(), "the control port still accepts connections");

    // swtpm itself is free again for a new proxy.
    let proxy = start_proxy(&swtpm);
    let mut client = connect(proxy_server(&proxy));
    assert_success(&send_command(&mut client, &GET_RANDOM));
}

#[test]
fn proxy_start_fails_without_tpm() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let config = swtpm.proxy_config();
    drop(swtpm);
    let error = TpmProxy::start(config).unwrap_err();
    assert!(matches!(error, ProxyError::Upstream(_)), "{error}");
}

#[test]
fn proxy_shutdown_after_socket_files_deleted() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let listen = UnixListen::new(swtpm.state_directory().join("deleted.sock"));
    let config = ProxyConfig { tcp: None, unix: Some(listen.clone()), ..swtpm.proxy_config() };
    let proxy = TpmProxy::start(config).expect("start the proxy on Unix sockets");
    std::fs::remove_file(&listen.server).expect("delete the server socket file");
    std::fs::remove_file(&listen.control).expect("delete the control socket file");

    // The wake-up connections fail, so shutdown gives up on the blocked
    // listener threads instead of waiting forever.
    let start = Instant::now();
    proxy.shutdown();
    assert!(start.elapsed() < Duration::from_secs(5), "shutdown took {:?}", start.elapsed());
}
