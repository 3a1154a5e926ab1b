//! Lowercase hex, as the kernel prints it (`%*phN` and `ima_print_digest`).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Encodes bytes as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    encode_to_vec(bytes, &mut out);
    // The output holds only ASCII hex digits.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends lowercase hex of `bytes` to `out`.
pub fn encode_to_vec(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 0x0f) as usize]);
    }
}

/// The position (in hex characters) of the first character that is not a hex
/// digit, or of the odd trailing character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HexError {
    /// Zero-based character position inside the hex text.
    pub position: usize,
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex text (either case) into `out`, which must be exactly half as
/// long as `text`.
pub fn decode_into(text: &[u8], out: &mut [u8]) -> Result<(), HexError> {
    if text.len() != out.len() * 2 {
        return Err(HexError { position: text.len().min(out.len() * 2) });
    }
    for (i, slot) in out.iter_mut().enumerate() {
        let high = nibble(text[2 * i]).ok_or(HexError { position: 2 * i })?;
        let low = nibble(text[2 * i + 1]).ok_or(HexError { position: 2 * i + 1 })?;
        *slot = (high << 4) | low;
    }
    Ok(())
}

/// Decodes hex text (either case) into a new vector.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, HexError> {
    if text.len() % 2 != 0 {
        // Report the first bad digit if there is one, else the odd last one.
        if let Some(position) = text.iter().position(|&c| nibble(c).is_none()) {
            return Err(HexError { position });
        }
        return Err(HexError { position: text.len() - 1 });
    }
    let mut out = vec![0; text.len() / 2];
    decode_into(text, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0x00, 0x7f, 0x80, 0xff];
        assert_eq!(encode(&bytes), "007f80ff");
        assert_eq!(decode(b"007F80ff").unwrap(), bytes);
    }

    #[test]
    fn hex_decode_reports_position() {
        assert_eq!(decode(b"00g0"), Err(HexError { position: 2 }));
        assert_eq!(decode(b"000"), Err(HexError { position: 2 }));
        assert_eq!(decode(b"0x0"), Err(HexError { position: 1 }));
    }
}
