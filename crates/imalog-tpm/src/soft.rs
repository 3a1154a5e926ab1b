//! An in-process TPM: PCR banks in memory, extended with the banks' own
//! hash algorithms.

use imalog_core::{Bank, Digest, MAX_DIGEST_SIZE};

use crate::{Tpm, TpmError, PCR_COUNT};

/// The PCRs that a PC client TPM resets to all ones instead of zeros: the
/// DRTM PCRs, which only a dynamic launch sets to zero (TCG PC Client
/// Platform TPM Profile). swtpm 0.7.1 starts them at all ones too.
// NOTE: a real TPM also rejects extends of these PCRs from locality 0
// (TPM_RC_LOCALITY); SoftTpm accepts them.
const ALL_ONES_PCRS: std::ops::RangeInclusive<u32> = 17..=22;

/// An in-process TPM with PCR banks in memory.
#[derive(Clone, Debug)]
pub struct SoftTpm {
    banks: Vec<Bank>,
    /// `pcrs[b][i]` is PCR `i` of `banks[b]`.
    pcrs: Vec<Vec<Digest>>,
}

impl SoftTpm {
    /// A TPM with these banks, every PCR reset. Banks whose hash imalog does
    /// not implement are rejected, because they could not be extended.
    pub fn new(banks: &[Bank]) -> Result<Self, TpmError> {
        let mut unique: Vec<Bank> = Vec::new();
        for bank in banks {
            if bank.tpm_algorithm().is_none() {
                return Err(TpmError::Device(format!("bank {bank}: no implementation of its hash algorithm")));
            }
            if !unique.iter().any(|b| b.tpm_alg_id() == bank.tpm_alg_id()) {
                unique.push(*bank);
            }
        }
        let pcrs = unique.iter().map(reset_bank).collect();
        Ok(SoftTpm { banks: unique, pcrs })
    }

    /// A TPM with the banks swtpm allocates by default: sha1, sha256, sha384
    /// and sha512.
    pub fn with_default_banks() -> Self {
        let banks = [Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512];
        let pcrs = banks.iter().map(reset_bank).collect();
        SoftTpm { banks: banks.to_vec(), pcrs }
    }

    /// Extends PCRs 0 to 9 with digests derived from `seed`, as firmware and
    /// a boot loader would, so that a `boot_aggregate` is not the hash of
    /// zeros.
    pub fn simulate_boot(&mut self, seed: &[u8]) {
        for pcr in 0..10u32 {
            let digests: Vec<Digest> = self
                .banks
                .iter()
                .map(|bank| {
                    let algorithm = bank.tpm_algorithm().unwrap_or(imalog_core::HashAlgorithm::Sha256);
                    algorithm.digest_parts(&[b"imalog simulated boot event ", seed, &pcr.to_le_bytes()])
                })
                .collect();
            // The digests were made with each bank's own algorithm.
            let _ = self.extend(pcr, &digests);
        }
    }

    fn bank_index(&self, bank: &Bank) -> Result<usize, TpmError> {
        self.banks.iter().position(|b| b.tpm_alg_id() == bank.tpm_alg_id()).ok_or(TpmError::NoSuchBank(*bank))
    }
}

/// Returns the values of a bank's PCRs after `TPM2_Startup(CLEAR)`.
fn reset_bank(bank: &Bank) -> Vec<Digest> {
    (0..PCR_COUNT)
        .map(|pcr| {
            if ALL_ONES_PCRS.contains(&pcr) {
                Digest::from_bytes_prefix(&[0xff; MAX_DIGEST_SIZE], bank.digest_size())
            } else {
                bank.reset_value()
            }
        })
        .collect()
}

impl Tpm for SoftTpm {
    fn banks(&self) -> Vec<Bank> {
        self.banks.clone()
    }

