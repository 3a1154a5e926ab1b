//! Hash algorithms that IMA can compute, and the fixed-capacity digest value
//! that every other module passes around.
//!
//! The kernel names algorithms by its crypto API names (`sha1`, `sha256`,
//! `sm3`, ...) in `d-ng` prefixes and securityfs file names, while the TPM
//! names them by TPM_ALG_ID. Both spellings live here so that no other module
//! maps between them.

use std::fmt;

use sha1::Digest as _;

/// Largest digest any supported bank produces (SHA-512), in bytes.
pub const MAX_DIGEST_SIZE: usize = 64;

/// A hash algorithm that imalog can compute itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
    /// SHA-384, 48 bytes.
    Sha384,
    /// SHA-512, 64 bytes.
    Sha512,
    /// SM3 (OSCCA GM/T 0004-2012), 32 bytes.
    Sm3,
    /// SHA3-256, 32 bytes. TPMs offer it, but the Linux TPM driver maps no
    /// kernel hash to it, so IMA fills its bank with padded SHA-1.
    Sha3_256,
    /// SHA3-384, 48 bytes; unmapped like SHA3-256.
    Sha3_384,
    /// SHA3-512, 64 bytes; unmapped like SHA3-256.
    Sha3_512,
}

impl HashAlgorithm {
    /// Every algorithm, in the order `tpm2_pcrread` lists banks.
    pub const ALL: [HashAlgorithm; 8] = [
        HashAlgorithm::Sha1,
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha384,
        HashAlgorithm::Sha512,
        HashAlgorithm::Sm3,
        HashAlgorithm::Sha3_256,
        HashAlgorithm::Sha3_384,
        HashAlgorithm::Sha3_512,
    ];

    /// True when the Linux TPM driver maps this TPM algorithm to a kernel
    /// hash (`tpm2_hash_map`: SHA-1, SHA-256, SHA-384, SHA-512 and SM3), so
    /// IMA computes real template digests for its bank.
    pub const fn is_kernel_mapped(self) -> bool {
        !matches!(self, HashAlgorithm::Sha3_256 | HashAlgorithm::Sha3_384 | HashAlgorithm::Sha3_512)
    }

