//! A small HTTP/1.1 client for the collector's API, on std sockets: quotes
//! as JSON, history as a streamed binary list (chunked transfer encoding).
//!
//! The collector runs on the attested machine, so its responses are hostile
//! input: the response head, a JSON body and a chunk-size line each have a
//! size limit, every read waits at most [`Timeouts::read`], and a whole
//! request ends at [`Timeouts::request`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use imalog_core::{Bank, ByteOrder, Digest};

use crate::attest::QuoteMaterial;

/// A failed request to the collector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error("invalid collector URL {0:?}: expected http://HOST:PORT")]
    Url(String),
    /// The connection or transfer failed.
    #[error("{url}: {source}")]
    Io {
        /// The request URL.
        url: String,
        /// The cause.
        source: io::Error,
    },
    /// The collector answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
        /// The error text the collector sent.
        message: String,
    },
    /// The response is not what the API defines.
    #[error("{url}: invalid response: {message}")]
    Invalid {
        /// The request URL.
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// Largest response head (status line and headers).
const MAX_HEAD: u64 = 16 * 1024;
/// Largest JSON body (a quote is a few KiB).
const MAX_JSON: u64 = 1024 * 1024;
/// Largest error text kept from an error response.
const MAX_ERROR: u64 = 64 * 1024;
/// Maximum length of a chunk-size line (hex size, extensions, CRLF).
const MAX_CHUNK_LINE: u64 = 256;

/// How long the client waits for the collector.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Maximum wait for any one read or for the connection.
    pub read: Duration,
    /// Maximum time for a whole request, body included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { read: Duration::from_secs(60), request: Duration::from_secs(600) }
    }
}

/// The collector of one machine.
#[derive(Clone, Debug)]
pub struct CollectorClient {
    base: String,
    address: String,
    timeouts: Timeouts,
}

/// A socket whose reads end at a deadline.
struct TimedStream {
    stream: TcpStream,
    read: Duration,
    deadline: Instant,
}

impl Read for TimedStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the request took longer than its time limit"));
        }
        self.stream.set_read_timeout(Some(left.min(self.read)))?;
        self.stream.read(buffer)
    }
}

/// Reads one line of at most `limit` bytes; a longer line is an error.
fn read_limited_line(reader: &mut impl BufRead, limit: u64, item: &str) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(limit + 1).read_until(b'\n', &mut line)?;
    if line.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{item} is longer than {limit} bytes")));
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{item} is not text")))
}

/// A streamed response body.
pub struct Body {
    reader: Box<dyn Read + Send>,
    /// The response headers, lowercase names.
    pub headers: Vec<(String, String)>,
}

impl Body {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The byte order of the records (`x-imalog-byte-order`); little-endian
    /// when the collector does not say.
    pub fn byte_order(&self) -> Result<ByteOrder, String> {
        match self.header("x-imalog-byte-order") {
            None => Ok(ByteOrder::Little),
            Some(text) => text.parse().map_err(|_| format!("x-imalog-byte-order {text:?}: expected le or be")),
        }
    }
}

impl Read for Body {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buffer)
    }
}

