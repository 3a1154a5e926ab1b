//! imalog-core: the records of the Linux IMA measurement list, their
//! templates and fields, the kernel's binary and ASCII encodings, template
//! digests in every PCR bank, and PCR replay with prefix matching against
//! quoted values.
//!
//! # Main types
//!
//! - [`Record`] is one list record: PCR index, [`Template`], the raw
//!   [`TemplateData`] of its fields, and the template digest as logged.
//! - [`ListReader`] detects a list's format and decodes it record by record
//!   from any reader; [`BinaryDecoder`] and [`AsciiDecoder`] do the work, and
//!   [`binary::encode_record`] and [`ascii::encode_record`] write records back
//!   byte for byte as the kernel does.
//! - [`Bank`] is a PCR bank; [`Record::bank_digest`] computes the template
//!   digest the kernel stores in that bank's slot.
//! - [`Replayer`] extends records into PCRs from a [`ReplayState`] and finds
//!   the prefix that reproduces [`ExpectedPcr`] values.
//!
//! Nothing here does I/O beyond `Read` and `Write`, and no input makes it
//! panic: every malformed input yields a [`DecodeError`] that names the byte
//! offset or line, the record index, and what was expected.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Errors carry the digests they compare (up to 64 bytes each) so that a
// report needs no second pass; they occur once per run, not per record.
#![allow(clippy::result_large_err)]

pub mod ascii;
pub mod bank;
pub mod binary;
pub mod byte_order;
pub mod error;
pub mod field;
pub mod format;
pub mod hash;
pub mod hex;
pub mod pcrs;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod synth;
pub mod template;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use ascii::{AsciiDecoder, AsciiEncoder};
pub use bank::{Bank, BankError};
pub use binary::{BinaryDecoder, BinaryEncoder, BinaryLayout};
pub use byte_order::ByteOrder;
pub use error::{DecodeError, DecodeErrorKind, Location};
pub use field::{FieldError, FieldValue, Signature, SignatureHeader};
pub use format::{bank_from_file_name, open_list, ListFormat, ListKind, ListOptions, ListReader};
pub use hash::{Digest, HashAlgorithm, Hasher, MAX_DIGEST_SIZE};
pub use pcrs::{format_pcr_yaml, parse_pcr_yaml, PcrFileError};
pub use record::{Record, RecordError, TemplateData};
pub use replay::{ExpectedPcr, PcrMismatch, PrefixMatch, ReplayError, ReplayPlan, ReplayState, Replayer};
pub use template::{FieldFormat, FieldId, Template, TemplateError};
