//! Records as the kernel keeps them, and how a measurement event becomes
//! one: template data built field by field (`ima_template_lib.c`), then one
//! template digest per slot (`ima_calc_field_array_hash`).

use std::sync::Arc;

use imalog_core::{ByteOrder, Digest, FieldId, HashAlgorithm, Record, Template, TemplateData};

use crate::config::Slots;

/// xattr type byte of an IMA signature (`EVM_IMA_XATTR_DIGSIG`).
pub const IMA_XATTR_DIGSIG: u8 = 3;
/// xattr type byte of an fs-verity signature (`IMA_VERITY_DIGSIG`).
pub const IMA_VERITY_DIGSIG: u8 = 6;
/// xattr type byte of an EVM portable signature (`EVM_XATTR_PORTABLE_DIGSIG`).
pub const EVM_XATTR_PORTABLE_DIGSIG: u8 = 5;

/// EVM-protected xattrs in the order of EVM's default configuration; the
/// `xattrnames` field lists the present ones in this order.
pub const EVM_XATTR_ORDER: [&str; 8] = [
    "security.selinux",
    "security.SMACK64",
    "security.SMACK64EXEC",
    "security.SMACK64TRANSMUTE",
    "security.SMACK64MMAP",
    "security.apparmor",
    "security.ima",
    "security.capability",
];

/// Longest legacy `n` value (`IMA_EVENT_NAME_LEN_MAX`).
const LEGACY_NAME_MAX: usize = 255;

/// A record in the kernel's lists: the record itself (its `digest` is the
/// SHA-1 slot, all zero for a violation) and every slot's digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// PCR, template, template data, SHA-1 slot digest, byte order.
    pub record: Record,
    /// Every slot's digest, back to back in slot order.
    digests: Box<[u8]>,
}

impl Entry {
    /// Computes every slot's digest of `record`, or zeros for a violation.
    pub fn new(mut record: Record, slots: &Slots, violation: bool) -> Self {
        let mut digests = vec![0u8; slots.digest_bytes()];
        if !violation {
            for (index, slot) in slots.all().iter().enumerate() {
                let digest = record.computed_bank_digest(&slot.bank);
                digests[slots.range(index)].copy_from_slice(digest.as_bytes());
            }
        }
        let sha1 = slots.range(slots.sha1());
        record.digest = Digest::from_slice(&digests[sha1]).unwrap_or_else(|| Digest::zero(20));
        Entry { record, digests: digests.into_boxed_slice() }
    }

    /// The digest in slot `index`.
    pub fn slot_digest(&self, slots: &Slots, index: usize) -> Digest {
        let range = slots.range(index);
        self.digests.get(range).and_then(Digest::from_slice).unwrap_or_else(|| Digest::zero(0))
    }

    /// True for a violation record (all digests zero).
    pub fn is_violation(&self) -> bool {
        self.digests.iter().all(|&b| b == 0)
    }
}

/// Everything the template fields of one measurement draw on
/// (`struct ima_event_data`).
#[derive(Clone, Debug, Default)]
pub struct EventData<'a> {
    /// Event name: a file path, or a buffer's name.
    pub name: &'a [u8],
    /// Last path component, used by the legacy `n` field for long names.
    pub file_name: Option<&'a [u8]>,
    /// The measured digest and its algorithm (file content or buffer).
    pub digest: Option<(HashAlgorithm, Digest)>,
    /// SHA-1 of the content, for the legacy `d` field when `digest` is not
    /// SHA-1.
    pub sha1: Option<Digest>,
    /// Buffer data (`buf` field).
    pub buffer: Option<&'a [u8]>,
    /// `security.ima` value.
    pub ima_xattr: Option<&'a [u8]>,
    /// `security.evm` value.
    pub evm_xattr: Option<&'a [u8]>,
    /// Present EVM-protected xattrs, as (name, value).
    pub protected_xattrs: Vec<(&'a str, &'a [u8])>,
    /// Inode owner, group and mode, when there is a file.
    pub inode: Option<(u32, u32, u16)>,
    /// True for a violation: digests are zero and no xattrs are read.
    pub violation: bool,
}

