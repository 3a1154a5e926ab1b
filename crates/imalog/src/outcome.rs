//! How a subcommand fails, and which exit status each kind of failure gets.

use std::fmt;
use std::io;

/// A subcommand failure. Display text follows "imalog: ".
#[derive(Debug)]
pub enum Failure {
    /// The list failed to decode or verify (exit 1).
    Verification(String),
    /// Bad arguments, unreadable or unwritable files (exit 2).
    Usage(String),
    /// Standard output was closed by its reader.
    BrokenPipe,
}

impl Failure {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Verification(_) => 1,
            Failure::Usage(_) => 2,
            Failure::BrokenPipe => 0,
        }
    }

    /// A failure to write output: a broken pipe is quiet, anything else is
    /// an environment error naming the output.
    pub fn write(error: io::Error, output: &str) -> Failure {
        if error.kind() == io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::Usage(format!("{output}: write failed: {error}"))
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Verification(message) | Failure::Usage(message) => f.write_str(message),
            Failure::BrokenPipe => f.write_str("broken pipe"),
        }
    }
}

/// Shorthand for subcommand results.
pub type Outcome<T = ()> = Result<T, Failure>;
