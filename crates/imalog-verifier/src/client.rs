//! A small HTTP/1.1 client for the collector's API, on std sockets: quotes
//! as JSON, history as a streamed binary list (chunked transfer encoding).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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

/// The collector of one machine.
#[derive(Clone, Debug)]
pub struct CollectorClient {
    base: String,
    address: String,
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
        Ok(CollectorClient { base: url.trim_end_matches('/').to_string(), address: address.to_string() })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn get(&self, target: &str) -> Result<Body, ClientError> {
        let url = format!("{}{target}", self.base);
        let io_error = |source| ClientError::Io { url: url.clone(), source };
        let mut stream = TcpStream::connect(&self.address).map_err(io_error)?;
        stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(io_error)?;
        write!(stream, "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.address)
            .map_err(io_error)?;
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).map_err(io_error)?;
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
            ClientError::Invalid { url: url.clone(), message: format!("status line {status_line:?}") }
        })?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(io_error)? == 0 || line.trim().is_empty() {
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
            let mut text = String::new();
            let _ = body.read_to_string(&mut text);
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Status { url, status, message });
        }
        Ok(body)
    }

    /// Asks for a quote over `pcrs` in every bank with `nonce`.
    pub fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<QuoteMaterial, ClientError> {
        let list = pcrs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let target = format!("/v1/quote?nonce={}&pcrs={list}", imalog_core::hex::encode(nonce));
        let url = format!("{}{target}", self.base);
        let mut body = self.get(&target)?;
        let mut text = String::new();
        body.read_to_string(&mut text).map_err(|source| ClientError::Io { url: url.clone(), source })?;
        let invalid = |message: String| ClientError::Invalid { url: url.clone(), message };
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
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = json[name].as_str().ok_or_else(|| format!("{name} is missing"))?;
        imalog_core::hex::decode(text.as_bytes())
            .map_err(|e| format!("{name}: invalid hex at character {}", e.position))
    };
    let mut pcrs = Vec::new();
    if let Some(banks) = json["pcrs"].as_object() {
        for (bank_name, values) in banks {
            let bank: Bank = bank_name.parse().map_err(|e| format!("pcrs: {e}"))?;
            for (pcr, value) in values.as_object().into_iter().flatten() {
                let pcr: u32 = pcr.parse().map_err(|_| format!("pcrs: {bank_name}: PCR {pcr:?} is not a number"))?;
                let value =
                    value.as_str().and_then(Digest::from_hex).filter(|d| d.len() == bank.digest_size()).ok_or_else(
                        || format!("pcrs: {bank_name}: PCR {pcr}: not {} bytes of hex", bank.digest_size()),
                    )?;
                pcrs.push((bank, pcr, value));
            }
        }
    }
    Ok(QuoteMaterial { attest: bytes("attest")?, signature: bytes("signature")?, pcrs, epoch: json["epoch"].as_u64() })
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
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
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
        }
        Ok(read)
    }
}
