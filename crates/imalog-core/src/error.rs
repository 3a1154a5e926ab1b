//! Decoding errors that locate the fault: byte offset (binary) or line
//! (ASCII), the index of the record being decoded, and what was expected.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::field::FieldError;
use crate::template::TemplateError;

/// Where in the input a fault is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Byte offset from the start of a binary list.
    Offset(u64),
    /// One-based line number in an ASCII list.
    Line(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Offset(offset) => write!(f, "offset {offset}"),
            Location::Line(line) => write!(f, "line {line}"),
        }
    }
}

/// A list that could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("record {record} at {location}: {kind}")]
pub struct DecodeError {
    /// Where the faulty item starts.
    pub location: Location,
    /// Zero-based index, within this input, of the record being decoded.
    pub record: u64,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

/// What is wrong with the input. Display text is lowercase and reads after
/// "record 12 at offset 4096: ".
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ends inside an item.
    #[error("truncated {item}: expected {expected} bytes, found {found}")]
    Truncated {
        /// The item being read.
        item: &'static str,
        /// Bytes the item needs.
        expected: u64,
        /// Bytes left in the input.
        found: u64,
    },
    /// Fewer bytes than a record header remain after the last record.
    #[error("{count} trailing byte(s) after the last complete record; a record starts with a 4-byte PCR index")]
    TrailingBytes {
        /// Number of trailing bytes.
        count: u64,
    },
    /// A field's length word runs past the end of its template data.
    #[error("field length {value} runs past the template data, which has {left} byte(s) left for it")]
    FieldOverrun {
        /// The value read.
        value: u64,
        /// Bytes of template data after the length word.
        left: u64,
    },
    /// A length word beyond its limit.
    #[error("{item} {value} exceeds the limit of {limit}")]
    ImpossibleLength {
        /// The length's name.
        item: &'static str,
        /// The value read.
        value: u64,
        /// The largest accepted value.
        limit: u64,
    },
    /// A PCR index no kernel can log.
    #[error("PCR index {pcr} is out of range 0 to 63{hint}")]
    PcrOutOfRange {
        /// The index read.
        pcr: u64,
        /// Extra advice, such as a byte-order hint.
        hint: &'static str,
    },
    /// The template name is unknown or invalid.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The template data does not split into the template's fields.
    #[error("template '{template}' has {expected} fields, but the template data {found}")]
    FieldCount {
        /// Template name.
        template: String,
        /// Fields the template defines.
        expected: usize,
        /// What was found, as text ("holds 3", "ends inside field 2").
        found: String,
    },
    /// One field is malformed.
    #[error("{source}")]
    Field {
        /// Zero-based field position.
        position: usize,
        /// The error.
        source: FieldError,
    },
    /// The non-upstream layout in which the template digest is preceded by
    /// its length.
    #[error(
        "the template digest is preceded by a length word ({length}); upstream kernels write a fixed-size \
         digest with no length, so this list comes from a patched kernel and is not supported"
    )]
    LengthPrefixedDigest {
        /// The length word found.
        length: u32,
    },
    /// A malformed ASCII line.
    #[error("{0}")]
    Line(String),
    /// An ASCII column with invalid hex.
    #[error("{column} has invalid hex at column {column_number}: {found:?}")]
    BadHex {
        /// The column's name.
        column: &'static str,
        /// One-based character column in the line.
        column_number: usize,
        /// The text found.
        found: String,
    },
    /// A template digest of unexpected width.
    #[error("template digest is {found} bytes; expected {expected} bytes for this list")]
    DigestWidth {
        /// Expected size.
        expected: usize,
        /// Size found.
        found: usize,
    },
    /// The input could not be recognised as any list format.
    #[error("not a measurement list: {0}")]
    Unrecognised(String),
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(Arc<io::Error>),
}

impl DecodeErrorKind {
    /// The field error for field `position`.
    pub(crate) fn field(position: usize, source: FieldError) -> Self {
        DecodeErrorKind::Field { position, source }
    }
}

impl From<io::Error> for DecodeErrorKind {
    fn from(error: io::Error) -> Self {
        DecodeErrorKind::Io(Arc::new(error))
    }
}