/// Builds the template data of `template` for an event, with integers in
/// `order` and the violation digest of `ima_hash`.
pub fn build_template_data(
    template: &Template,
    event: &EventData<'_>,
    ima_hash: HashAlgorithm,
    order: ByteOrder,
) -> TemplateData {
    let mut data = TemplateData::new();
    let mut field = Vec::with_capacity(128);
    for id in template.fields() {
        field.clear();
        write_field(*id, event, ima_hash, order, &mut field);
        // Templates have at most 15 fields, so every push fits.
        let _ = data.push(&field);
    }
    data
}

fn write_field(id: FieldId, event: &EventData<'_>, ima_hash: HashAlgorithm, order: ByteOrder, out: &mut Vec<u8>) {
    let digest = match (&event.digest, event.violation) {
        (Some((algorithm, digest)), false) => Some((*algorithm, *digest)),
        _ => None,
    };
    match id {
        FieldId::D => {
            // SHA-1 or MD5 only; other file digests are recomputed as SHA-1.
            let value = match digest {
                Some((HashAlgorithm::Sha1, digest)) => Some(digest),
                Some(_) => event.sha1,
                None => None,
            };
            match value {
                Some(value) => out.extend_from_slice(value.as_bytes()),
                None => out.extend_from_slice(&[0; 20]),
            }
        }
        FieldId::DNg | FieldId::DNgV2 => {
            if id == FieldId::DNgV2 {
                out.extend_from_slice(b"ima:");
            }
            // A violation names the IMA hash and carries its zero digest.
            let (algorithm, value) = match digest {
                Some((algorithm, value)) => (algorithm, value),
                None => (ima_hash, Digest::zero(ima_hash.digest_size())),
            };
            out.extend_from_slice(algorithm.kernel_name().as_bytes());
            out.extend_from_slice(b":\0");
            out.extend_from_slice(value.as_bytes());
        }
        FieldId::N | FieldId::NNg => {
            let mut name = event.name;
            // Only the legacy `n` field is limited to 255 characters.
            if id == FieldId::N && name.len() > LEGACY_NAME_MAX {
                name = match event.file_name {
                    Some(short) if short.len() <= LEGACY_NAME_MAX => short,
                    _ => &name[..LEGACY_NAME_MAX],
                };
            }
            out.extend(name.iter().map(|&b| if b == b' ' { b'_' } else { b }));
            out.push(0);
        }
        FieldId::Sig => match event.ima_xattr {
            Some(value)
                if !event.violation && matches!(value.first(), Some(&IMA_XATTR_DIGSIG | &IMA_VERITY_DIGSIG)) =>
            {
                out.extend_from_slice(value)
            }
            _ => write_evmsig(event, out),
        },
        FieldId::EvmSig => write_evmsig(event, out),
        FieldId::Buf => {
            if let Some(buffer) = event.buffer {
                out.extend_from_slice(buffer);
            }
        }
        // Appended signatures are not modelled: both fields stay empty.
        FieldId::DModsig | FieldId::Modsig => {}
        FieldId::Iuid => {
            if let Some((uid, _, _)) = event.inode {
                out.extend_from_slice(&order.u32_bytes(uid));
            }
        }
        FieldId::Igid => {
            if let Some((_, gid, _)) = event.inode {
                out.extend_from_slice(&order.u32_bytes(gid));
            }
        }
        FieldId::Imode => {
            if let Some((_, _, mode)) = event.inode {
                out.extend_from_slice(&order.u16_bytes(mode));
            }
        }
        FieldId::XattrNames if !event.protected_xattrs.is_empty() => {
            let names: Vec<&str> = event.protected_xattrs.iter().map(|(n, _)| *n).collect();
            out.extend_from_slice(names.join("|").as_bytes());
            out.push(0);
        }
        FieldId::XattrLengths => {
            for (_, value) in &event.protected_xattrs {
                out.extend_from_slice(&order.u32_bytes(value.len() as u32));
            }
        }
        FieldId::XattrValues => {
            for (_, value) in &event.protected_xattrs {
                out.extend_from_slice(value);
            }
        }
        _ => {}
    }
}

