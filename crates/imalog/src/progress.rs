//! A one-line progress display on stderr for long runs, shown only when
//! stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Redraws at most this often.
const INTERVAL: Duration = Duration::from_millis(250);

/// Progress of a record-by-record job.
pub struct Progress {
    label: &'static str,
    enabled: bool,
    started: Instant,
    last_draw: Instant,
    drawn: bool,
}

impl Progress {
    /// A display labelled `label`; inactive unless `wanted` and stderr is a
    /// terminal.
    pub fn new(label: &'static str, wanted: bool) -> Self {
        let now = Instant::now();
        Progress {
            label,
            enabled: wanted && std::io::stderr().is_terminal(),
            started: now,
            last_draw: now,
            drawn: false,
        }
    }

    /// Reports the records and bytes done so far; cheap when nothing is drawn.
    pub fn update(&mut self, records: u64, bytes: u64) {
        if records % 1024 != 0 {
            return;
        }
        self.update_now(records, bytes);
    }

    /// Like [`Progress::update`], for callers that report once per batch.
    pub fn update_now(&mut self, records: u64, bytes: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_draw) < INTERVAL {
            return;
        }
        self.last_draw = now;
        let seconds = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let line = format!(
            "\r{}: {} records, {:.1} MiB, {:.0} records/s ",
            self.label,
            records,
            bytes as f64 / (1024.0 * 1024.0),
            records as f64 / seconds
        );
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Clears the line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(b"\r\x1b[2K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
