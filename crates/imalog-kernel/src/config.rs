//! Build and boot configuration of the modelled kernel, and the template
//! digest slots it derives from the TPM's banks (`ima_init_crypto`).

use std::sync::Arc;

use imalog_core::{Bank, ByteOrder, HashAlgorithm, Template};

/// What a kernel build and its boot parameters decide.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// The IMA hash algorithm (`ima_hash=`, `CONFIG_IMA_DEFAULT_HASH`): file
    /// digests, and the template digest slot the hash table is keyed on.
    pub ima_hash: HashAlgorithm,
    /// Template of file measurements (`ima_template=`).
    pub template: Arc<Template>,
    /// Template of buffer and critical-data measurements.
    pub buffer_template: Arc<Template>,
    /// `CONFIG_IMA_STAGING`: create the `_staged` files that take `A` and `D`.
    pub staging: bool,
    /// Whether the original list files take `N` when staging is off. The
    /// merged 7.2 code creates them writable (0660) with the `N` handler
    /// whatever `CONFIG_IMA_STAGING` says, which its documentation
    /// contradicts; true reproduces the code, false the documentation.
    pub n_on_original_without_staging: bool,
    /// Boot parameter `ima_flush_htable`: `D` empties the hash table, and
    /// `N` is rejected.
    pub flush_htable: bool,
    /// `CONFIG_IMA_DISABLE_HTABLE`: no duplicate suppression at all.
    pub htable_disabled: bool,
    /// `CONFIG_IMA_KEXEC`: carry the list across kexec and keep the size
    /// counters.
    pub kexec: bool,
    /// `CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB`; 0 means half a page.
    pub kexec_extra_memory_kb: u64,
    /// `CONFIG_IMA_MEASURE_PCR_IDX`: PCR of violations, the boot aggregate
    /// and measurements whose rule names no PCR.
    pub default_pcr: u32,
    /// Byte order of the modelled CPU; `ima_canonical_fmt` makes every list
    /// integer little-endian regardless.
    pub byte_order: ByteOrder,
    /// `ima_canonical_fmt`.
    pub canonical_format: bool,
    /// Whether the policy measures critical data (`func=CRITICAL_DATA`), so
    /// that the `ima_kexec` records `kexec_load` and `kexec_execute` appear.
    pub measure_critical_data: bool,
    /// Memory of the modelled machine, for the kexec rule that the list
    /// must not need more than half of it.
    pub ram_bytes: u64,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            ima_hash: HashAlgorithm::Sha256,
            template: Template::default_template(),
            buffer_template: Template::builtin("ima-buf").unwrap_or_else(Template::default_template),
            staging: true,
            n_on_original_without_staging: true,
            flush_htable: false,
            htable_disabled: false,
            kexec: true,
            kexec_extra_memory_kb: 0,
            default_pcr: 10,
            byte_order: ByteOrder::Little,
            canonical_format: false,
            measure_critical_data: true,
            ram_bytes: 8 << 30,
        }
    }
}

impl KernelConfig {
    /// The byte order of list integers and template digest input.
    pub fn list_byte_order(&self) -> ByteOrder {
        if self.canonical_format {
            ByteOrder::Little
        } else {
            self.byte_order
        }
    }

    /// `ima_flush_htable` has an effect only with a hash table.
    pub fn flushes_htable(&self) -> bool {
        self.flush_htable && !self.htable_disabled
    }

    /// Whether the original list files accept `N`.
    pub fn original_files_writable(&self) -> bool {
        self.staging || self.n_on_original_without_staging
    }
}

/// One template digest slot of every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The bank whose digest rules fill this slot.
    pub bank: Bank,
    /// True for an allocated TPM bank, false for an extra slot.
    pub tpm_bank: bool,
    /// True when securityfs exports a list for this slot.
    pub exported: bool,
}

/// The slots of a kernel, in record order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots {
    slots: Vec<Slot>,
    sha1: usize,
    ima_hash: usize,
    /// Byte offset of each slot's digest in an entry's digest buffer.
    offsets: Vec<usize>,
}

