//! A small HTTP/1.1 server for the collector's API, on std sockets:
//!
//! - `GET /v1/records?from=I[&format=binary|ascii]` streams the history from
//!   absolute index I (chunked transfer encoding). The header
//!   `X-Imalog-Epoch` names the epoch and `X-Imalog-From` the first index.
//! - `GET /v1/quote?nonce=HEX&pcrs=10[,11...]` returns a TPM quote over
//!   those PCRs in every bank, taken before the lists are read, with the
//!   absolute index of the last record present after it.
//! - `GET /v1/status` returns the epoch, the next stored index and the
//!   flavour.
//!
//! One request per connection; the connection closes after the response.
//! GET only. [`HttpLimits`] bounds what one client can hold: the size of
//! the request head and the time to send it, the time a write may block,
//! and the number of connections served at once.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::service::{Collector, HistoryFormat, ServeError};

/// Limits on what one client may hold on the server.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Time allowed for the whole request head to arrive.
    pub head_timeout: Duration,
    /// Time one write of the response may block on a client that does not
    /// read.
    pub write_timeout: Duration,
    /// Connections served at once; more get status 503 and are closed.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_connections: 32,
        }
    }
}

/// A running HTTP server; dropping it stops accepting connections.
pub struct HttpServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Counts a connection as open until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HttpServer {
    /// Listens on `address` and serves `collector` on a thread per
    /// connection, with the default limits.
    pub fn start(address: &str, collector: Arc<Collector>) -> io::Result<HttpServer> {
        HttpServer::start_with(address, collector, HttpLimits::default())
    }

    /// Listens on `address` and serves `collector` within `limits`.
    pub fn start_with(address: &str, collector: Arc<Collector>, limits: HttpLimits) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let open = Arc::new(AtomicUsize::new(0));
        let thread = thread::Builder::new().name("imalog-http".into()).spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
                            let _slot = Slot(Arc::clone(&open));
                            tracing::warn!(%peer, limit = limits.max_connections, "HTTP connection rejected: too many open connections");
                            let _ = reject_connection(stream, limits.max_connections);
                            continue;
                        }
                        let slot = Slot(Arc::clone(&open));
                        let collector = Arc::clone(&collector);
                        let spawned = thread::Builder::new().name("imalog-http-client".into()).spawn(move || {
                            let _slot = slot;
                            if let Err(error) = serve(stream, &collector, &limits) {
                                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                            }
                        });
                        if let Err(error) = spawned {
                            tracing::warn!(%peer, %error, "cannot start a thread for an HTTP connection");
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "HTTP accept failed");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        tracing::info!(%address, "HTTP API listening");
        Ok(HttpServer { address, stop, thread: Some(thread) })
    }

    /// The address actually bound (useful with port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Rejects a connection over the limit with status 503, without reading
/// its request.
fn reject_connection(mut stream: TcpStream, limit: usize) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    respond_json(
        &mut stream,
        503,
        &json!({"error": format!("the collector already serves {limit} connections; try again later")}),
    )
}

/// Reads from a socket until a deadline: each read waits at most for the
/// time left, so a client that sends one byte at a time cannot hold the
/// connection longer than the deadline.
struct DeadlineReader {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the request head did not arrive in time"));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buffer)
    }
}

/// A failure to read a request head.
enum HeadError {
    TooLarge,
    Io(io::Error),
}

/// Reads the request line and skips the headers, within `limits`.
fn read_head(stream: &TcpStream, limits: &HttpLimits) -> Result<String, HeadError> {
    let clone = stream.try_clone().map_err(HeadError::Io)?;
    let deadline = Instant::now() + limits.head_timeout;
    let mut reader = BufReader::new(DeadlineReader { stream: clone, deadline }.take(limits.max_head as u64 + 1));
    let mut request_line = String::new();
    let mut total = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(HeadError::Io)?;
        total += read;
        if total > limits.max_head {
            return Err(HeadError::TooLarge);
        }
        if read == 0 || !line.ends_with('\n') {
            return Err(HeadError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the request head ended early")));
        }
        if request_line.is_empty() {
            request_line = std::mem::take(&mut line);
        } else if line == "\r\n" || line == "\n" {
            return Ok(request_line);
        }
    }
}

