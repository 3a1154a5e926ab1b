//! Parsing of the bytes written to a list file (`ima_measurements_write` and
//! its helpers in the merged `ima_fs.c`).
//!
//! A write must be 2 to 21 bytes and end with a newline. `A` and `D` are
//! accepted only on `_staged` files and only as exactly `"A\n"` and `"D\n"`.
//! A decimal number N is accepted only on the original files, and deletes
//! the first N records of the current list. The number follows the kernel's
//! `kstrtoul(buf, 10)`: an optional `+`, decimal digits (leading zeros are
//! fine), and one optional newline, since the final newline has already
//! been replaced by a NUL; no sign, no `0x`, no spaces.

use crate::errno::Errno;

/// Shortest and longest accepted write: `"A\n"`, and twenty digits plus the
/// newline (`ULONG_MAX` has 20 digits).
pub const MIN_WRITE: usize = 2;
/// See [`MIN_WRITE`].
pub const MAX_WRITE: usize = 21;

/// A parsed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `A`: move the whole current list to the staged list.
    Stage,
    /// `D`: delete every staged record.
    DeleteStaged,
    /// `N`: delete the first N records of the current list.
    DeleteFirst(u64),
}

/// Parses a write to a list file. `staged_file` is true for a `_staged`
/// file, `flush_htable` when `ima_flush_htable` is in effect.
pub fn parse_command(bytes: &[u8], staged_file: bool, flush_htable: bool) -> Result<Command, Errno> {
    if !(MIN_WRITE..=MAX_WRITE).contains(&bytes.len()) {
        return Err(Errno::Einval);
    }
    let (last, body) = bytes.split_last().ok_or(Errno::Einval)?;
    if *last != b'\n' {
        return Err(Errno::Einval);
    }
    match body.first() {
        Some(b'A') => {
            if !staged_file || body.len() != 1 {
                return Err(Errno::Einval);
            }
            Ok(Command::Stage)
        }
        Some(b'D') => {
            if !staged_file || body.len() != 1 {
                return Err(Errno::Einval);
            }
            Ok(Command::DeleteStaged)
        }
        _ => {
            if staged_file || flush_htable {
                return Err(Errno::Einval);
            }
            let count = parse_ulong(body)?;
            if count == 0 {
                return Err(Errno::Einval);
            }
            Ok(Command::DeleteFirst(count))
        }
    }
}

/// `kstrtoul(text, 10)` on a 64-bit kernel: overflow is ERANGE even when
/// junk follows the digits, no digits or junk is EINVAL. The kernel parses a
/// C string, so a NUL byte ends the number.
fn parse_ulong(text: &[u8]) -> Result<u64, Errno> {
    let text = match text.iter().position(|&b| b == 0) {
        Some(nul) => &text[..nul],
        None => text,
    };
    let text = text.strip_prefix(b"+").unwrap_or(text);
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut value: u64 = 0;
    let mut overflow = false;
    for &digit in &text[..digits] {
        match value.checked_mul(10).and_then(|v| v.checked_add((digit - b'0') as u64)) {
            Some(next) => value = next,
            None => overflow = true,
        }
    }
    if overflow {
        return Err(Errno::Erange);
    }
    if digits == 0 {
        return Err(Errno::Einval);
    }
    let rest = &text[digits..];
    let rest = rest.strip_prefix(b"\n").unwrap_or(rest);
    if !rest.is_empty() {
        return Err(Errno::Einval);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(bytes: &[u8]) -> Result<Command, Errno> {
        parse_command(bytes, false, false)
    }

    #[test]
    fn stage_and_delete_only_on_staged_files() {
        assert_eq!(parse_command(b"A\n", true, false), Ok(Command::Stage));
        assert_eq!(parse_command(b"D\n", true, false), Ok(Command::DeleteStaged));
        assert_eq!(original(b"A\n"), Err(Errno::Einval));
        assert_eq!(original(b"D\n"), Err(Errno::Einval));
        assert_eq!(parse_command(b"AA\n", true, false), Err(Errno::Einval));
        assert_eq!(parse_command(b"A \n", true, false), Err(Errno::Einval));
        assert_eq!(parse_command(b"5\n", true, false), Err(Errno::Einval));
    }

    #[test]
    fn number_parsing_rules() {
        assert_eq!(original(b"+5\n"), Ok(Command::DeleteFirst(5)));
        assert_eq!(original(b"5\n\n"), Ok(Command::DeleteFirst(5)));
        assert_eq!(original(b"007\n"), Ok(Command::DeleteFirst(7)));
        assert_eq!(original(b"0\n"), Err(Errno::Einval));
        assert_eq!(original(b"-1\n"), Err(Errno::Einval));
        assert_eq!(original(b"0x10\n"), Err(Errno::Einval));
        assert_eq!(original(b"5"), Err(Errno::Einval));
        assert_eq!(original(b"5\n\n\n"), Err(Errno::Einval));
        assert_eq!(original(b" 5\n"), Err(Errno::Einval));
        assert_eq!(original(b"+\n"), Err(Errno::Einval));
        assert_eq!(original(b"\n"), Err(Errno::Einval));
        assert_eq!(original(b"18446744073709551615\n"), Ok(Command::DeleteFirst(u64::MAX)));
        assert_eq!(original(b"18446744073709551616\n"), Err(Errno::Erange));
        assert_eq!(original(b"99999999999999999999\n"), Err(Errno::Erange));
        // 21 digits and the newline make 22 bytes, past the length limit.
        assert_eq!(original(b"100000000000000000000\n"), Err(Errno::Einval));
        assert_eq!(original(b"1234567890123456789012\n"), Err(Errno::Einval));
        assert_eq!(parse_command(b"5\n", false, true), Err(Errno::Einval));
        // The number is read as a C string: a NUL ends it.
        assert_eq!(original(b"5\0\n"), Ok(Command::DeleteFirst(5)));
        assert_eq!(original(b"5\0x\n"), Ok(Command::DeleteFirst(5)));
        assert_eq!(original(b"\x005\n"), Err(Errno::Einval));
    }
}