    fn extend(&mut self, pcr: u32, digests: &[Digest]) -> Result<(), TpmError> {
        if pcr >= PCR_COUNT {
            return Err(TpmError::NoSuchPcr { pcr });
        }
        if digests.len() != self.banks.len() {
            return Err(TpmError::DigestCount { expected: self.banks.len(), found: digests.len() });
        }
        for (bank, digest) in self.banks.iter().zip(digests) {
            if digest.len() != bank.digest_size() {
                return Err(TpmError::DigestSize { bank: *bank, expected: bank.digest_size(), found: digest.len() });
            }
        }
        for (index, digest) in digests.iter().enumerate() {
            let bank = self.banks[index];
            let slot = &mut self.pcrs[index][pcr as usize];
            *slot = bank.extend(slot, digest).ok_or(TpmError::NoSuchBank(bank))?;
        }
        Ok(())
    }

    fn read(&mut self, bank: &Bank, pcr: u32) -> Result<Digest, TpmError> {
        if pcr >= PCR_COUNT {
            return Err(TpmError::NoSuchPcr { pcr });
        }
        let index = self.bank_index(bank)?;
        Ok(self.pcrs[index][pcr as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imalog_core::HashAlgorithm;

    #[test]
    fn soft_tpm_extend_matches_hash_chain() {
        let mut tpm = SoftTpm::new(&[Bank::SHA1, Bank::SHA256]).unwrap();
        let digests = [HashAlgorithm::Sha1.digest(b"a"), HashAlgorithm::Sha256.digest(b"a")];
        tpm.extend(10, &digests).unwrap();
        let expected = HashAlgorithm::Sha256.digest_parts(&[&[0u8; 32], digests[1].as_bytes()]);
        assert_eq!(tpm.read(&Bank::SHA256, 10).unwrap(), expected);
        assert_eq!(tpm.read(&Bank::SHA1, 11).unwrap(), Digest::zero(20));
    }

    #[test]
    fn soft_tpm_rejects_bad_extends() {
        let mut tpm = SoftTpm::new(&[Bank::SHA1]).unwrap();
        assert_eq!(tpm.extend(24, &[Digest::zero(20)]), Err(TpmError::NoSuchPcr { pcr: 24 }));
        assert_eq!(tpm.extend(10, &[]), Err(TpmError::DigestCount { expected: 1, found: 0 }));
        assert!(matches!(tpm.extend(10, &[Digest::zero(32)]), Err(TpmError::DigestSize { .. })));
        assert_eq!(tpm.read(&Bank::SHA256, 10), Err(TpmError::NoSuchBank(Bank::SHA256)));
    }

    #[test]
    fn simulated_boot_changes_pcrs_0_to_9_only() {
        let mut tpm = SoftTpm::with_default_banks();
        tpm.simulate_boot(b"seed");
        assert_ne!(tpm.read(&Bank::SHA256, 0).unwrap(), Digest::zero(32));
        assert_ne!(tpm.read(&Bank::SHA1, 9).unwrap(), Digest::zero(20));
        assert_eq!(tpm.read(&Bank::SHA256, 10).unwrap(), Digest::zero(32));
    }

    #[test]
    fn soft_tpm_resets_drtm_pcrs_to_all_ones() {
        let mut tpm = SoftTpm::new(&[Bank::SHA1, Bank::SHA384]).unwrap();
        for pcr in 0..PCR_COUNT {
            let sha1 = tpm.read(&Bank::SHA1, pcr).unwrap();
            let sha384 = tpm.read(&Bank::SHA384, pcr).unwrap();
            let expected_byte = if (17..=22).contains(&pcr) { 0xff } else { 0 };
            assert!(sha1.as_bytes().iter().all(|&b| b == expected_byte), "sha1 PCR {pcr}: {sha1}");
            assert!(sha384.as_bytes().iter().all(|&b| b == expected_byte), "sha384 PCR {pcr}: {sha384}");
            assert_eq!(sha384.len(), 48);
        }
    }
}