fn serve(stream: TcpStream, collector: &Collector, limits: &HttpLimits) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let mut out = stream;
    let request_line = match read_head(&out, limits) {
        Ok(line) => line,
        Err(HeadError::TooLarge) => {
            let message = format!("the request head is larger than {} bytes", limits.max_head);
            return respond_json(&mut out, 431, &json!({ "error": message }));
        }
        Err(HeadError::Io(error)) => return Err(error),
    };
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond_json(&mut out, 405, &json!({"error": format!("method {method} is not allowed; use GET")}));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parameter = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, v)| v.to_string())
    };
    match path {
        "/v1/records" => {
            let from = match parameter("from").map(|v| v.parse::<u64>()) {
                None => 0,
                Some(Ok(from)) => from,
                Some(Err(_)) => {
                    return respond_json(
                        &mut out,
                        400,
                        &json!({"error": "from must be a record index (a whole number)"}),
                    )
                }
            };
            let format = match parameter("format").as_deref() {
                None | Some("binary") => HistoryFormat::Binary,
                Some("ascii") => HistoryFormat::Ascii,
                Some(other) => {
                    return respond_json(
                        &mut out,
                        400,
                        &json!({"error": format!("format {other:?}: expected binary or ascii")}),
                    )
                }
            };
            records(&mut out, collector, from, format)
        }
        "/v1/quote" => {
            let nonce = match parameter("nonce").map(|v| imalog_core::hex::decode(v.as_bytes())) {
                Some(Ok(nonce)) if !nonce.is_empty() && nonce.len() <= 64 => nonce,
                _ => return respond_json(&mut out, 400, &json!({"error": "nonce must be 1 to 64 bytes of hex"})),
            };
            let pcrs: Result<Vec<u32>, _> =
                parameter("pcrs").unwrap_or_else(|| "10".into()).split(',').map(|p| p.parse::<u32>()).collect();
            let pcrs = match pcrs {
                Ok(pcrs) if pcrs.iter().all(|p| *p < 24) && !pcrs.is_empty() => pcrs,
                _ => {
                    return respond_json(
                        &mut out,
                        400,
                        &json!({"error": "pcrs must be a comma-separated list of 0 to 23"}),
                    )
                }
            };
            match collector.quote(&nonce, &pcrs) {
                Ok((quote, last_index)) => {
                    let mut banks = serde_json::Map::new();
                    for (bank, pcr, value) in &quote.pcrs {
                        let entry = banks.entry(bank.to_string()).or_insert_with(|| json!({}));
                        entry[pcr.to_string()] = json!(value.to_hex());
                    }
                    let (epoch, _, _) = collector.status();
                    respond_json(
                        &mut out,
                        200,
                        &json!({
                            "attest": imalog_core::hex::encode(&quote.attest),
                            "signature": imalog_core::hex::encode(&quote.signature),
                            "ak_public": imalog_core::hex::encode(&quote.ak_public),
                            "pcrs": banks,
                            "last_index": last_index,
                            "epoch": epoch,
                        }),
                    )
                }
                Err(error) => respond_json(&mut out, 503, &json!({"error": error.to_string()})),
            }
        }
        "/v1/status" => {
            let (epoch, next_index, flavor) = collector.status();
            respond_json(
                &mut out,
                200,
                &json!({
                    "epoch": epoch,
                    "stored": next_index,
                    "flavor": flavor.to_string(),
                    "byte_order": collector.byte_order().to_string(),
                }),
            )
        }
        _ => respond_json(&mut out, 404, &json!({"error": format!("no resource {path}")})),
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn respond_json(out: &mut TcpStream, code: u16, body: &serde_json::Value) -> io::Result<()> {
    let text = body.to_string() + "\n";
    let response = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        status_text(code),
        text.len()
    );
    out.write_all(response.as_bytes())?;
    out.flush()
}

/// Chunked transfer encoding over a stream, so that a history of unknown
/// length needs no buffering.
struct Chunked<'a> {
    out: &'a mut TcpStream,
    buffer: Vec<u8>,
}

