//! The collector as a service: export rounds on an interval, and the
//! history and quotes served over HTTP.
//!
//! The history of an epoch is the committed records, then any pending chunk
//! whose records the kernel has already deleted, then the kernel's staged
//! list, then its current list (after a read-only collector: the kernel's
//! list alone, which still contains everything). Absolute record indexes
//! run through all of them.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use imalog_core::{ascii, Bank, BinaryDecoder, BinaryLayout, Digest};

use crate::export::{ExportError, Exporter, Flavor, RoundReport};
use crate::securityfs::{BINARY_LIST, BINARY_STAGED};

/// A TPM quote with what a verifier needs to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteOutput {
    /// The marshalled `TPMS_ATTEST` the TPM signed.
    pub attest: Vec<u8>,
    /// The marshalled `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// The attestation key's marshalled public area.
    pub ak_public: Vec<u8>,
    /// The quoted PCR values, for PCRs a log cannot reproduce.
    pub pcrs: Vec<(Bank, u32, Digest)>,
}

/// A source of TPM quotes: the TPM of the machine whose list is collected.
pub trait Quoter: Send + Sync {
    /// Quotes `pcrs` in every bank with `nonce` as qualifying data.
    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<QuoteOutput, String>;
}

/// Format of served history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryFormat {
    /// The SHA-1 binary list layout.
    Binary,
    /// The kernel's ASCII lines, SHA-1 digests.
    Ascii,
}

/// The collector: an exporter shared between the export loop and the
/// request handlers, and an optional quote source.
pub struct Collector {
    exporter: Mutex<Exporter>,
    quoter: Option<Box<dyn Quoter>>,
}

/// A failure to serve history.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading the store or the kernel failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Writing to the client failed.
    #[error("client: {0}")]
    Client(io::Error),
    /// The request asks for something that does not exist.
    #[error("{0}")]
    BadRequest(String),
}

impl Collector {
    /// A collector around `exporter`, with quotes from `quoter`.
    pub fn new(exporter: Exporter, quoter: Option<Box<dyn Quoter>>) -> Self {
        Collector { exporter: Mutex::new(exporter), quoter }
    }

    fn exporter(&self) -> MutexGuard<'_, Exporter> {
        // A panic in a round leaves the store consistent on disk; the next
        // round starts from there.
        self.exporter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one export round.
    pub fn round(&self) -> Result<RoundReport, ExportError> {
        self.exporter().round()
    }

    /// Epoch, next stored index and flavour.
    pub fn status(&self) -> (u64, u64, Flavor) {
        let exporter = self.exporter();
        (exporter.store().epoch(), exporter.store().next_index(), exporter.flavor())
    }

    /// The byte order of the stored records: the kernel's, as it wrote
    /// its binary lists.
    pub fn byte_order(&self) -> imalog_core::ByteOrder {
        self.exporter().store().byte_order()
    }

    /// Streams the history from absolute index `from` to `out`. Returns the
    /// absolute index after the last record written.
    pub fn write_history(&self, from: u64, format: HistoryFormat, out: &mut impl Write) -> Result<u64, ServeError> {
        let exporter = self.exporter();
        let store = exporter.store();
        let order = store.byte_order();
        let mut sink = FormatSink { format, order, out, pending: Vec::new() };

        // Read the kernel's lists first: they decide which pending chunks
        // belong to the history.
        let parts = history_after_store(&exporter)?;
        let mut next = if exporter.flavor() == Flavor::ReadOnly {
            0
        } else {
            let end = store.write_records(from, &mut sink).map_err(ExportError::from)?;
            sink.flush_pending().map_err(ServeError::Client)?;
            end
        };
        for (name, bytes) in parts {
            let layout = BinaryLayout { digest_size: 20, byte_order: order };
            let mut decoder = BinaryDecoder::new(bytes.as_slice(), layout);
            let mut record = imalog_core::binary::empty_record();
            let mut start = None;
            loop {
                let before = decoder.offset() as usize;
                match decoder.read_record(&mut record) {
                    Ok(true) => {
                        if start.is_none() && next >= from {
                            start = Some(before);
                        }
                        next += 1;
                    }
                    Ok(false) => break,
                    Err(error) => {
                        return Err(ServeError::Export(ExportError::Decode {
                            file: name.to_string(),
                            message: error.to_string(),
                        }))
                    }
                }
            }
            let start = start.unwrap_or(bytes.len());
            sink.write_all(&bytes[start..]).map_err(ServeError::Client)?;
            sink.flush_pending().map_err(ServeError::Client)?;
        }
        Ok(next)
    }

