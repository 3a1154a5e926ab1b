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
//! Requests are limited to 8 KiB of head and GET only.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::service::{Collector, HistoryFormat, ServeError};

/// Largest request head accepted.
const MAX_HEAD: u64 = 8 * 1024;

/// A running HTTP server; dropping it stops accepting connections.
pub struct HttpServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `address` and serves `collector` on a thread per
    /// connection.
    pub fn start(address: &str, collector: Arc<Collector>) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = thread::Builder::new().name("imalog-http".into()).spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let collector = Arc::clone(&collector);
                        let _ = thread::Builder::new().name("imalog-http-client".into()).spawn(move || {
                            if let Err(error) = serve(stream, &collector) {
                                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                            }
                        });
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

fn serve(stream: TcpStream, collector: &Collector) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_HEAD));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut out = stream;
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
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn respond_json(out: &mut TcpStream, code: u16, body: &serde_json::Value) -> io::Result<()> {
    let text = body.to_string() + "\n";
    write!(
        out,
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        status_text(code),
        text.len()
    )?;
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