    /// Digest size in bytes.
    pub const fn digest_size(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 | HashAlgorithm::Sm3 | HashAlgorithm::Sha3_256 => 32,
            HashAlgorithm::Sha384 | HashAlgorithm::Sha3_384 => 48,
            HashAlgorithm::Sha512 | HashAlgorithm::Sha3_512 => 64,
        }
    }

    /// The kernel crypto API name, as used in `d-ng` prefixes and in the
    /// suffix of `binary_runtime_measurements_<name>`.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
            HashAlgorithm::Sm3 => "sm3",
            HashAlgorithm::Sha3_256 => "sha3-256",
            HashAlgorithm::Sha3_384 => "sha3-384",
            HashAlgorithm::Sha3_512 => "sha3-512",
        }
    }

    /// The name tpm2-tools prints for the bank (`sm3_256` for SM3).
    pub const fn tpm2_tools_name(self) -> &'static str {
        match self {
            HashAlgorithm::Sm3 => "sm3_256",
            HashAlgorithm::Sha3_256 => "sha3_256",
            HashAlgorithm::Sha3_384 => "sha3_384",
            HashAlgorithm::Sha3_512 => "sha3_512",
            other => other.kernel_name(),
        }
    }

    /// The TPM 2.0 algorithm identifier (TPM_ALG_ID).
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            HashAlgorithm::Sha1 => 0x0004,
            HashAlgorithm::Sha256 => 0x000b,
            HashAlgorithm::Sha384 => 0x000c,
            HashAlgorithm::Sha512 => 0x000d,
            HashAlgorithm::Sm3 => 0x0012,
            HashAlgorithm::Sha3_256 => 0x0027,
            HashAlgorithm::Sha3_384 => 0x0028,
            HashAlgorithm::Sha3_512 => 0x0029,
        }
    }

    /// Looks up an algorithm by its TPM_ALG_ID.
    pub fn from_tpm_alg_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.tpm_alg_id() == id)
    }

    /// Looks up an algorithm by kernel or tpm2-tools name (`sm3`, `sm3_256`,
    /// `sm3-256` all mean SM3), case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "sha1" => Some(HashAlgorithm::Sha1),
            "sha256" => Some(HashAlgorithm::Sha256),
            "sha384" => Some(HashAlgorithm::Sha384),
            "sha512" => Some(HashAlgorithm::Sha512),
            "sm3" | "sm3_256" | "sm3-256" => Some(HashAlgorithm::Sm3),
            "sha3-256" | "sha3_256" => Some(HashAlgorithm::Sha3_256),
            "sha3-384" | "sha3_384" => Some(HashAlgorithm::Sha3_384),
            "sha3-512" | "sha3_512" => Some(HashAlgorithm::Sha3_512),
            _ => None,
        }
    }

    /// Starts an incremental hash computation.
    pub fn hasher(self) -> Hasher {
        match self {
            HashAlgorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            HashAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            HashAlgorithm::Sm3 => Hasher::Sm3(sm3::Sm3::new()),
            HashAlgorithm::Sha3_256 => Hasher::Sha3_256(sha3::Sha3_256::new()),
            HashAlgorithm::Sha3_384 => Hasher::Sha3_384(sha3::Sha3_384::new()),
            HashAlgorithm::Sha3_512 => Hasher::Sha3_512(sha3::Sha3_512::new()),
        }
    }

    /// Hashes `data` in one call.
    pub fn digest(self, data: &[u8]) -> Digest {
        self.digest_parts(&[data])
    }

    /// Hashes the concatenation of `parts`. Unlike [`Hasher`], whose enum is
    /// as large as the largest state, this keeps only the one state needed
    /// on the stack, which matters in the replay loop.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Digest {
        fn run<H: sha1::Digest>(parts: &[&[u8]]) -> Digest {
            let mut hasher = H::new();
            for part in parts {
                hasher.update(part);
            }
            Digest::from_slice_truncating(&hasher.finalize())
        }
        match self {
            HashAlgorithm::Sha1 => run::<sha1::Sha1>(parts),
            HashAlgorithm::Sha256 => run::<sha2::Sha256>(parts),
            HashAlgorithm::Sha384 => run::<sha2::Sha384>(parts),
            HashAlgorithm::Sha512 => run::<sha2::Sha512>(parts),
            HashAlgorithm::Sm3 => run::<sm3::Sm3>(parts),
            HashAlgorithm::Sha3_256 => run::<sha3::Sha3_256>(parts),
            HashAlgorithm::Sha3_384 => run::<sha3::Sha3_384>(parts),
            HashAlgorithm::Sha3_512 => run::<sha3::Sha3_512>(parts),
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}

/// An incremental hash computation over one of the [`HashAlgorithm`]s.
///
/// An enum rather than a trait object so that the hot replay loop stays
/// statically dispatched.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-384 state.
    Sha384(sha2::Sha384),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
    /// SM3 state.
    Sm3(sm3::Sm3),
    /// SHA3-256 state.
    Sha3_256(sha3::Sha3_256),
    /// SHA3-384 state.
    Sha3_384(sha3::Sha3_384),
    /// SHA3-512 state.
    Sha3_512(sha3::Sha3_512),
}

impl Hasher {
    /// Feeds bytes into the computation.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Sm3(h) => h.update(data),
            Hasher::Sha3_256(h) => h.update(data),
            Hasher::Sha3_384(h) => h.update(data),
            Hasher::Sha3_512(h) => h.update(data),
        }
    }

    /// Finishes the computation.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha1(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sha256(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sha384(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sha512(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sm3(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sha3_256(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sha3_384(h) => Digest::from_slice_truncating(&h.finalize()),
            Hasher::Sha3_512(h) => Digest::from_slice_truncating(&h.finalize()),
        }
    }
}