impl Slots {
    /// Derives the slots from the TPM's banks (`ima_init_crypto`): one per
    /// bank in TPM order, then a SHA-1 slot if no bank is SHA-1 (also with no
    /// TPM), then a slot for the IMA hash if it is neither a bank nor SHA-1.
    /// Only bank slots and the extra SHA-1 slot are exported.
    pub fn new(tpm_banks: &[Bank], ima_hash: HashAlgorithm) -> Self {
        let mut slots: Vec<Slot> =
            tpm_banks.iter().map(|bank| Slot { bank: *bank, tpm_bank: true, exported: true }).collect();
        let find = |slots: &[Slot], algorithm: HashAlgorithm| {
            slots.iter().position(|s| s.bank.kernel_algorithm() == Some(algorithm))
        };
        let sha1 = match find(&slots, HashAlgorithm::Sha1) {
            Some(index) => index,
            None => {
                slots.push(Slot { bank: Bank::SHA1, tpm_bank: false, exported: true });
                slots.len() - 1
            }
        };
        let ima_hash_index = match find(&slots, ima_hash) {
            Some(index) => index,
            None => {
                slots.push(Slot { bank: Bank::new(ima_hash), tpm_bank: false, exported: false });
                slots.len() - 1
            }
        };
        let mut offsets = Vec::with_capacity(slots.len());
        let mut offset = 0;
        for slot in &slots {
            offsets.push(offset);
            offset += slot.bank.digest_size();
        }
        Slots { slots, sha1, ima_hash: ima_hash_index, offsets }
    }

    /// Every slot.
    pub fn all(&self) -> &[Slot] {
        &self.slots
    }

    /// Index of the SHA-1 slot (`ima_sha1_idx`).
    pub fn sha1(&self) -> usize {
        self.sha1
    }

    /// Index of the IMA hash slot (`ima_hash_algo_idx`).
    pub fn ima_hash(&self) -> usize {
        self.ima_hash
    }

    /// Number of TPM bank slots, which come first.
    pub fn tpm_banks(&self) -> usize {
        self.slots.iter().take_while(|s| s.tpm_bank).count()
    }

    /// Total bytes of one record's digests.
    pub fn digest_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.bank.digest_size()).sum()
    }

    /// The byte range of slot `index` in a record's digest buffer.
    pub fn range(&self, index: usize) -> std::ops::Range<usize> {
        let start = self.offsets.get(index).copied().unwrap_or(0);
        let size = self.slots.get(index).map(|s| s.bank.digest_size()).unwrap_or(0);
        start..start + size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_for_sha256_only_tpm() {
        let slots = Slots::new(&[Bank::SHA256], HashAlgorithm::Sha256);
        assert_eq!(slots.all().len(), 2);
        assert_eq!(slots.sha1(), 1);
        assert_eq!(slots.ima_hash(), 0);
        assert!(slots.all()[1].exported);
        assert!(!slots.all()[1].tpm_bank);
    }

    #[test]
    fn slots_without_tpm_have_sha1_and_ima_hash() {
        let slots = Slots::new(&[], HashAlgorithm::Sha512);
        assert_eq!(slots.all().len(), 2);
        assert_eq!(slots.sha1(), 0);
        assert_eq!(slots.ima_hash(), 1);
        assert!(!slots.all()[1].exported);
        assert_eq!(slots.tpm_banks(), 0);
        assert_eq!(slots.range(1), 20..84);
    }

    #[test]
    fn slots_reuse_banks() {
        let slots = Slots::new(&[Bank::SHA1, Bank::SHA256, Bank::SHA384], HashAlgorithm::Sha256);
        assert_eq!(slots.all().len(), 3);
        assert_eq!(slots.sha1(), 0);
        assert_eq!(slots.ima_hash(), 1);
        assert_eq!(slots.digest_bytes(), 100);
    }
}
