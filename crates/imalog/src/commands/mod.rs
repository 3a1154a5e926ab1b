//! One module per subcommand. Each `run` takes the parsed arguments and
//! whether progress may be shown, and returns an [`crate::outcome::Outcome`].

pub mod collect;
pub mod control;
pub mod convert;
pub mod demo;
pub mod demo_processes;
pub mod emulate;
pub mod generate;
pub mod history;
pub mod replay;
pub mod show;
pub mod verify;

use imalog_core::{DecodeError, ListFormat, Record};

use crate::input::Input;
use crate::outcome::{Failure, Outcome};
use crate::progress::Progress;

/// Decodes every record of `input`, calling `each` with the record and the
/// list's format, and keeps the progress line current.
pub fn for_each_record(
    input: &mut Input,
    progress: &mut Progress,
    mut each: impl FnMut(&mut Record, ListFormat, &Input) -> Outcome,
) -> Outcome<u64> {
    let mut record = imalog_core::binary::empty_record();
    loop {
        match input.reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => return Err(input.decode_failure(error)),
        }
        let Some(format) = input.reader.format() else {
            return Err(input.decode_failure(DecodeError {
                location: input.reader.last_record_location(),
                record: input.reader.records_read(),
                kind: imalog_core::DecodeErrorKind::Unrecognised("list format unknown after a record".into()),
            }));
        };
        each(&mut record, format, input)?;
        progress.update(input.reader.records_read(), input.reader.bytes_read());
    }
    progress.finish();
    warn_short_lines(input);
    Ok(input.reader.records_read())
}

/// Reports ASCII lines whose empty trailing fields were missing.
pub fn warn_short_lines(input: &Input) {
    let count = input.reader.short_lines();
    if count > 0 {
        tell!(
            "imalog: warning: {}: {count} line(s) lacked the separating space of an empty last field \
             (such as a missing signature); the field was read as empty",
            input.name
        );
    }
}

/// A failure for record `index` (0-based within the input) at the reader's
/// last record location.
pub fn record_failure(input: &Input, index: u64, message: impl std::fmt::Display) -> Failure {
    Failure::Verification(format!(
        "{}: record {index} at {}: {message}",
        input.name,
        input.reader.last_record_location()
    ))
}
