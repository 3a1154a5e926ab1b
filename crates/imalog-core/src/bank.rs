//! TPM PCR banks as IMA sees them: a TPM algorithm, a digest size, and
//! whether the kernel computes template digests with that algorithm.
//!
//! The kernel fills one template digest slot per allocated TPM bank. For a
//! bank whose TPM algorithm the TPM driver does not map to a kernel hash, or
//! whose hash transform IMA failed to allocate, the slot holds the SHA-1
//! template digest followed by zero bytes up to the bank's size ("padded
//! SHA-1", `ima_calc_field_array_hash`). Violations extend a 0xFF pattern,
//! which for unmapped algorithms covers only the first 20 bytes
//! (`ima_init_digests`). The TPM itself still extends the bank with its own
//! algorithm, so replaying such a bank needs that algorithm's hash.

use std::fmt;
use std::str::FromStr;

use crate::hash::{Digest, HashAlgorithm, MAX_DIGEST_SIZE};

const SHA1_SIZE: usize = 20;

/// A PCR bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bank {
    tpm_alg_id: u16,
    digest_size: u8,
    /// The kernel hash the TPM driver maps this algorithm to.
    kernel_algorithm: Option<HashAlgorithm>,
    /// False when IMA fills the slot with padded SHA-1.
    hashable: bool,
}

impl Bank {
    /// The bank of an algorithm, mapped or not as the Linux TPM driver does.
    pub const fn new(algorithm: HashAlgorithm) -> Self {
        let mapped = algorithm.is_kernel_mapped();
        Bank {
            tpm_alg_id: algorithm.tpm_alg_id(),
            digest_size: algorithm.digest_size() as u8,
            kernel_algorithm: if mapped { Some(algorithm) } else { None },
            hashable: mapped,
        }
    }

    /// The SHA-1 bank.
    pub const SHA1: Bank = Bank::new(HashAlgorithm::Sha1);
    /// The SHA-256 bank.
    pub const SHA256: Bank = Bank::new(HashAlgorithm::Sha256);
    /// The SHA-384 bank.
    pub const SHA384: Bank = Bank::new(HashAlgorithm::Sha384);
    /// The SHA-512 bank.
    pub const SHA512: Bank = Bank::new(HashAlgorithm::Sha512);
    /// The SM3 bank.
    pub const SM3: Bank = Bank::new(HashAlgorithm::Sm3);

    /// A bank for a TPM algorithm that neither the kernel nor imalog knows;
    /// its template digests are padded SHA-1, and its PCRs cannot be
    /// replayed.
    pub fn unmapped(tpm_alg_id: u16, digest_size: usize) -> Result<Self, BankError> {
        if !(SHA1_SIZE..=MAX_DIGEST_SIZE).contains(&digest_size) {
            return Err(BankError::DigestSize { size: digest_size });
        }
        if let Some(algorithm) = HashAlgorithm::from_tpm_alg_id(tpm_alg_id) {
            if algorithm.digest_size() != digest_size {
                return Err(BankError::SizeMismatch {
                    name: format!("tpm_alg_{tpm_alg_id:x}"),
                    expected: algorithm.digest_size(),
                    given: digest_size,
                });
            }
            return Ok(Bank::new(algorithm));
        }
        Ok(Bank { tpm_alg_id, digest_size: digest_size as u8, kernel_algorithm: None, hashable: false })
    }

    /// The same bank, but as IMA fills it when allocating the hash transform
    /// failed: template digests become padded SHA-1, while the violation
    /// pattern still covers the whole digest because the algorithm is mapped.
    pub fn without_hasher(self) -> Self {
        Bank { hashable: false, ..self }
    }

    /// TPM_ALG_ID.
    pub fn tpm_alg_id(&self) -> u16 {
        self.tpm_alg_id
    }

    /// Digest size in bytes.
    pub fn digest_size(&self) -> usize {
        self.digest_size as usize
    }

    /// The kernel hash the TPM driver maps this bank's algorithm to.
    pub fn kernel_algorithm(&self) -> Option<HashAlgorithm> {
        self.kernel_algorithm
    }

    /// The algorithm template digests are computed with, or `None` when IMA
    /// fills this bank's slot with padded SHA-1.
    pub fn template_algorithm(&self) -> Option<HashAlgorithm> {
        if self.hashable {
            self.kernel_algorithm
        } else {
            None
        }
    }

