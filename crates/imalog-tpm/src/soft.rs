//! An in-process TPM: PCR banks in memory, extended with the banks' own
//! hash algorithms, and quotes signed by a software attestation key in the
//! TPM 2.0 formats.

use std::sync::Arc;
use std::time::Instant;

use imalog_core::{Bank, Digest, MAX_DIGEST_SIZE};

use crate::marshal::Writer;
use crate::soft_ak::SoftAk;
use crate::{AkAlgorithm, Quote, Tpm, TpmError, PCR_COUNT, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};

/// The PCRs that a PC client TPM resets to all ones instead of zeros: the
/// DRTM PCRs, which only a dynamic launch sets to zero (TCG PC Client
/// Platform TPM Profile). swtpm 0.7.1 starts them at all ones too.
// NOTE: a real TPM also rejects extends of these PCRs from locality 0
// (TPM_RC_LOCALITY); SoftTpm accepts them.
const ALL_ONES_PCRS: std::ops::RangeInclusive<u32> = 17..=22;

/// Maximum bytes of qualifying data in a quote: the size of `TPMU_HA`, the
/// largest digest (SHA-512), as for [`crate::TssTpm`].
const MAX_NONCE_SIZE: usize = 64;

/// Bytes of PCR bitmap per bank in the `TPML_PCR_SELECTION` of a quote, for
/// PCRs 0 to 23, as TPMs with 24 PCRs marshal it.
const SIZE_OF_SELECT: usize = 3;

/// The `firmwareVersion` that SoftTpm quotes report.
pub const SOFT_TPM_FIRMWARE_VERSION: u64 = 0x0001_0000_0000_0000;

/// An in-process TPM with PCR banks in memory.
///
/// Quotes are real TPM 2.0 quotes: a `TPMS_ATTEST` signed by a software
/// attestation key, which a verifier checks like a TPM's (see
/// [`crate::verify_quote`]). The key acts as a primary key of the
/// endorsement hierarchy, so the attest's `qualifiedSigner` is its qualified
/// name there. A clone keeps the attestation key once the TPM has one.
#[derive(Clone, Debug)]
pub struct SoftTpm {
    banks: Vec<Bank>,
    /// `pcrs[b][i]` is PCR `i` of `banks[b]`.
    pcrs: Vec<Vec<Digest>>,
    ak_algorithm: AkAlgorithm,
    /// The attestation key, or `None` before the first use of the key of a
    /// TPM made without a seed, which then gets a random key.
    ak: Option<Arc<SoftAk>>,
    /// The time the TPM was made, which `clockInfo.clock` counts from.
    created: Instant,
    /// The clock of the last quote, which the next quote's exceeds.
    clock: u64,
    reset_count: u32,
    restart_count: u32,
}

