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
        Failure::Verification(format!("{}: {error}", self.name))
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

/// Reads a small text file named on the command line (`-` for stdin).
pub fn read_text(path: &Path, what: &str) -> Outcome<(String, String)> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("standard input: cannot read {what}: {e}")))?;
        return Ok(("standard input".to_string(), text));
    }
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
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