fn write_evmsig(event: &EventData<'_>, out: &mut Vec<u8>) {
    if let Some(value) = event.evm_xattr {
        if !event.violation && value.first() == Some(&EVM_XATTR_PORTABLE_DIGSIG) {
            out.extend_from_slice(value);
        }
    }
}

/// Builds a record for an event.
pub fn build_record(
    template: &Arc<Template>,
    pcr: u32,
    event: &EventData<'_>,
    ima_hash: HashAlgorithm,
    order: ByteOrder,
) -> Record {
    let data = build_template_data(template, event, ima_hash, order);
    Record { pcr, template: Arc::clone(template), data, digest: Digest::zero(20), byte_order: order }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imalog_core::Bank;

    #[test]
    fn ima_ng_file_event_matches_kernel_layout() {
        let digest = HashAlgorithm::Sha256.digest(b"content");
        let event = EventData {
            name: b"/usr/bin/my tool",
            digest: Some((HashAlgorithm::Sha256, digest)),
            ..Default::default()
        };
        let template = Template::builtin("ima-ng").unwrap();
        let record = build_record(&template, 10, &event, HashAlgorithm::Sha256, ByteOrder::Little);
        let mut expected = b"sha256:\0".to_vec();
        expected.extend_from_slice(digest.as_bytes());
        assert_eq!(record.data.field(0), Some(expected.as_slice()));
        assert_eq!(record.data.field(1), Some(&b"/usr/bin/my_tool\0"[..]));
    }

    #[test]
    fn violation_uses_ima_hash_zero_digest() {
        let event = EventData { name: b"/tmp/x", violation: true, ..Default::default() };
        let template = Template::builtin("ima-sig").unwrap();
        let record = build_record(&template, 10, &event, HashAlgorithm::Sha256, ByteOrder::Little);
        let mut expected = b"sha256:\0".to_vec();
        expected.extend_from_slice(&[0; 32]);
        assert_eq!(record.data.field(0), Some(expected.as_slice()));
        assert_eq!(record.data.field(2), Some(&b""[..]));
        let slots = Slots::new(&[Bank::SHA1, Bank::SHA256], HashAlgorithm::Sha256);
        let entry = Entry::new(record, &slots, true);
        assert!(entry.is_violation());
        assert!(entry.record.is_violation());
    }

    #[test]
    fn signature_field_takes_only_signatures() {
        const SIGNATURE: &[u8] = &[IMA_XATTR_DIGSIG, 2, 4, 1, 2, 3, 4, 0, 1, 9];
        const HASH_XATTR: &[u8] = &[4, 1, 2, 3];
        const PORTABLE: &[u8] = &[EVM_XATTR_PORTABLE_DIGSIG, 2, 4];
        let template = Template::builtin("ima-sig").unwrap();
        let digest = Some((HashAlgorithm::Sha256, Digest::zero(32)));
        let with = |ima: &'static [u8], evm: Option<&'static [u8]>| {
            let event = EventData { name: b"/a", digest, ima_xattr: Some(ima), evm_xattr: evm, ..Default::default() };
            build_template_data(&template, &event, HashAlgorithm::Sha256, ByteOrder::Little).field(2).unwrap().to_vec()
        };
        assert_eq!(with(SIGNATURE, None), SIGNATURE);
        assert_eq!(with(HASH_XATTR, None), b"");
        assert_eq!(with(HASH_XATTR, Some(PORTABLE)), PORTABLE);
    }

    #[test]
    fn legacy_name_uses_file_name_when_too_long() {
        let long = vec![b'a'; 300];
        let event = EventData {
            name: &long,
            file_name: Some(b"short"),
            digest: Some((HashAlgorithm::Sha1, Digest::zero(20))),
            ..Default::default()
        };
        let template = Template::builtin("ima").unwrap();
        let data = build_template_data(&template, &event, HashAlgorithm::Sha1, ByteOrder::Little);
        assert_eq!(data.field(1), Some(&b"short\0"[..]));
        let event = EventData { file_name: None, ..event };
        let data = build_template_data(&template, &event, HashAlgorithm::Sha1, ByteOrder::Little);
        assert_eq!(data.field(1).unwrap().len(), 256);
    }
}
