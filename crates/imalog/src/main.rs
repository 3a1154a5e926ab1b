//! The `imalog` command: parses arguments, sets up logging, runs one
//! subcommand and maps its outcome to an exit status in one place.
//!
//! Exit status: 0 success; 1 the list failed to decode or to verify; 2 a
//! usage or environment error (bad arguments, unreadable files). A broken
//! pipe on standard output ends the program quietly with status 0, as other
//! Unix filters do.

/// Prints a line to standard output. A closed stdout does not panic (as
/// `println!` does); filters that stream lists handle it themselves.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a line to standard error, ignoring a closed stderr.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod commands;
mod inprocess;
mod input;
mod outcome;
mod progress;
mod state;
mod tpm;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::outcome::Failure;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap prints help and version to stdout with status 0, and
            // usage errors to stderr with status 2.
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    // Services log their starts, stops and decisions; one-shot commands
    // print only warnings unless asked.
    let default_level = if matches!(cli.command, Command::Emulate(_) | Command::Collect(_) | Command::Verify(_)) {
        "info"
    } else {
        "warn"
    };
    init_tracing(default_level);

    let progress = !cli.no_progress;
    let result = match &cli.command {
        Command::Show(args) => commands::show::run(args, progress),
        Command::Convert(args) => commands::convert::run(args, progress),
        Command::Replay(args) => commands::replay::run(args, progress),
        Command::Generate(args) => commands::generate::run(args, progress),
        Command::Emulate(args) => commands::emulate::run(args),
        Command::Measure(args) => commands::control::measure(args),
        Command::Kexec(args) => commands::control::kexec(args),
        Command::Collect(args) => commands::collect::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::History(args) => commands::history::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BrokenPipe) => ExitCode::SUCCESS,
        Err(failure) => {
            tell!("imalog: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Logs go to stderr; `IMALOG_LOG` (or `RUST_LOG`) sets the filter,
/// `default_level` otherwise.
fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("IMALOG_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|text| EnvFilter::try_new(text).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LogSink).with_ansi(ansi).try_init();
}

/// Standard error for logs, dropping what cannot be written. A daemon whose
/// log reader went away (a closed pipe) keeps running: tracing-subscriber
/// reports a failed write with `eprintln!`, which panics on a closed stderr.
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