impl CollectorClient {
    /// A client for `url` (`http://HOST:PORT`).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let address = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| ClientError::Url(url.to_string()))?;
        Ok(CollectorClient {
            base: url.trim_end_matches('/').to_string(),
            address: address.to_string(),
            timeouts: Timeouts::default(),
        })
    }

    /// Returns the same client with other time limits.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn get(&self, target: &str) -> Result<Body, ClientError> {
        let url = format!("{}{target}", self.base);
        let io_error = |source| ClientError::Io { url: url.clone(), source };
        let deadline = Instant::now() + self.timeouts.request;
        let mut stream = self.connect().map_err(io_error)?;
        stream.set_write_timeout(Some(self.timeouts.read)).map_err(io_error)?;
        let request = format!("GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.address);
        stream.write_all(request.as_bytes()).map_err(io_error)?;
        let timed = TimedStream { stream, read: self.timeouts.read, deadline };
        let mut reader = BufReader::with_capacity(1 << 16, timed);
        let mut head = (&mut reader).take(MAX_HEAD);
        let status_line = read_limited_line(&mut head, MAX_HEAD, "the status line").map_err(io_error)?;
        let status: u16 = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Invalid {
                url: url.clone(),
                message: format!("status line {status_line:?}"),
            })?;
        let mut headers = Vec::new();
        loop {
            let line = read_limited_line(&mut head, MAX_HEAD, "a header").map_err(io_error)?;
            if line.is_empty() || !line.ends_with('\n') {
                let message = if head.limit() == 0 {
                    format!("the response head is longer than {MAX_HEAD} bytes")
                } else {
                    "the response ended inside its head".to_string()
                };
                return Err(ClientError::Invalid { url, message });
            }
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let reader: Box<dyn Read + Send> =
            if chunked { Box::new(Chunked { inner: reader, remaining: 0, done: false }) } else { Box::new(reader) };
        let mut body = Body { reader, headers };
        if status != 200 {
            let mut bytes = Vec::new();
            let _ = (&mut body).take(MAX_ERROR).read_to_end(&mut bytes);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Status { url, status, message });
        }
        Ok(body)
    }

    /// Connects to the collector, trying each address its name resolves
    /// to, each for at most the read timeout.
    fn connect(&self) -> io::Result<TcpStream> {
        use std::net::ToSocketAddrs;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address");
        for address in self.address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&address, self.timeouts.read) {
                Ok(stream) => return Ok(stream),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Asks for a quote over `pcrs` in every bank with `nonce`.
    pub fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<QuoteMaterial, ClientError> {
        let list = pcrs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let target = format!("/v1/quote?nonce={}&pcrs={list}", imalog_core::hex::encode(nonce));
        let url = format!("{}{target}", self.base);
        let body = self.get(&target)?;
        let mut bytes = Vec::new();
        body.take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ClientError::Io { url: url.clone(), source })?;
        let invalid = |message: String| ClientError::Invalid { url: url.clone(), message };
        if bytes.len() as u64 > MAX_JSON {
            return Err(invalid(format!("the quote is larger than {MAX_JSON} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| invalid("the quote is not UTF-8 text".into()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        quote_from_json(&json).map_err(invalid)
    }

    /// Streams the history from absolute index `from`, in the SHA-1 binary
    /// list layout; the `x-imalog-epoch` header names the epoch.
    pub fn records(&self, from: u64) -> Result<Body, ClientError> {
        self.get(&format!("/v1/records?from={from}"))
    }
}

/// Reads a quote from the collector's JSON (`/v1/quote`, or a saved copy).
pub fn quote_from_json(json: &serde_json::Value) -> Result<QuoteMaterial, String> {
    let object = json.as_object().ok_or("expected a JSON object with attest, signature and pcrs")?;
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = match object.get(name) {
            None => return Err(format!("{name} is missing")),
            Some(value) => value.as_str().ok_or_else(|| format!("{name}: expected a string of hex"))?,
        };
        imalog_core::hex::decode(text.as_bytes())
            .map_err(|e| format!("{name}: invalid hex at character {}", e.position))
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| format!("{name}: expected a whole number")),
        }
    };
    let mut pcrs: Vec<(Bank, u32, Digest)> = Vec::new();
    match object.get("pcrs") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(banks)) => {
            for (bank_name, values) in banks {
                let bank: Bank = bank_name.parse().map_err(|e| format!("pcrs: {e}"))?;
                let values = values
                    .as_object()
                    .ok_or_else(|| format!("pcrs: {bank_name}: expected an object of PCR index to hex value"))?;
                for (pcr, value) in values {
                    let index =
                        pcr.parse::<u32>().ok().filter(|p| *p < 24 && p.to_string() == *pcr).ok_or_else(|| {
                            format!("pcrs: {bank_name}: {pcr:?} is not a PCR index 0 to 23 (decimal, no leading zero)")
                        })?;
                    let value = value
                        .as_str()
                        .and_then(Digest::from_hex)
                        .filter(|d| d.len() == bank.digest_size())
                        .ok_or_else(|| {
                            format!("pcrs: {bank_name}: PCR {index}: not {} bytes of hex", bank.digest_size())
                        })?;
                    if pcrs.iter().any(|(b, p, _)| b.tpm_alg_id() == bank.tpm_alg_id() && *p == index) {
                        return Err(format!("pcrs: PCR {index} appears twice for the algorithm of {bank_name}"));
                    }
                    pcrs.push((bank, index, value));
                }
            }
        }
        Some(_) => return Err("pcrs: expected an object of bank name to PCR values".into()),
    }
    Ok(QuoteMaterial {
        attest: bytes("attest")?,
        signature: bytes("signature")?,
        pcrs,
        epoch: number("epoch")?,
        last_index: number("last_index")?,
    })
}

