//! Carrying the list across kexec (`ima_kexec.c`): sizing the segment at
//! `kexec_load`, the `ima_kexec` critical-data records, suspension by the
//! reboot notifier, the dump of staged then current records, and the restore
//! in the next kernel.
//!
//! Buffer layout, integers in the list byte order:
//!
//! ```text
//! 0   u16 version (1)
//! 2   u16 reserved
//! 4   u32 reserved
//! 8   u64 buffer_size, header included
//! 16  u64 count of records
//! 24  records in the SHA-1 binary list format (20-byte digests)
//! ```

use std::sync::Arc;

use imalog_core::{binary, ByteOrder, Digest, FieldId, Record, Template, TemplateData};
use imalog_tpm::Tpm;

use crate::config::KernelConfig;
use crate::entry::Entry;
use crate::kernel::{Ima, KernelError, KEXEC_HEADER_SIZE};

/// `struct ima_kexec_hdr` version.
pub const KEXEC_VERSION: u16 = 1;

/// Template names in a kexec buffer must be shorter than this: the longest
/// built-in format string, `evm-sig`'s, has 68 characters.
pub const MAX_RESTORE_TEMPLATE_NAME: u32 = 69;

const PAGE_SIZE: u64 = 4096;

/// The result of restoring a kexec buffer in the next kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Records the header announced.
    pub announced: u64,
    /// Records restored.
    pub restored: u64,
    /// The reason restoring stopped early, with the byte offset.
    pub error: Option<String>,
}

impl Ima {
    /// `kexec_file_load`: sizes the segment for the staged and current lists
    /// and records the `kexec_load` critical data. Returns the segment size.
    pub fn kexec_load(&self) -> Result<u64, KernelError> {
        if !self.config.kexec {
            return Err(KernelError::KexecLoad("CONFIG_IMA_KEXEC is off; the list is not carried".into()));
        }
        let (current, staged) = {
            let state = self.lock();
            (state.current_size, state.staged_size)
        };
        let extra = match self.config.kexec_extra_memory_kb {
            0 => PAGE_SIZE / 2,
            kb => kb.saturating_mul(1024),
        };
        let total = current
            .checked_add(KEXEC_HEADER_SIZE)
            .and_then(|v| v.checked_add(staged))
            .and_then(|v| v.checked_add(KEXEC_HEADER_SIZE))
            .and_then(|v| v.checked_add(extra))
            .and_then(|v| v.checked_next_multiple_of(PAGE_SIZE));
        let segment = match total {
            Some(size) if size <= self.config.ram_bytes / 2 => size,
            _ => {
                // Later kexec records report the size computed by the last
                // load, also when that load failed. ULONG_MAX marks an overflow.
                let mut state = self.lock();
                state.kexec_loaded = false;
                state.kexec_segment_size = total.unwrap_or(u64::MAX);
                return Err(KernelError::KexecLoad("Binary measurement list too large".into()));
            }
        };
        {
            let mut state = self.lock();
            state.kexec_segment_size = segment;
            state.kexec_loaded = true;
        }
        self.record_kexec_event(b"kexec_load");
        Ok(segment)
    }

    /// Records an `ima_kexec` critical-data event, with the counters read
    /// before the record is appended.
    fn record_kexec_event(&self, name: &[u8]) {
        if !self.config.measure_critical_data {
            return;
        }
        let text = {
            let state = self.lock();
            format!(
                "kexec_segment_size={};ima_binary_runtime_size={};ima_runtime_measurements_count={};",
                state.kexec_segment_size,
                state.full_size.saturating_add(KEXEC_HEADER_SIZE),
                state.full
            )
        };
        // Refused only as a duplicate or after suspension, which the kernel
        // also ignores here.
        let _ = self.measure_buffer(name, text.as_bytes(), None);
    }

    /// Runs the reboot notifier for `kexec -e`: records `kexec_execute`, then
    /// suspends measurement so that both lists are frozen for the dump.
    pub fn kexec_execute(&self) {
        self.record_kexec_event(b"kexec_execute");
        self.suspend();
    }

    /// Suspends measurement: appends fail with ENODEV, `A` with EACCES, `D`
    /// and `N` with ESTALE.
    pub fn suspend(&self) {
        self.lock().suspended = true;
    }