impl SoftTpm {
    /// Creates a TPM with these banks, every PCR reset. Banks whose hash
    /// imalog does not implement are rejected, because they could not be
    /// extended. The attestation key is a random P-256 key, made at its
    /// first use.
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
        Ok(Self::with_banks(unique))
    }

    /// Creates a TPM with these banks and an attestation key of `algorithm`
    /// derived from `seed`, so that tests get the same key every time.
    pub fn with_attestation_key(banks: &[Bank], algorithm: AkAlgorithm, seed: &[u8]) -> Result<Self, TpmError> {
        let mut tpm = Self::new(banks)?;
        tpm.ak_algorithm = algorithm;
        tpm.ak = Some(Arc::new(SoftAk::derive(algorithm, seed)?));
        Ok(tpm)
    }

    fn with_banks(banks: Vec<Bank>) -> Self {
        let pcrs = banks.iter().map(reset_bank).collect();
        SoftTpm {
            banks,
            pcrs,
            ak_algorithm: AkAlgorithm::default(),
            ak: None,
            created: Instant::now(),
            clock: 0,
            reset_count: 0,
            restart_count: 0,
        }
    }

    /// Creates a TPM with the banks swtpm allocates by default (sha1,
    /// sha256, sha384 and sha512) and a random P-256 attestation key, made
    /// at its first use.
    pub fn with_default_banks() -> Self {
        Self::with_banks(vec![Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512])
    }

    /// Returns the algorithm of the attestation key.
    pub fn ak_algorithm(&self) -> AkAlgorithm {
        self.ak_algorithm
    }

    /// Returns the attestation key as a marshalled `TPM2B_PUBLIC`, and
    /// creates a random key first for a TPM made without a seed.
    pub fn ak_public(&mut self) -> Result<Vec<u8>, TpmError> {
        Ok(self.attestation_key()?.public().to_tpm2b())
    }

    /// Simulates a TPM Reset (power cycle or reboot,
    /// `TPM2_Startup(CLEAR)` after `TPM2_Shutdown(CLEAR)` or power loss):
    /// every PCR returns to its reset value, `resetCount` goes up by one and
    /// `restartCount` returns to 0. The clock and the attestation key stay.
    pub fn reset(&mut self) {
        self.pcrs = self.banks.iter().map(reset_bank).collect();
        self.reset_count = self.reset_count.wrapping_add(1);
        self.restart_count = 0;
    }

    /// Simulates a TPM Resume (suspend to RAM, `TPM2_Startup(STATE)` after
    /// `TPM2_Shutdown(STATE)`): `restartCount` goes up by one and the PCRs
    /// keep their values.
    pub fn restart(&mut self) {
        self.restart_count = self.restart_count.wrapping_add(1);
    }

    /// Returns the number of resets since the TPM was made
    /// (`clockInfo.resetCount`).
    pub fn reset_count(&self) -> u32 {
        self.reset_count
    }

    /// Returns the number of restarts since the last reset
    /// (`clockInfo.restartCount`).
    pub fn restart_count(&self) -> u32 {
        self.restart_count
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

    fn attestation_key(&mut self) -> Result<Arc<SoftAk>, TpmError> {
        if let Some(ak) = &self.ak {
            return Ok(Arc::clone(ak));
        }
        let ak = Arc::new(SoftAk::random(self.ak_algorithm)?);
        self.ak = Some(Arc::clone(&ak));
        Ok(ak)
    }

    /// Returns milliseconds since the TPM was made, and at least 1 more than
    /// the last value returned, so that a verifier that rejects a clock
    /// that did not advance accepts quotes made within one millisecond.
    fn advance_clock(&mut self) -> u64 {
        let elapsed = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock = elapsed.max(self.clock.saturating_add(1));
        self.clock
    }

    /// Checks a quote's selection and returns each bank's index with its
    /// PCRs sorted and without repeats.
    fn quote_selection(&self, selection: &[(Bank, Vec<u32>)]) -> Result<Vec<(usize, Vec<u32>)>, TpmError> {
        let mut checked = Vec::with_capacity(selection.len());
        for (position, (bank, pcrs)) in selection.iter().enumerate() {
            let index = self.bank_index(bank)?;
            if selection[..position].iter().any(|(other, _)| other.tpm_alg_id() == bank.tpm_alg_id()) {
                return Err(TpmError::DuplicateBank(*bank));
            }
            let mut pcrs = pcrs.clone();
            if let Some(&pcr) = pcrs.iter().find(|&&pcr| pcr >= PCR_COUNT) {
                return Err(TpmError::NoSuchPcr { pcr });
            }
            pcrs.sort_unstable();
            pcrs.dedup();
            checked.push((index, pcrs));
        }
        Ok(checked)
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

    /// Signs the selected PCRs as TPM2_Quote does: a quote `TPMS_ATTEST`
    /// whose `pcrDigest` is the hash, with the signature's hash algorithm,
    /// of the selected PCR values (banks in selection order, PCRs in
    /// ascending order), and a `TPMT_SIGNATURE` over it.
    fn quote(&mut self, nonce: &[u8], selection: &[(Bank, Vec<u32>)]) -> Result<Quote, TpmError> {
        if nonce.len() > MAX_NONCE_SIZE {
            return Err(TpmError::NonceSize { max: MAX_NONCE_SIZE, found: nonce.len() });
        }
        let selection = self.quote_selection(selection)?;
        let ak = self.attestation_key()?;
        let clock = self.advance_clock();

        let hash = ak.algorithm().signing_scheme().hash;
        let values: Vec<&[u8]> = selection
            .iter()
            .flat_map(|(index, pcrs)| pcrs.iter().map(|&pcr| self.pcrs[*index][pcr as usize].as_bytes()))
            .collect();
        let pcr_digest = hash.digest_parts(&values);

        let mut attest = Writer::default();
        attest
            .u32(TPM_GENERATED_VALUE)
            .u16(TPM_ST_ATTEST_QUOTE)
            .sized(ak.qualified_name())
            .sized(nonce)
            .u64(clock)
            .u32(self.reset_count)
            .u32(self.restart_count)
            .u8(1)
            .u64(SOFT_TPM_FIRMWARE_VERSION)
            .u32(selection.len() as u32);
        for (index, pcrs) in &selection {
            let mut bitmap = [0u8; SIZE_OF_SELECT];
            for &pcr in pcrs {
                bitmap[(pcr / 8) as usize] |= 1 << (pcr % 8);
            }
            attest.u16(self.banks[*index].tpm_alg_id()).u8(SIZE_OF_SELECT as u8).raw(&bitmap);
        }
        attest.sized(pcr_digest.as_bytes());

        let signature = ak.sign(&attest.bytes)?;
        Ok(Quote { attest: attest.bytes, signature: signature.to_bytes(), ak_public: ak.public().to_tpm2b() })
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
