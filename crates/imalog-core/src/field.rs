//! Field data: structural checks, typed views, and the kernel's ASCII
//! rendering and its inverse (`ima_template_lib.c`).
//!
//! A record keeps every field's raw bytes; the typed view is computed on
//! demand and never feeds back into hashing, so a signature that does not
//! parse cannot change a template digest. The structural checks here are the
//! ones an ASCII rendering needs to be reversible: a `d-ng` value must start
//! with a NUL-terminated `<algo>:` prefix, a string must end with its only
//! NUL, and an integer must have its kernel width.

use crate::byte_order::ByteOrder;
use crate::hex;
use crate::template::{FieldFormat, FieldId};

/// Size of the legacy `d` field (a SHA-1 or zero-padded MD5 file digest).
pub const LEGACY_DIGEST_SIZE: usize = 20;

/// Maximum length of the legacy `n` field data, NUL included
/// (`IMA_EVENT_NAME_LEN_MAX` + 1).
pub const LEGACY_NAME_BUFFER: usize = 256;

/// A field whose bytes break the structure its id requires.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A digest field without its `<algo>:` prefix and NUL.
    #[error("{field} field has no NUL-terminated '<algorithm>:' prefix")]
    MissingAlgorithmPrefix {
        /// The field.
        field: FieldId,
    },
    /// A `d-ngv2` prefix without `<type>:<algo>:`.
    #[error("{field} field prefix '{prefix}' is not '<type>:<algorithm>:'")]
    MissingDigestType {
        /// The field.
        field: FieldId,
        /// The prefix found.
        prefix: String,
    },
    /// A string field that does not end with a NUL.
    #[error("{field} field does not end with a NUL byte")]
    UnterminatedString {
        /// The field.
        field: FieldId,
    },
    /// A string field with a NUL before its end.
    #[error("{field} field has a NUL byte at position {position}, before its end")]
    InteriorNul {
        /// The field.
        field: FieldId,
        /// Byte position inside the field.
        position: usize,
    },
    /// A field with a fixed size that has another.
    #[error("{field} field is {found} bytes long; expected {expected}")]
    Length {
        /// The field.
        field: FieldId,
        /// Expected length(s), as text.
        expected: &'static str,
        /// Actual length.
        found: usize,
    },
    /// Invalid hex in an ASCII rendering.
    #[error("{field} field has invalid hex at character {position}")]
    BadHex {
        /// The field.
        field: FieldId,
        /// Character position inside the field's text.
        position: usize,
    },
    /// Invalid decimal in an ASCII rendering.
    #[error("{field} field '{text}' is not a decimal number that fits in {width} bytes")]
    BadUint {
        /// The field.
        field: FieldId,
        /// The text found.
        text: String,
        /// The field width.
        width: usize,
    },
}

/// Checks that `data` has the structure `field` requires. `legacy` selects
/// the `ima` template's limits (`d` exactly 20 bytes, `n` at most 255
/// characters and never empty: it contains at least its NUL).
pub fn validate(field: FieldId, data: &[u8], legacy: bool) -> Result<(), FieldError> {
    if data.is_empty() {
        // Every field may be empty except the legacy template's two: its
        // digest has no length word in the binary form, and its name is
        // written as a character count that decoding reads back with a NUL.
        if legacy && field == FieldId::D {
            return Err(FieldError::Length { field, expected: "20", found: 0 });
        }
        if legacy && field == FieldId::N {
            return Err(FieldError::UnterminatedString { field });
        }
        return Ok(());
    }
    match field.format() {
        FieldFormat::Digest => {
            if legacy && data.len() != LEGACY_DIGEST_SIZE {
                return Err(FieldError::Length { field, expected: "20", found: data.len() });
            }
        }
        FieldFormat::DigestWithAlgo | FieldFormat::DigestWithTypeAndAlgo => {
            split_digest_prefix(field, data)?;
        }
        FieldFormat::String => {
            let (last, body) = data.split_last().unwrap_or((&0, &[]));
            if *last != 0 {
                return Err(FieldError::UnterminatedString { field });
            }
            // `contains` on bytes is a memchr; find the position only on error.
            if body.contains(&0) {
                let position = body.iter().position(|&b| b == 0).unwrap_or(0);
                return Err(FieldError::InteriorNul { field, position });
            }
            if legacy && data.len() > LEGACY_NAME_BUFFER {
                return Err(FieldError::Length {
                    field,
                    expected: "at most 256 (255 characters and NUL)",
                    found: data.len(),
                });
            }
        }
        FieldFormat::Hex => {
            if field == FieldId::XattrLengths && data.len() % 4 != 0 {
                return Err(FieldError::Length { field, expected: "a multiple of 4", found: data.len() });
            }
        }
        FieldFormat::Uint => {
            let width = field.uint_width().unwrap_or(4);
            if data.len() != width {
                let expected = if width == 2 { "0 or 2" } else { "0 or 4" };
                return Err(FieldError::Length { field, expected, found: data.len() });
            }
        }
    }
    Ok(())
}