    /// Dumps the lists for the next kernel (`ima_dump_measurement_list`): staged records first, then
    /// current ones, into a buffer of the loaded segment's size. Without a
    /// loaded segment the buffer is empty and the next kernel starts with an
    /// empty list.
    ///
    /// A record that does not fit is written piece by piece as long as each
    /// piece fits with a byte to spare, as seq_file writes do. The buffer
    /// then counts as full, with zeros after the last piece written, and the
    /// next kernel rejects the cut record. The exception is a record that
    /// would have ended exactly at the segment end: only its last piece is
    /// missing, and the next kernel restores the record with zeros in that
    /// piece.
    /// NOTE: this truncation is inferred from the dump loop; no source
    /// describes it.
    pub fn kexec_dump(&self) -> Vec<u8> {
        let (loaded, size) = {
            let state = self.lock();
            (state.kexec_loaded, state.kexec_segment_size)
        };
        if !loaded || size < KEXEC_HEADER_SIZE {
            return Vec::new();
        }
        let order = self.byte_order();
        let mut buffer = vec![0u8; KEXEC_HEADER_SIZE as usize];
        let limit = size as usize;
        let mut count = 0u64;
        let mut full = false;
        let sha1 = self.slots.sha1();
        let mut rendered = Vec::with_capacity(512);
        for node in self.staged_entries().chain(self.current_entries()) {
            if buffer.len() >= limit {
                break;
            }
            count += 1;
            rendered.clear();
            let digest = node.entry.slot_digest(&self.slots, sha1);
            binary::encode_record(&node.entry.record, &digest, order, &mut rendered);
            let mut at = 0;
            for piece in pieces(&node.entry.record) {
                if !full && buffer.len() + piece < limit {
                    buffer.extend_from_slice(&rendered[at..at + piece]);
                } else {
                    full = true;
                }
                at += piece;
            }
            if full {
                buffer.resize(limit, 0);
                break;
            }
        }
        let used = buffer.len() as u64;
        buffer[0..2].copy_from_slice(&order.u16_bytes(KEXEC_VERSION));
        buffer[8..16].copy_from_slice(&order.u64_bytes(used));
        buffer[16..24].copy_from_slice(&order.u64_bytes(count));
        buffer
    }

    /// Boots the next kernel from a kexec buffer: restores the records, then
    /// appends its own `boot_aggregate`. The TPM is not reset and restored
    /// records are not extended again.
    pub fn boot_after_kexec(
        config: KernelConfig,
        tpm: Option<Box<dyn Tpm>>,
        buffer: &[u8],
    ) -> Result<(Ima, RestoreReport), KernelError> {
        let ima = Ima::empty(config, tpm);
        let report = ima.restore(buffer);
        ima.add_boot_aggregate()?;
        Ok((ima, report))
    }

    /// Restores records from a kexec buffer (`ima_restore_measurement_list`).
    /// It stops at the first error and keeps what it restored.
    pub fn restore(&self, buffer: &[u8]) -> RestoreReport {
        let mut report = RestoreReport::default();
        if buffer.is_empty() {
            return report;
        }
        let order = self.byte_order();
        let mut reader = Reader { buffer, at: 0, order };
        let header = (|| Some((reader.u16()?, reader.u16()?, reader.u32()?, reader.u64()?, reader.u64()?)))();
        let Some((version, _, _, buffer_size, count)) = header else {
            report.error = Some(format!("offset 0: buffer of {} bytes is shorter than its header", buffer.len()));
            return report;
        };
        report.announced = count;
        if version != KEXEC_VERSION {
            report.error = Some(format!("offset 0: incompatible kexec buffer version {version}; expected 1"));
            return report;
        }
        if count == u64::MAX {
            report.error = Some("offset 16: record count is ULONG_MAX".into());
            return report;
        }
        let end = match usize::try_from(buffer_size) {
            Ok(end) if end <= buffer.len() && end >= KEXEC_HEADER_SIZE as usize => end,
            _ => {
                report.error =
                    Some(format!("offset 8: buffer_size {buffer_size} does not fit the {}-byte buffer", buffer.len()));
                return report;
            }
        };
        reader.buffer = &buffer[..end];

        for index in 0..count {
            if reader.at >= end {
                break;
            }
            let at = reader.at;
            match self.restore_one(&mut reader) {
                Ok(entry) => {
                    if self.append(entry, false, true).is_err() {
                        report.error = Some(format!("record {index} at offset {at}: could not be appended"));
                        return report;
                    }
                    report.restored += 1;
                }
                Err(message) => {
                    report.error = Some(format!("record {index} at offset {at}: {message}"));
                    return report;
                }
            }
        }
        if reader.at != end {
            report.error =
                Some(format!("offset {}: {} bytes after the last announced record", reader.at, end - reader.at));
        }
        report
    }

