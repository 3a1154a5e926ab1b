//! A deterministic generator of realistic measurement lists, for tests and
//! benchmarks: file paths under the usual system folders, sha256 file
//! digests, signatures on some files, every template on request, and
//! violations at a chosen rate.
//!
//! The same seed always gives the same records. Records are produced one by
//! one, so a list of any length needs no more memory than one record.

use std::sync::Arc;

use crate::bank::Bank;
use crate::byte_order::ByteOrder;
use crate::hash::Digest;
use crate::record::{Record, TemplateData};
use crate::template::{FieldId, Template};

/// Which templates the generator uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateMix {
    /// One template for every record (built-in name or format string).
    Single(Arc<Template>),
    /// Cycle through every built-in template and two custom formats.
    All,
}

/// Generator settings.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Number of records.
    pub records: u64,
    /// Seed of the pseudo-random sequence.
    pub seed: u64,
    /// Templates to use.
    pub templates: TemplateMix,
    /// Every n-th record (n > 0) is a violation.
    pub violation_every: Option<u64>,
    /// Start with a `boot_aggregate` record, as a cold-booted kernel does.
    pub boot_aggregate: bool,
    /// Bank of the logged template digests.
    pub bank: Bank,
    /// Byte order of the kernel being imitated.
    pub byte_order: ByteOrder,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            records: 1000,
            seed: 1,
            templates: TemplateMix::Single(Template::default_template()),
            violation_every: None,
            boot_aggregate: true,
            bank: Bank::SHA1,
            byte_order: ByteOrder::Little,
        }
    }
}

/// An iterator over generated records.
pub struct SyntheticList {
    options: SynthOptions,
    state: u64,
    index: u64,
    all: Vec<Arc<Template>>,
}

