//! Byte order of the integers in a measurement list.
//!
//! The kernel writes list integers in CPU order unless `ima_canonical_fmt`
//! is set, which makes them little-endian. A big-endian kernel without it
//! also feeds big-endian field lengths into the template digest, so the byte
//! order changes digests, not only framing.

use std::fmt;
use std::str::FromStr;

/// Byte order of the integers in a list, its template digests' hash input,
/// and the integer fields (`iuid`, `igid`, `imode`, `xattrlengths`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Little-endian: x86, ARM, and every canonical-format list.
    #[default]
    Little,
    /// Big-endian without `ima_canonical_fmt` (s390x, ppc64 big-endian).
    Big,
}

impl ByteOrder {
    /// Decodes a u32.
    pub fn u32(self, bytes: [u8; 4]) -> u32 {
        match self {
            ByteOrder::Little => u32::from_le_bytes(bytes),
            ByteOrder::Big => u32::from_be_bytes(bytes),
        }
    }

    /// Encodes a u32.
    pub fn u32_bytes(self, value: u32) -> [u8; 4] {
        match self {
            ByteOrder::Little => value.to_le_bytes(),
            ByteOrder::Big => value.to_be_bytes(),
        }
    }

    /// Decodes a u16.
    pub fn u16(self, bytes: [u8; 2]) -> u16 {
        match self {
            ByteOrder::Little => u16::from_le_bytes(bytes),
            ByteOrder::Big => u16::from_be_bytes(bytes),
        }
    }

    /// Encodes a u16.
    pub fn u16_bytes(self, value: u16) -> [u8; 2] {
        match self {
            ByteOrder::Little => value.to_le_bytes(),
            ByteOrder::Big => value.to_be_bytes(),
        }
    }

    /// Decodes a u64.
    pub fn u64(self, bytes: [u8; 8]) -> u64 {
        match self {
            ByteOrder::Little => u64::from_le_bytes(bytes),
            ByteOrder::Big => u64::from_be_bytes(bytes),
        }
    }

    /// Encodes a u64.
    pub fn u64_bytes(self, value: u64) -> [u8; 8] {
        match self {
            ByteOrder::Little => value.to_le_bytes(),
            ByteOrder::Big => value.to_be_bytes(),
        }
    }
}

impl fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ByteOrder::Little => "le",
            ByteOrder::Big => "be",
        })
    }
}

impl FromStr for ByteOrder {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "le" | "little" => Ok(ByteOrder::Little),
            "be" | "big" => Ok(ByteOrder::Big),
            _ => Err(format!("invalid byte order '{text}': expected le or be")),
        }
    }
}