/// Decodes chunked transfer encoding as a stream.
struct Chunked<R> {
    inner: R,
    remaining: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.done || buffer.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let line = read_limited_line(&mut self.inner, MAX_CHUNK_LINE, "a chunk-size line")?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.remaining = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}")))?;
            if self.remaining == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let take = self.remaining.min(buffer.len());
        let read = self.inner.read(&mut buffer[..take])?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "history transfer ended inside a chunk"));
        }
        self.remaining -= read;
        if self.remaining == 0 {
            let mut end = [0u8; 2];
            self.inner.read_exact(&mut end)?;
            if &end != b"\r\n" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a chunk does not end with CRLF"));
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Starts a collector that reads one request, sends `pieces` with
    /// `pause` between them, and closes the connection.
    fn hostile(pieces: Vec<Vec<u8>>, pause: Duration) -> (CollectorClient, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Read the whole request, so that closing sends no reset.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            for piece in pieces {
                if stream.write_all(&piece).is_err() {
                    return;
                }
                thread::sleep(pause);
            }
        });
        (CollectorClient::new(&format!("http://{address}")).unwrap(), server)
    }

    fn quote_error(pieces: Vec<Vec<u8>>) -> String {
        let (client, server) = hostile(pieces, Duration::ZERO);
        let error = client.quote(b"n", &[10]).expect_err("the response is hostile");
        server.join().unwrap();
        error.to_string()
    }

    fn history_error(pieces: Vec<Vec<u8>>) -> String {
        let (client, server) = hostile(pieces, Duration::ZERO);
        let mut body = client.records(0).expect("the head is valid");
        let error = io::copy(&mut body, &mut io::sink()).expect_err("the body is hostile");
        server.join().unwrap();
        error.to_string()
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn head_endless_header_is_cut() {
        let mut header = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        header.resize(40_000, b'a');
        let message = quote_error(vec![header]);
        assert!(message.ends_with("invalid response: the response head is longer than 16384 bytes"), "{message}");
    }

    #[test]
    fn head_many_headers_are_cut() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..2000 {
            head.extend_from_slice(b"X-Filler: a\r\n");
        }
        let message = quote_error(vec![head]);
        assert!(message.ends_with("invalid response: the response head is longer than 16384 bytes"), "{message}");
    }

    #[test]
    fn status_line_not_http_is_invalid() {
        let message = quote_error(vec![b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()]);
        assert!(message.ends_with("invalid response: status line \"SSH-2.0-OpenSSH_9.6\\r\\n\""), "{message}");
    }

    #[test]
    fn quote_over_limit_is_refused() {
        let mut response = b"HTTP/1.1 200 OK\r\n\r\n{\"attest\":\"".to_vec();
        response.resize(MAX_JSON as usize + 100, b'0');
        let message = quote_error(vec![response]);
        assert!(message.ends_with("invalid response: the quote is larger than 1048576 bytes"), "{message}");
    }

    #[test]
    fn error_body_is_cut_at_limit() {
        let mut response = b"HTTP/1.1 500 Internal Server Error\r\n\r\n".to_vec();
        response.resize(10 * MAX_ERROR as usize, b'x');
        let message = quote_error(vec![response]);
        assert!(message.contains("HTTP 500: xxx"), "{message}");
        assert!(message.len() < MAX_ERROR as usize + 200, "{} bytes", message.len());
    }

    #[test]
    fn chunked_body_errors_are_named() {
        let message = history_error(vec![CHUNKED.to_vec(), vec![b'f'; 1000]]);
        assert_eq!(message, "a chunk-size line is longer than 256 bytes");
        let message = history_error(vec![CHUNKED.to_vec(), b"4\r\nabcdXY0\r\n\r\n".to_vec()]);
        assert_eq!(message, "a chunk does not end with CRLF");
        let message = history_error(vec![CHUNKED.to_vec(), b"zz\r\n".to_vec()]);
        assert_eq!(message, "chunk size \"zz\\r\\n\"");
        let message = history_error(vec![CHUNKED.to_vec(), b"10\r\nabc".to_vec()]);
        assert_eq!(message, "history transfer ended inside a chunk");
    }

    #[test]
    fn chunked_body_reads_back() {
        let (client, server) =
            hostile(vec![CHUNKED.to_vec(), b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec()], Duration::ZERO);
        let mut body = client.records(0).unwrap();
        let mut text = String::new();
        body.read_to_string(&mut text).unwrap();
        assert_eq!(text, "abcde");
        server.join().unwrap();
    }

    #[test]
    fn request_deadline_cuts_slow_collector() {
        // One byte every 50 ms stays within the read timeout, so only the
        // deadline for the whole request ends it.
        let pieces = b"HTTP/1.1 200 OK\r\n\r\n".iter().map(|b| vec![*b]).collect();
        let (client, server) = hostile(pieces, Duration::from_millis(50));
        let timeouts = Timeouts { read: Duration::from_secs(5), request: Duration::from_millis(300) };
        let started = Instant::now();
        let error = client.with_timeouts(timeouts).quote(b"n", &[10]).expect_err("too slow");
        assert!(error.to_string().ends_with("the request took longer than its time limit"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
        server.join().unwrap();
    }

    #[test]
    fn quote_json_errors_are_named() {
        let sha1 = "00".repeat(20);
        let cases = [
            (serde_json::json!([1]), "expected a JSON object with attest, signature and pcrs"),
            (serde_json::json!({"signature": "00"}), "attest is missing"),
            (serde_json::json!({"attest": 5, "signature": "00"}), "attest: expected a string of hex"),
            (serde_json::json!({"attest": "0g", "signature": "00"}), "attest: invalid hex at character 1"),
            (
                serde_json::json!({"attest": "00", "signature": "00", "pcrs": []}),
                "pcrs: expected an object of bank name to PCR values",
            ),
            (
                serde_json::json!({"attest": "00", "signature": "00", "pcrs": {"sha1": []}}),
                "pcrs: sha1: expected an object of PCR index to hex value",
            ),
            (
                serde_json::json!({"attest": "00", "signature": "00", "pcrs": {"sha1": {"4294967296": sha1}}}),
                "pcrs: sha1: \"4294967296\" is not a PCR index 0 to 23 (decimal, no leading zero)",
            ),
            (
                serde_json::json!({"attest": "00", "signature": "00", "pcrs": {"sha1": {"010": sha1}}}),
                "pcrs: sha1: \"010\" is not a PCR index 0 to 23 (decimal, no leading zero)",
            ),
            (
                serde_json::json!({"attest": "00", "signature": "00", "pcrs": {"sha1": {"10": "00"}}}),
                "pcrs: sha1: PCR 10: not 20 bytes of hex",
            ),
            (
                serde_json::json!({"attest": "00", "signature": "00", "last_index": "x"}),
                "last_index: expected a whole number",
            ),
            (
                serde_json::json!({"attest": "00", "signature": "00", "last_index": -1}),
                "last_index: expected a whole number",
            ),
            (serde_json::json!({"attest": "00", "signature": "00", "epoch": 1e300}), "epoch: expected a whole number"),
        ];
        for (json, expected) in cases {
            assert_eq!(quote_from_json(&json).err().as_deref(), Some(expected), "{json}");
        }
        let good = serde_json::json!({"attest": "01", "signature": "02", "pcrs": {"sha1": {"10": sha1}}, "last_index": null, "epoch": 3});
        let material = quote_from_json(&good).expect("valid quote JSON");
        assert_eq!(
            (material.attest, material.signature, material.last_index, material.epoch),
            (vec![1], vec![2], None, Some(3))
        );
        assert_eq!(material.pcrs.len(), 1);
    }
}