    /// Takes a quote, then reads the lists, so that the quote covers a
    /// prefix of the history served next. Returns the quote and the
    /// absolute index of the last record present after the quote.
    pub fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<(QuoteOutput, Option<u64>), ServeError> {
        let quoter = self.quoter.as_ref().ok_or_else(|| {
            ServeError::BadRequest(
                "this collector has no TPM for quotes; start imalog collect with --tpm (a build with --features tss)"
                    .into(),
            )
        })?;
        let quote = quoter.quote(nonce, pcrs).map_err(ServeError::BadRequest)?;
        let end = self.history_end()?;
        Ok((quote, end.checked_sub(1)))
    }
}

impl Collector {
    /// Absolute index one past the last record of the history: stored
    /// records plus the kernel's staged and current lists.
    pub fn history_end(&self) -> Result<u64, ServeError> {
        let exporter = self.exporter();
        let order = exporter.store().byte_order();
        let mut end = if exporter.flavor() == Flavor::ReadOnly { 0 } else { exporter.store().next_index() };
        for (name, bytes) in history_after_store(&exporter)? {
            let layout = BinaryLayout { digest_size: 20, byte_order: order };
            let mut decoder = BinaryDecoder::new(bytes.as_slice(), layout);
            let mut record = imalog_core::binary::empty_record();
            while decoder.read_record(&mut record).map_err(|e| {
                ServeError::Export(ExportError::Decode { file: name.to_string(), message: e.to_string() })
            })? {
                end += 1;
            }
        }
        Ok(end)
    }
}

/// Returns the parts of the history after the committed records, in
/// order, each named for errors. They are the pending chunks that the
/// kernel has deleted (their commit failed or was interrupted), the
/// kernel's staged list, then its current list. A read-only collector
/// serves the current list alone.
fn history_after_store(exporter: &Exporter) -> Result<Vec<(String, Vec<u8>)>, ServeError> {
    let read_only = exporter.flavor() == Flavor::ReadOnly;
    let staged = if !read_only && exporter.securityfs().has(BINARY_STAGED) {
        Some(read_list(exporter, BINARY_STAGED)?)
    } else {
        None
    };
    let current = read_list(exporter, BINARY_LIST)?;
    let mut parts = Vec::new();
    for pending in exporter.pending_outside_kernel(staged.as_deref().unwrap_or_default(), &current)? {
        parts.push((format!("pending chunk {}", pending.first_index), pending.payload));
    }
    if let Some(staged) = staged {
        parts.push((BINARY_STAGED.to_string(), staged));
    }
    parts.push((BINARY_LIST.to_string(), current));
    Ok(parts)
}

fn read_list(exporter: &Exporter, name: &str) -> Result<Vec<u8>, ServeError> {
    let mut wait = std::time::Duration::from_millis(10);
    for _ in 0..10 {
        match exporter.securityfs().open_reader(name) {
            Ok(mut file) => {
                return file
                    .read_all()
                    .map_err(|source| ServeError::Export(ExportError::Securityfs { file: name.to_string(), source }))
            }
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_millis(500));
            }
            Err(source) => return Err(ServeError::Export(ExportError::Securityfs { file: name.to_string(), source })),
        }
    }
    Err(ServeError::Export(ExportError::Busy { file: name.to_string(), attempts: 10 }))
}

/// Writes binary records as they come, or converts them to ASCII lines.
struct FormatSink<'a, W: Write> {
    format: HistoryFormat,
    order: imalog_core::ByteOrder,
    out: &'a mut W,
    /// Bytes of an ASCII conversion that do not form whole records yet.
    pending: Vec<u8>,
}

impl<W: Write> FormatSink<'_, W> {
    fn flush_pending(&mut self) -> io::Result<()> {
        if self.format == HistoryFormat::Ascii && !self.pending.is_empty() {
            self.convert(true)?;
        }
        Ok(())
    }

    /// Converts the whole records in `pending` to ASCII.
    fn convert(&mut self, final_part: bool) -> io::Result<()> {
        let layout = BinaryLayout { digest_size: 20, byte_order: self.order };
        let mut decoder = BinaryDecoder::new(self.pending.as_slice(), layout);
        let mut record = imalog_core::binary::empty_record();
        let mut line = Vec::new();
        let mut used = 0;
        loop {
            match decoder.read_record(&mut record) {
                Ok(true) => {
                    line.clear();
                    ascii::encode_record(&record, &record.digest, &mut line);
                    self.out.write_all(&line)?;
                    used = decoder.offset() as usize;
                }
                Ok(false) => break,
                Err(error) if final_part => return Err(io::Error::new(io::ErrorKind::InvalidData, error.to_string())),
                Err(_) => break,
            }
        }
        self.pending.drain(..used);
        Ok(())
    }
}

impl<W: Write> Write for FormatSink<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.format {
            HistoryFormat::Binary => self.out.write(bytes),
            HistoryFormat::Ascii => {
                self.pending.extend_from_slice(bytes);
                if self.pending.len() >= 1 << 16 {
                    self.convert(false)?;
                }
                Ok(bytes.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A shared collector.
pub type SharedCollector = Arc<Collector>;