impl Chunked<'_> {
    fn send(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            write!(self.out, "{:x}\r\n", self.buffer.len())?;
            self.out.write_all(&self.buffer)?;
            self.out.write_all(b"\r\n")?;
            self.buffer.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= 64 * 1024 {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

fn records(out: &mut TcpStream, collector: &Collector, from: u64, format: HistoryFormat) -> io::Result<()> {
    let (epoch, _, _) = collector.status();
    let byte_order = collector.byte_order();
    let content_type = match format {
        HistoryFormat::Binary => "application/octet-stream",
        HistoryFormat::Ascii => "text/plain; charset=utf-8",
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nX-Imalog-Epoch: {epoch}\r\n\
         X-Imalog-From: {from}\r\nX-Imalog-Byte-Order: {byte_order}\r\nConnection: close\r\n\r\n"
    )?;
    let mut chunked = Chunked { out, buffer: Vec::with_capacity(64 * 1024) };
    match collector.write_history(from, format, &mut chunked) {
        Ok(end) => {
            tracing::debug!(from, end, "history served");
            chunked.finish()
        }
        Err(ServeError::Client(error)) => Err(error),
        Err(error) => {
            // The status line is out; end the body early so that the client
            // sees a truncated transfer rather than a complete history.
            tracing::error!(from, %error, "serving history failed");
            Err(io::Error::other(error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Exporter, Flavor, Securityfs, Store};

    /// Starts a server over an empty read-only list, with `limits`.
    fn server(limits: HttpLimits) -> (tempfile::TempDir, HttpServer) {
        let dir = tempfile::tempdir().unwrap();
        let ima = dir.path().join("ima");
        std::fs::create_dir(&ima).unwrap();
        std::fs::write(ima.join(crate::securityfs::BINARY_LIST), b"").unwrap();
        let fs = Securityfs::new(&ima).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let exporter = Exporter::new(fs, store, Flavor::ReadOnly, Box::new(|| None)).unwrap();
        let server = HttpServer::start_with("127.0.0.1:0", Arc::new(Collector::new(exporter, None)), limits).unwrap();
        (dir, server)
    }

    fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(request);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    #[test]
    fn status_returns_epoch_and_flavor() {
        let (_dir, server) = server(HttpLimits::default());
        let response = exchange(server.address(), b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.ends_with("{\"byte_order\":\"le\",\"epoch\":1,\"flavor\":\"read-only\",\"stored\":0}\n"),
            "{response}"
        );
    }

    #[test]
    fn head_over_limit_gets_431() {
        let limits = HttpLimits { max_head: 256, ..HttpLimits::default() };
        let (_dir, server) = server(limits);
        let mut request = b"GET /v1/status HTTP/1.1\r\nX-Filler: ".to_vec();
        request.resize(300, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let response = exchange(server.address(), &request);
        assert!(response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{response}");
        assert!(response.contains("larger than 256 bytes"), "{response}");
    }

    #[test]
    fn head_deadline_cuts_slow_client() {
        let limits = HttpLimits { head_timeout: Duration::from_millis(300), ..HttpLimits::default() };
        let (_dir, server) = server(limits);
        let mut stream = TcpStream::connect(server.address()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        // One byte every 100 ms: each read arrives within any per-read
        // timeout, so only the deadline for the whole head ends it.
        for byte in b"GET /v1/status HTTP/1.1\r\n" {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        assert!(response.is_empty(), "{}", String::from_utf8_lossy(&response));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn connections_over_limit_get_503() {
        let limits = HttpLimits { max_connections: 2, ..HttpLimits::default() };
        let (_dir, server) = server(limits);
        // Two clients that never finish their request hold both slots.
        let occupied: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.address()).unwrap()).collect();
        thread::sleep(Duration::from_millis(200));
        let response = exchange(server.address(), b"GET /v1/status HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{response}");
        assert!(response.contains("already serves 2 connections"), "{response}");
        drop(occupied);
        // The slots are released once the occupying connections end.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let response = exchange(server.address(), b"GET /v1/status HTTP/1.1\r\n\r\n");
            if response.starts_with("HTTP/1.1 200 OK\r\n") {
                break;
            }
            assert!(Instant::now() < deadline, "slots were not released: {response}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn bad_requests_get_precise_errors() {
        let (_dir, server) = server(HttpLimits::default());
        let cases: [(&[u8], &str, &str); 6] = [
            (b"POST /v1/status HTTP/1.1\r\n\r\n", "405", "method POST is not allowed; use GET"),
            (b"GET /v1/records?from=-1 HTTP/1.1\r\n\r\n", "400", "from must be a record index"),
            (b"GET /v1/records?format=pem HTTP/1.1\r\n\r\n", "400", "format \\\"pem\\\": expected binary or ascii"),
            (b"GET /v1/quote?nonce=zz HTTP/1.1\r\n\r\n", "400", "nonce must be 1 to 64 bytes of hex"),
            (
                b"GET /v1/quote?nonce=00&pcrs=24 HTTP/1.1\r\n\r\n",
                "400",
                "pcrs must be a comma-separated list of 0 to 23",
            ),
            (b"GET /v2/x HTTP/1.1\r\n\r\n", "404", "no resource /v2/x"),
        ];
        for (request, code, message) in cases {
            let response = exchange(server.address(), request);
            assert!(response.starts_with(&format!("HTTP/1.1 {code} ")), "{response}");
            assert!(response.contains(message), "{response}");
        }
        // Bytes that are not text end the connection without a response.
        assert_eq!(exchange(server.address(), b"\xff\xfe\r\n\r\n"), "");
    }
}