/// A digest of up to [`MAX_DIGEST_SIZE`] bytes, stored inline so that a
/// record or a PCR value needs no heap allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    bytes: [u8; MAX_DIGEST_SIZE],
    len: u8,
}

impl Digest {
    /// An all-zero digest of `len` bytes.
    ///
    /// # Panics
    /// If `len` exceeds [`MAX_DIGEST_SIZE`]; callers take `len` from a
    /// [`crate::Bank`] or [`HashAlgorithm`], which never exceed it.
    pub fn zero(len: usize) -> Self {
        assert!(len <= MAX_DIGEST_SIZE, "digest size {len} exceeds {MAX_DIGEST_SIZE}");
        Digest { bytes: [0; MAX_DIGEST_SIZE], len: len as u8 }
    }

    /// Copies `bytes`, or returns `None` when they are longer than
    /// [`MAX_DIGEST_SIZE`].
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_DIGEST_SIZE {
            return None;
        }
        let mut digest = Digest::zero(bytes.len());
        digest.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(digest)
    }

    /// The first `len` bytes of a full-size buffer; `len` is clamped to
    /// [`MAX_DIGEST_SIZE`].
    pub fn from_bytes_prefix(bytes: &[u8; MAX_DIGEST_SIZE], len: usize) -> Self {
        let len = len.min(MAX_DIGEST_SIZE);
        let mut digest = Digest::zero(len);
        digest.bytes[..len].copy_from_slice(&bytes[..len]);
        digest
    }

    // Hash outputs are at most 64 bytes, so truncation never happens here.
    fn from_slice_truncating(bytes: &[u8]) -> Self {
        let len = bytes.len().min(MAX_DIGEST_SIZE);
        let mut digest = Digest::zero(len);
        digest.bytes[..len].copy_from_slice(&bytes[..len]);
        digest
    }

    /// Parses lowercase or uppercase hex, with an optional `0x` prefix.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        if text.len() % 2 != 0 || text.len() / 2 > MAX_DIGEST_SIZE {
            return None;
        }
        let mut digest = Digest::zero(text.len() / 2);
        crate::hex::decode_into(text.as_bytes(), &mut digest.bytes[..text.len() / 2]).ok()?;
        Some(digest)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Digest length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a zero-length digest.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when every byte is zero, which in a measurement list marks a
    /// violation.
    pub fn is_all_zero(&self) -> bool {
        self.as_bytes().iter().all(|&b| b == 0)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(self.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sizes_match_hash_output() {
        for algorithm in HashAlgorithm::ALL {
            assert_eq!(algorithm.digest(b"abc").len(), algorithm.digest_size(), "{algorithm}");
        }
    }

    #[test]
    fn known_answers_for_abc() {
        assert_eq!(HashAlgorithm::Sha1.digest(b"abc").to_hex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            HashAlgorithm::Sm3.digest(b"abc").to_hex(),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn names_and_ids_round_trip() {
        for algorithm in HashAlgorithm::ALL {
            assert_eq!(HashAlgorithm::from_name(algorithm.kernel_name()), Some(algorithm));
            assert_eq!(HashAlgorithm::from_name(algorithm.tpm2_tools_name()), Some(algorithm));
            assert_eq!(HashAlgorithm::from_tpm_alg_id(algorithm.tpm_alg_id()), Some(algorithm));
        }
        assert_eq!(HashAlgorithm::from_name("md5"), None);
    }

    #[test]
    fn digest_from_hex_accepts_prefix_and_case() {
        let digest = Digest::from_hex("0xAB01").unwrap();
        assert_eq!(digest.as_bytes(), &[0xab, 0x01]);
        assert!(Digest::from_hex("abc").is_none());
        assert!(Digest::from_hex("zz").is_none());
    }
}
