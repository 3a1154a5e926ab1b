//! Opening the input list and the output file named on the command line.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use imalog_core::format::ListKind;
use imalog_core::{bank_from_file_name, DecodeError, ListOptions, ListReader};

use crate::cli::{FormatArg, InputArgs};
use crate::outcome::{Failure, Outcome};

/// An opened input list.
pub struct Input {
    /// The name used in messages (the path, or "standard input").
    pub name: String,
    /// The record reader.
    pub reader: ListReader<Box<dyn Read>>,
}

impl Input {
    /// Turns a decoding error into a failure that names the input.
    pub fn decode_failure(&self, error: DecodeError) -> Failure {
        let flag = match &error.kind {
            imalog_core::DecodeErrorKind::PcrOutOfRange { hint, .. } if !hint.is_empty() => " (--input-endian)",
            _ => "",
        };
        Failure::Verification(format!("{}: {error}{flag}", self.name))
    }
}

/// Opens `path` (`-` for stdin) and detects its format.
pub fn open_input(path: &Path, args: &InputArgs) -> Outcome<Input> {
    let (name, source): (String, Box<dyn Read>) = if path.as_os_str() == "-" {
        ("standard input".to_string(), Box::new(io::stdin().lock()))
    } else {
        let file = File::open(path).map_err(|e| Failure::Usage(format!("{}: cannot open: {e}", path.display())))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Failure::Usage(format!(
                "{}: is a directory; expected a measurement list file",
                path.display()
            )));
        }
        (path.display().to_string(), Box::new(file))
    };

    let hint = path.file_name().and_then(|n| n.to_str()).and_then(bank_from_file_name);
    let options = ListOptions {
        kind: args.input_format.map(|f| match f {
            FormatArg::Binary => ListKind::Binary,
            FormatArg::Ascii => ListKind::Ascii,
        }),
        byte_order: args.input_endian,
        bank: args.input_bank,
        bank_hint: hint,
    };
    let reader = ListReader::open(source, options).map_err(|e| Failure::Verification(format!("{name}: {e}")))?;
    Ok(Input { name, reader })
}

/// Opens `path` for writing (`-` for stdout), buffered.
pub fn open_output(path: &Path) -> Outcome<(String, Box<dyn Write>)> {
    if path.as_os_str() == "-" {
        return Ok(("standard output".to_string(), Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock()))));
    }
    let file = File::create(path).map_err(|e| Failure::Usage(format!("{}: cannot create: {e}", path.display())))?;
    Ok((path.display().to_string(), Box::new(BufWriter::with_capacity(1 << 16, file))))
}

/// The largest PCR values or replay state file read.
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;
/// The largest quote file read (a quote is a few KiB of JSON).
pub const MAX_QUOTE_FILE: u64 = 1024 * 1024;
/// The largest attestation key file read (a TPM2B_PUBLIC has at most
/// a few hundred bytes, twice that in hex).
pub const MAX_AK_FILE: u64 = 64 * 1024;

/// Reads at most `limit` bytes from `reader`. More is an error, so a device
/// such as /dev/zero given for a small file fails at once.
pub fn read_small(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes, which is more than such a file holds"),
        ));
    }
    Ok(bytes)
}

/// Reads a small UTF-8 file of at most `limit` bytes.
pub fn read_small_text(path: &Path, limit: u64) -> io::Result<String> {
    let bytes = read_small(File::open(path)?, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
    })
}

/// Reads a small text file named on the command line (`-` for stdin).
pub fn read_text(path: &Path, what: &str) -> Outcome<(String, String)> {
    if path.as_os_str() == "-" {
        let bytes = read_small(io::stdin().lock(), MAX_SMALL_FILE)
            .and_then(|b| {
                String::from_utf8(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
            })
            .map_err(|e| Failure::Usage(format!("standard input: cannot read {what}: {e}")))?;
        return Ok(("standard input".to_string(), bytes));
    }
    let text = read_small_text(path, MAX_SMALL_FILE)
        .map_err(|e| Failure::Usage(format!("{}: cannot read {what}: {e}", path.display())))?;
    Ok((path.display().to_string(), text))
}

/// Returns whether `output` is an existing file that is also `input`. On
/// Unix it compares device and inode, so hard links and other spellings of
/// the path count.
pub fn is_same_file(input: &Path, output: &Path) -> bool {
    if input.as_os_str() == "-" || output.as_os_str() == "-" {
        return false;
    }
    let (Ok(input_meta), Ok(output_meta)) = (std::fs::metadata(input), std::fs::metadata(output)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        input_meta.dev() == output_meta.dev() && input_meta.ino() == output_meta.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (input_meta, output_meta);
        matches!((std::fs::canonicalize(input), std::fs::canonicalize(output)), (Ok(a), Ok(b)) if a == b)
    }
}