    /// The algorithm the TPM extends this bank with, if imalog implements it.
    pub fn tpm_algorithm(&self) -> Option<HashAlgorithm> {
        HashAlgorithm::from_tpm_alg_id(self.tpm_alg_id)
    }

    /// The suffix of this bank's securityfs files: the kernel hash name, or
    /// `tpm_alg_<hex id>` for an algorithm the TPM driver does not map.
    pub fn file_suffix(&self) -> String {
        match self.kernel_algorithm {
            Some(algorithm) => algorithm.kernel_name().to_string(),
            None => format!("tpm_alg_{:x}", self.tpm_alg_id),
        }
    }

    /// The bank name tpm2-tools prints (`sha256`, `sm3_256`, `sha3_256`).
    pub fn tpm2_tools_name(&self) -> String {
        match self.tpm_algorithm() {
            Some(algorithm) => algorithm.tpm2_tools_name().to_string(),
            None => format!("tpm_alg_{:x}", self.tpm_alg_id),
        }
    }

    /// The value extended into the PCR for a violation record.
    pub fn violation_digest(&self) -> Digest {
        let ff_len = if self.kernel_algorithm.is_some() { self.digest_size() } else { SHA1_SIZE };
        let mut bytes = [0u8; MAX_DIGEST_SIZE];
        bytes[..ff_len].fill(0xff);
        Digest::from_bytes_prefix(&bytes, self.digest_size())
    }

    /// Zero-pads a SHA-1 template digest to this bank's size.
    pub fn pad_sha1(&self, sha1: &Digest) -> Digest {
        let mut bytes = [0u8; MAX_DIGEST_SIZE];
        let len = sha1.len().min(self.digest_size());
        bytes[..len].copy_from_slice(&sha1.as_bytes()[..len]);
        Digest::from_bytes_prefix(&bytes, self.digest_size())
    }

    /// The PCR value after reset: all zeros (PCRs 0-15 on a PC client TPM).
    pub fn reset_value(&self) -> Digest {
        Digest::zero(self.digest_size())
    }

    /// Extends `pcr` with `value` as the TPM does: `H(pcr || value)`.
    /// Returns `None` for a TPM algorithm imalog does not implement.
    pub fn extend(&self, pcr: &Digest, value: &Digest) -> Option<Digest> {
        let algorithm = self.tpm_algorithm()?;
        Some(algorithm.digest_parts(&[pcr.as_bytes(), value.as_bytes()]))
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kernel_algorithm, self.tpm_algorithm()) {
            (Some(algorithm), _) => {
                f.write_str(algorithm.kernel_name())?;
                if !self.hashable {
                    f.write_str(":padded")?;
                }
                Ok(())
            }
            (None, Some(algorithm)) => f.write_str(algorithm.tpm2_tools_name()),
            (None, None) => write!(f, "tpm_alg_{:x}:{}", self.tpm_alg_id, self.digest_size),
        }
    }
}

/// An invalid bank name or size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// The name is neither an algorithm nor `tpm_alg_<hex>`.
    #[error(
        "unknown bank '{name}': expected sha1, sha256, sha384, sha512, sm3, sha3_256, sha3_384, \
         sha3_512 or tpm_alg_<hex id>:<digest size>"
    )]
    UnknownName {
        /// The name as given.
        name: String,
    },
    /// A bank of an unknown TPM algorithm needs its digest size.
    #[error("bank '{name}' needs its digest size in bytes, for example '{name}:32'")]
    MissingSize {
        /// The name as given.
        name: String,
    },
    /// The digest size is outside what a padded SHA-1 can fill.
    #[error("digest size {size} is not supported: expected 20 to 64 bytes")]
    DigestSize {
        /// The size as given.
        size: usize,
    },
    /// The digest size contradicts the algorithm.
    #[error("bank '{name}' has a {expected}-byte digest, not {given}")]
    SizeMismatch {
        /// The name as given.
        name: String,
        /// The algorithm's size.
        expected: usize,
        /// The size given.
        given: usize,
    },
}

impl FromStr for Bank {
    type Err = BankError;