/// Splits `<prefix>:\0<digest>` into the prefix (colon included) and digest.
fn split_digest_prefix(field: FieldId, data: &[u8]) -> Result<(&[u8], &[u8]), FieldError> {
    let nul = data.iter().position(|&b| b == 0).ok_or(FieldError::MissingAlgorithmPrefix { field })?;
    let prefix = &data[..nul];
    // The kernel prints the prefix only when the last colon is not the first
    // byte, and skips exactly the colon and the NUL after it.
    if nul < 2 || prefix[nul - 1] != b':' || !prefix.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(FieldError::MissingAlgorithmPrefix { field });
    }
    if field.format() == FieldFormat::DigestWithTypeAndAlgo {
        let inner = &prefix[..nul - 1];
        let colon = inner.iter().position(|&b| b == b':');
        if !matches!(colon, Some(i) if i > 0 && i + 1 < inner.len()) {
            return Err(FieldError::MissingDigestType { field, prefix: String::from_utf8_lossy(prefix).into_owned() });
        }
    }
    Ok((prefix, &data[nul + 1..]))
}

/// A typed view of one field's data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldValue<'a> {
    /// The field is empty (no signature, no appended signature, no file).
    Empty,
    /// `d`: a bare file digest.
    Digest(&'a [u8]),
    /// `d-ng`, `d-modsig`: a file digest and its algorithm name.
    DigestWithAlgo {
        /// Algorithm name as logged (`sha256`, `md5`, or anything else).
        algorithm: &'a str,
        /// Digest bytes.
        digest: &'a [u8],
    },
    /// `d-ngv2`: a file digest with digest type (`ima`, `verity`).
    DigestWithTypeAndAlgo {
        /// Digest type as logged.
        digest_type: &'a str,
        /// Algorithm name as logged.
        algorithm: &'a str,
        /// Digest bytes.
        digest: &'a [u8],
    },
    /// `n`, `n-ng`: the event name without its NUL.
    Name(&'a [u8]),
    /// `sig`, `evmsig`: an xattr signature.
    Signature(Signature<'a>),
    /// `modsig`, `xattrvalues`, `buf`: opaque bytes.
    Bytes(&'a [u8]),
    /// `iuid`, `igid`, `imode`.
    Uint(u64),
    /// `xattrnames`: the names, split at `|`.
    XattrNames(Vec<&'a [u8]>),
    /// `xattrlengths`: one length per xattr.
    XattrLengths(Vec<u32>),
}

impl<'a> FieldValue<'a> {
    /// Decodes a field that passed [`validate`].
    pub fn decode(field: FieldId, data: &'a [u8], order: ByteOrder) -> Result<FieldValue<'a>, FieldError> {
        validate(field, data, false)?;
        if data.is_empty() {
            return Ok(FieldValue::Empty);
        }
        let value = match field {
            FieldId::D => FieldValue::Digest(data),
            FieldId::DNg | FieldId::DModsig => {
                let (prefix, digest) = split_digest_prefix(field, data)?;
                FieldValue::DigestWithAlgo { algorithm: ascii(&prefix[..prefix.len() - 1]), digest }
            }
            FieldId::DNgV2 => {
                let (prefix, digest) = split_digest_prefix(field, data)?;
                let inner = ascii(&prefix[..prefix.len() - 1]);
                let (digest_type, algorithm) = inner.split_once(':').unwrap_or(("", inner));
                FieldValue::DigestWithTypeAndAlgo { digest_type, algorithm, digest }
            }
            FieldId::N | FieldId::NNg => FieldValue::Name(&data[..data.len() - 1]),
            FieldId::Sig | FieldId::EvmSig => FieldValue::Signature(Signature::parse(data)),
            FieldId::Modsig | FieldId::Buf | FieldId::XattrValues => FieldValue::Bytes(data),
            FieldId::Iuid | FieldId::Igid | FieldId::Imode => FieldValue::Uint(read_uint(data, order)),
            FieldId::XattrNames => FieldValue::XattrNames(data[..data.len() - 1].split(|&b| b == b'|').collect()),
            FieldId::XattrLengths => {
                FieldValue::XattrLengths(data.chunks_exact(4).map(|c| order.u32([c[0], c[1], c[2], c[3]])).collect())
            }
        };
        Ok(value)
    }
}

// Prefixes passed validation, so they are printable ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

fn read_uint(data: &[u8], order: ByteOrder) -> u64 {
    match *data {
        [a] => a as u64,
        [a, b] => order.u16([a, b]) as u64,
        [a, b, c, d] => order.u32([a, b, c, d]) as u64,
        [a, b, c, d, e, f, g, h] => order.u64([a, b, c, d, e, f, g, h]),
        _ => 0,
    }
}

/// An IMA or EVM xattr signature (`signature_v2_hdr` in ima-evm-utils).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature<'a> {
    /// The bytes as logged; the only input to hashing.
    pub raw: &'a [u8],
    /// The parsed header, or `None` when the bytes are not a v2/v3 header
    /// followed by exactly `sig_size` bytes.
    pub header: Option<SignatureHeader>,
}

/// The header of a version 2 (file) or 3 (fs-verity) signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureHeader {
    /// xattr type: 3 `EVM_IMA_XATTR_DIGSIG`, 5 `EVM_XATTR_PORTABLE_DIGSIG`,
    /// 6 `IMA_VERITY_DIGSIG`.
    pub xattr_type: u8,
    /// Header version (2, or 3 for fs-verity).
    pub version: u8,
    /// Kernel `enum hash_algo` value of the signed digest.
    pub hash_algo: u8,
    /// Last four bytes of the key's subject key identifier.
    pub key_id: [u8; 4],
    /// Length of the signature that follows the header.
    pub signature_len: u16,
}

impl SignatureHeader {
    /// The kernel name of [`hash_algo`](Self::hash_algo), if known.
    pub fn hash_algo_name(&self) -> Option<&'static str> {
        // include/uapi/linux/hash_info.h
        const NAMES: [&str; 23] = [
            "md4",
            "md5",
            "sha1",
            "rmd160",
            "sha256",
            "sha384",
            "sha512",
            "sha224",
            "rmd128",
            "rmd256",
            "rmd320",
            "wp256",
            "wp384",
            "wp512",
            "tgr128",
            "tgr160",
            "tgr192",
            "sm3",
            "streebog256",
            "streebog512",
            "sha3-256",
            "sha3-384",
            "sha3-512",
        ];
        NAMES.get(self.hash_algo as usize).copied()
    }
}

impl<'a> Signature<'a> {
    /// Parses the header when the bytes have one; never fails.
    pub fn parse(raw: &'a [u8]) -> Signature<'a> {
        let header = match raw {
            [xattr_type @ (3 | 5 | 6), version @ (2 | 3), hash_algo, k0, k1, k2, k3, s0, s1, rest @ ..]
                if u16::from_be_bytes([*s0, *s1]) as usize == rest.len() =>
            {
                Some(SignatureHeader {
                    xattr_type: *xattr_type,
                    version: *version,
                    hash_algo: *hash_algo,
                    key_id: [*k0, *k1, *k2, *k3],
                    signature_len: u16::from_be_bytes([*s0, *s1]),
                })
            }
            _ => None,
        };
        Signature { raw, header }
    }
}

/// Appends the kernel's ASCII rendering of a non-empty field to `out`
/// (`ima_show_template_data_ascii`).
pub fn render_ascii(field: FieldId, data: &[u8], order: ByteOrder, out: &mut Vec<u8>) {
    match field.format() {
        FieldFormat::Digest | FieldFormat::Hex => hex::encode_to_vec(data, out),
        FieldFormat::DigestWithAlgo | FieldFormat::DigestWithTypeAndAlgo => match split_digest_prefix(field, data) {
            Ok((prefix, digest)) => {
                out.extend_from_slice(prefix);
                hex::encode_to_vec(digest, out);
            }
            // Unreachable for decoded records; rendering stays total anyway.
            Err(_) => hex::encode_to_vec(data, out),
        },
        FieldFormat::String => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            out.extend_from_slice(&data[..end]);
        }
        FieldFormat::Uint => {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                out.extend_from_slice(read_uint(data, order).to_string().as_bytes());
            }
        }
    }
}

/// Parses one field's ASCII rendering back into field data, appending to
/// `out`. An empty rendering gives an empty field, except for `n` and
/// `n-ng`, which the kernel always stores with their NUL.
pub fn parse_ascii(field: FieldId, text: &[u8], order: ByteOrder, out: &mut Vec<u8>) -> Result<(), FieldError> {
    let bad_hex = |e: hex::HexError| FieldError::BadHex { field, position: e.position };
    match field.format() {
        FieldFormat::Digest | FieldFormat::Hex => {
            out.extend_from_slice(&hex::decode(text).map_err(bad_hex)?);
        }
        FieldFormat::DigestWithAlgo | FieldFormat::DigestWithTypeAndAlgo => {
            if text.is_empty() {
                return Ok(());
            }
            let colon = text.iter().rposition(|&b| b == b':').ok_or(FieldError::MissingAlgorithmPrefix { field })?;
            let digest = hex::decode(&text[colon + 1..])
                .map_err(|e| FieldError::BadHex { field, position: colon + 1 + e.position })?;
            let start = out.len();
            out.extend_from_slice(&text[..=colon]);
            out.push(0);
            out.extend_from_slice(&digest);
            split_digest_prefix(field, &out[start..])?;
        }
        FieldFormat::String => {
            if text.is_empty() && field == FieldId::XattrNames {
                return Ok(());
            }
            if let Some(position) = text.iter().position(|&b| b == 0) {
                return Err(FieldError::InteriorNul { field, position });
            }
            out.extend_from_slice(text);
            out.push(0);
        }
        FieldFormat::Uint => {
            if text.is_empty() {
                return Ok(());
            }
            let width = field.uint_width().unwrap_or(4);
            let bad = || FieldError::BadUint { field, text: String::from_utf8_lossy(text).into_owned(), width };
            if !text.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let value: u64 = std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
            match width {
                2 => out.extend_from_slice(&order.u16_bytes(u16::try_from(value).map_err(|_| bad())?)),
                _ => out.extend_from_slice(&order.u32_bytes(u32::try_from(value).map_err(|_| bad())?)),
            }
        }
    }
    Ok(())
}

/// Rewrites the integer fields of one field's data from one byte order to
/// the other, as a kernel of the other endianness would have logged them.
pub fn swap_byte_order(field: FieldId, data: &mut [u8]) {
    match field {
        FieldId::Iuid | FieldId::Igid | FieldId::Imode | FieldId::XattrLengths => {
            let width = field.uint_width().unwrap_or(4);
            for chunk in data.chunks_exact_mut(width) {
                chunk.reverse();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(field: FieldId, data: &[u8]) -> String {
        let mut out = Vec::new();
        render_ascii(field, data, ByteOrder::Little, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn d_ng_renders_prefix_and_hex() {
        assert_eq!(render(FieldId::DNg, b"sha256:\0\x01\xff"), "sha256:01ff");
        assert_eq!(render(FieldId::DNgV2, b"ima:sha256:\0\x01"), "ima:sha256:01");
    }

    #[test]
    fn d_ng_validation_rejects_missing_prefix() {
        assert_eq!(
            validate(FieldId::DNg, b"sha256\0\x01", false),
            Err(FieldError::MissingAlgorithmPrefix { field: FieldId::DNg })
        );
        assert_eq!(
            validate(FieldId::DNg, b":\0\x01", false),
            Err(FieldError::MissingAlgorithmPrefix { field: FieldId::DNg })
        );
        assert!(matches!(validate(FieldId::DNgV2, b"sha256:\0\x01", false), Err(FieldError::MissingDigestType { .. })));
    }

    #[test]
    fn string_validation_rules() {
        assert_eq!(
            validate(FieldId::NNg, b"/bin/sh", false),
            Err(FieldError::UnterminatedString { field: FieldId::NNg })
        );
        assert_eq!(
            validate(FieldId::NNg, b"/bin\0sh\0", false),
            Err(FieldError::InteriorNul { field: FieldId::NNg, position: 4 })
        );
        assert!(validate(FieldId::N, &[b'a'; 257], true).is_err());
        let mut long = vec![b'a'; 255];
        long.push(0);
        assert!(validate(FieldId::N, &long, true).is_ok());
    }

    #[test]
    fn legacy_name_must_not_be_empty() {
        // The binary `ima` record stores strlen(name), so an empty field
        // would decode as a lone NUL: a different record.
        assert_eq!(validate(FieldId::N, b"", true), Err(FieldError::UnterminatedString { field: FieldId::N }));
        assert_eq!(validate(FieldId::N, b"\0", true), Ok(()));
        assert_eq!(validate(FieldId::N, b"", false), Ok(()));
    }

    #[test]
    fn uint_fields_round_trip_in_both_orders() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let mut data = Vec::new();
            parse_ascii(FieldId::Imode, b"33188", order, &mut data).unwrap();
            assert_eq!(data.len(), 2);
            let mut out = Vec::new();
            render_ascii(FieldId::Imode, &data, order, &mut out);
            assert_eq!(out, b"33188");
        }
        let mut data = Vec::new();
        assert!(parse_ascii(FieldId::Imode, b"70000", ByteOrder::Little, &mut data).is_err());
        assert!(parse_ascii(FieldId::Iuid, b"-1", ByteOrder::Little, &mut data).is_err());
    }

    #[test]
    fn signature_header_parses_v2() {
        let mut raw = vec![3, 2, 4, 0xde, 0xad, 0xbe, 0xef, 0, 2, 0xaa, 0xbb];
        let header = Signature::parse(&raw).header.unwrap();
        assert_eq!(header.hash_algo_name(), Some("sha256"));
        assert_eq!(header.key_id, [0xde, 0xad, 0xbe, 0xef]);
        raw.push(0);
        assert_eq!(Signature::parse(&raw).header, None);
    }

    #[test]
    fn empty_name_parses_to_nul() {
        let mut out = Vec::new();
        parse_ascii(FieldId::NNg, b"", ByteOrder::Little, &mut out).unwrap();
        assert_eq!(out, b"\0");
        out.clear();
        parse_ascii(FieldId::XattrNames, b"", ByteOrder::Little, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