impl SyntheticList {
    /// A generator with these settings.
    pub fn new(options: SynthOptions) -> Self {
        let mut all: Vec<Arc<Template>> =
            crate::template::BUILTIN_TEMPLATES.iter().filter_map(|(name, _)| Template::builtin(name)).collect();
        for format in ["d-ng|n-ng|sig|iuid|igid|imode", "n-ng|d-ngv2|buf"] {
            if let Ok(custom) = Template::custom(format) {
                all.push(Arc::new(custom));
            }
        }
        SyntheticList { state: options.seed ^ 0x9e37_79b9_7f4a_7c15, options, index: 0, all }
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    fn bytes(&mut self, len: usize, out: &mut Vec<u8>) {
        for _ in 0..len {
            out.push(self.next_u64() as u8);
        }
    }

    fn path(&mut self) -> Vec<u8> {
        const FOLDERS: [&str; 8] = [
            "/usr/bin/",
            "/usr/sbin/",
            "/usr/lib/x86_64-linux-gnu/",
            "/usr/lib/systemd/",
            "/usr/libexec/",
            "/etc/",
            "/usr/lib/python3/dist-packages/",
            "/usr/lib/modules/6.12.0-amd64/kernel/drivers/net/",
        ];
        const WORDS: [&str; 12] =
            ["ssl", "crypto", "systemd", "udev", "resolve", "dbus", "nss", "audit", "selinux", "z", "ffi", "tss2"];
        let folder = FOLDERS[self.below(FOLDERS.len() as u64) as usize];
        let word = WORDS[self.below(WORDS.len() as u64) as usize];
        let number = self.below(4000);
        let name = match self.below(3) {
            0 => format!("{folder}lib{word}-{number}.so.{}", self.below(9)),
            1 => format!("{folder}{word}d{number}"),
            _ => format!("{folder}{word}_{number}.conf"),
        };
        name.into_bytes()
    }

    fn signature(&mut self, xattr_type: u8, out: &mut Vec<u8>) {
        let len = 256u16;
        out.extend_from_slice(&[xattr_type, 2, 4]);
        self.bytes(4, out);
        out.extend_from_slice(&len.to_be_bytes());
        self.bytes(len as usize, out);
    }

    fn field(&mut self, id: FieldId, violation: bool, name: &[u8], out: &mut Vec<u8>) {
        let order = self.options.byte_order;
        match id {
            FieldId::D => {
                if violation {
                    out.extend_from_slice(&[0; 20]);
                } else {
                    self.bytes(20, out);
                }
            }
            FieldId::N | FieldId::NNg => {
                let limit = if id == FieldId::N { 255 } else { usize::MAX };
                out.extend_from_slice(&name[..name.len().min(limit)]);
                out.push(0);
            }
            FieldId::DNg | FieldId::DModsig | FieldId::DNgV2 => {
                if id == FieldId::DModsig && self.below(2) == 0 {
                    return;
                }
                if id == FieldId::DNgV2 {
                    out.extend_from_slice(if self.below(4) == 0 { b"verity:" } else { b"ima:" });
                }
                out.extend_from_slice(b"sha256:\0");
                if violation {
                    out.extend_from_slice(&[0; 32]);
                } else {
                    self.bytes(32, out);
                }
            }
            FieldId::Sig => {
                if !violation && self.below(3) == 0 {
                    self.signature(3, out);
                }
            }
            FieldId::EvmSig => {
                if !violation && self.below(3) == 0 {
                    self.signature(5, out);
                }
            }
            FieldId::Modsig => {
                if self.below(2) == 0 {
                    let len = 300 + self.below(200) as usize;
                    self.bytes(len, out);
                }
            }
            FieldId::Buf => {
                let len = self.below(96) as usize;
                self.bytes(len, out);
            }
            FieldId::Iuid | FieldId::Igid => {
                let value = self.below(2000) as u32;
                out.extend_from_slice(&order.u32_bytes(value));
            }
            FieldId::Imode => {
                let mode = [0o100644u16, 0o100755, 0o100600][self.below(3) as usize];
                out.extend_from_slice(&order.u16_bytes(mode));
            }
            FieldId::XattrNames => out.extend_from_slice(b"security.ima|security.selinux\0"),
            FieldId::XattrLengths => {
                out.extend_from_slice(&order.u32_bytes(10));
                out.extend_from_slice(&order.u32_bytes(28));
            }
            FieldId::XattrValues => self.bytes(38, out),
        }
    }

    fn make(&mut self) -> Record {
        let index = self.index;
        let first = index == 0 && self.options.boot_aggregate;
        let template = match &self.options.templates {
            TemplateMix::Single(template) => Arc::clone(template),
            TemplateMix::All => {
                let position = (index % self.all.len() as u64) as usize;
                Arc::clone(&self.all[position])
            }
        };
        let violation =
            !first && self.options.violation_every.is_some_and(|every| every > 0 && (index + 1) % every == 0);
        let name = if first { b"boot_aggregate".to_vec() } else { self.path() };

        let mut data = TemplateData::new();
        let mut field = Vec::with_capacity(64);
        for id in template.fields().to_vec() {
            field.clear();
            self.field(id, violation, &name, &mut field);
            // Templates have at most 15 fields, so every push fits.
            let _ = data.push(&field);
        }
        let mut record =
            Record { pcr: 10, template, data, digest: Digest::zero(0), byte_order: self.options.byte_order };
        record.digest = if violation {
            Digest::zero(self.options.bank.digest_size())
        } else {
            record.computed_bank_digest(&self.options.bank)
        };
        record
    }
}

impl Iterator for SyntheticList {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.index >= self.options.records {
            return None;
        }
        let record = self.make();
        self.index += 1;
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_records_are_valid_and_deterministic() {
        let options =
            SynthOptions { records: 50, templates: TemplateMix::All, violation_every: Some(7), ..Default::default() };
        let first: Vec<Record> = SyntheticList::new(options.clone()).collect();
        let second: Vec<Record> = SyntheticList::new(options).collect();
        assert_eq!(first, second);
        assert_eq!(first.len(), 50);
        assert_eq!(first[0].event_name(), Some(&b"boot_aggregate"[..]));
        for record in &first {
            record.validate().unwrap();
            if !record.is_violation() {
                assert_eq!(record.bank_digest(&Bank::SHA1), record.digest);
            }
        }
        assert_eq!(first.iter().filter(|r| r.is_violation()).count(), 7);
    }
}