    fn restore_one(&self, reader: &mut Reader<'_>) -> Result<Entry, String> {
        let truncated = |item: &str| format!("truncated {item}");
        let pcr = reader.u32().ok_or_else(|| truncated("PCR index"))?;
        let digest = reader.take(20).ok_or_else(|| truncated("template digest"))?;
        let name_len = reader.u32().ok_or_else(|| truncated("template name length"))?;
        if name_len >= MAX_RESTORE_TEMPLATE_NAME {
            return Err(format!("template name length {name_len} is not below {MAX_RESTORE_TEMPLATE_NAME}"));
        }
        let name = reader.take(name_len as usize).ok_or_else(|| truncated("template name"))?;
        if name == b"ima" {
            return Err("template ima is not supported in a kexec buffer".into());
        }
        let template = self.restore_template(name)?;
        let data_len = reader.u32().ok_or_else(|| truncated("template data length"))?;
        let section = reader.take(data_len as usize).ok_or_else(|| truncated("template data"))?;

        // The kernel's restore splits the fields by their length words only
        // and does not check their content.
        let mut fields = Reader { buffer: section, at: 0, order: reader.order };
        let mut data = TemplateData::new();
        for (position, id) in template.fields().iter().enumerate() {
            let len = fields.u32().ok_or_else(|| format!("template data ends before field {position} ({id})"))?;
            let bytes = fields
                .take(len as usize)
                .ok_or_else(|| format!("field {position} ({id}) runs past the template data"))?;
            data.push(bytes).map_err(|e| e.to_string())?;
        }
        if fields.at != section.len() {
            return Err(format!("{} bytes of template data after the last field", section.len() - fields.at));
        }
        let violation = digest.iter().all(|&b| b == 0);
        let record = Record { pcr, template, data, digest: Digest::zero(20), byte_order: self.byte_order() };
        Ok(Entry::new(record, &self.slots, violation))
    }

    /// Looks a template up by name or format string, registering an unknown
    /// format string as a new custom template (`lookup_template_desc` and
    /// `template_desc_init_fields`).
    fn restore_template(&self, name: &[u8]) -> Result<Arc<Template>, String> {
        let mut known = self.templates.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = known.iter().find(|t| t.name().as_bytes() == name || t.format().as_bytes() == name) {
            return Ok(Arc::clone(found));
        }
        let template = Template::lookup(name).map_err(|e| e.to_string())?;
        known.push(Arc::clone(&template));
        Ok(template)
    }
}

/// Returns the sizes of the pieces `ima_measurements_show` writes for a
/// record, in order, for the SHA-1 digest.
fn pieces(record: &Record) -> Vec<usize> {
    let mut pieces = vec![4, 20, 4, record.template.name().len()];
    if record.template.is_legacy_ima() {
        for (id, data) in record.fields() {
            if id == FieldId::N {
                pieces.push(4);
                pieces.push(data.iter().position(|&b| b == 0).unwrap_or(data.len()));
            } else {
                pieces.push(data.len());
            }
        }
    } else {
        pieces.push(4);
        for data in record.data.fields() {
            pieces.push(4);
            pieces.push(data.len());
        }
    }
    pieces.retain(|&p| p > 0);
    pieces
}

struct Reader<'a> {
    buffer: &'a [u8],
    at: usize,
    order: ByteOrder,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let bytes = self.buffer.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(bytes)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(self.order.u16(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(self.order.u32(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(self.order.u64(self.take(8)?.try_into().ok()?))
    }
}