    /// Parses `sha256`, `sm3_256`, `sha3_256`, `tpm_alg_27`, `tpm_alg_99:32`,
    /// or `sha384:padded` (a mapped algorithm whose transform the kernel
    /// could not allocate).
    fn from_str(text: &str) -> Result<Self, BankError> {
        let lower = text.trim().to_ascii_lowercase();
        let (name, suffix) = match lower.split_once(':') {
            Some((name, suffix)) => (name, Some(suffix)),
            None => (lower.as_str(), None),
        };
        let unknown = || BankError::UnknownName { name: text.to_string() };

        let algorithm = HashAlgorithm::from_name(name);
        let tpm_alg_id = match algorithm {
            Some(algorithm) => algorithm.tpm_alg_id(),
            None => parse_tpm_alg_id(name).ok_or_else(unknown)?,
        };
        let known = HashAlgorithm::from_tpm_alg_id(tpm_alg_id).map(Bank::new);

        match (suffix, known) {
            (None, Some(bank)) => Ok(bank),
            (None, None) => Err(BankError::MissingSize { name: text.to_string() }),
            (Some("padded"), Some(bank)) => Ok(bank.without_hasher()),
            (Some("padded"), None) => Err(BankError::MissingSize { name: name.to_string() }),
            (Some(size_text), _) => {
                let size: usize = size_text.parse().map_err(|_| unknown())?;
                match known {
                    Some(bank) if bank.digest_size() != size => Err(BankError::SizeMismatch {
                        name: text.to_string(),
                        expected: bank.digest_size(),
                        given: size,
                    }),
                    Some(bank) => Ok(bank),
                    None => Bank::unmapped(tpm_alg_id, size),
                }
            }
        }
    }
}

fn parse_tpm_alg_id(name: &str) -> Option<u16> {
    let hex = name.strip_prefix("tpm_alg_")?;
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    if hex.is_empty() || hex.len() > 4 {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_parse_names() {
        assert_eq!("sha256".parse::<Bank>().unwrap(), Bank::SHA256);
        assert_eq!("SM3_256".parse::<Bank>().unwrap(), Bank::SM3);
        assert_eq!("tpm_alg_b".parse::<Bank>().unwrap(), Bank::SHA256);
        let sha3 = "sha3_256".parse::<Bank>().unwrap();
        assert_eq!(sha3.tpm_alg_id(), 0x27);
        assert_eq!(sha3.digest_size(), 32);
        assert_eq!(sha3.template_algorithm(), None);
        assert_eq!(sha3.tpm_algorithm(), Some(HashAlgorithm::Sha3_256));
        assert_eq!(sha3.file_suffix(), "tpm_alg_27");
        assert_eq!("tpm_alg_27".parse::<Bank>().unwrap(), sha3);
        let custom = "tpm_alg_99:40".parse::<Bank>().unwrap();
        assert_eq!(custom.digest_size(), 40);
        assert_eq!(custom.tpm_algorithm(), None);
        let padded = "sha384:padded".parse::<Bank>().unwrap();
        assert_eq!(padded.template_algorithm(), None);
        assert_eq!(padded.file_suffix(), "sha384");
        assert_eq!(padded.to_string(), "sha384:padded");
    }

    #[test]
    fn bank_parse_errors() {
        assert!(matches!("md5".parse::<Bank>(), Err(BankError::UnknownName { .. })));
        assert!(matches!("tpm_alg_99".parse::<Bank>(), Err(BankError::MissingSize { .. })));
        assert!(matches!("sha256:48".parse::<Bank>(), Err(BankError::SizeMismatch { .. })));
        assert!(matches!("tpm_alg_99:8".parse::<Bank>(), Err(BankError::DigestSize { size: 8 })));
        assert!(matches!("tpm_alg_12345".parse::<Bank>(), Err(BankError::UnknownName { .. })));
    }

    #[test]
    fn violation_pattern_of_unmapped_bank() {
        let sha3 = "sha3_384".parse::<Bank>().unwrap();
        let pattern = sha3.violation_digest();
        assert_eq!(pattern.len(), 48);
        assert!(pattern.as_bytes()[..20].iter().all(|&b| b == 0xff));
        assert!(pattern.as_bytes()[20..].iter().all(|&b| b == 0));
        let padded = Bank::SHA384.without_hasher().violation_digest();
        assert!(padded.as_bytes().iter().all(|&b| b == 0xff));
    }
}
