//! `imalog history`: the records a collector stored, read from its store
//! folder while no collector has it open.

use std::io::Write;

use imalog_collector::Store;

use crate::cli::HistoryArgs;
use crate::input::open_output;
use crate::outcome::{Failure, Outcome};

/// Turns a store error into a usage failure; a store held by a running
/// collector gets a pointer to the collector's own API.
fn store_failure(error: imalog_collector::StoreError) -> Failure {
    match error {
        imalog_collector::StoreError::Locked(_) => Failure::Usage(format!(
            "{error}; stop it first, or ask it for the same records with GET /v1/records?from=0"
        )),
        other => Failure::Usage(other.to_string()),
    }
}

/// Runs `imalog history`.
pub fn run(args: &HistoryArgs) -> Outcome {
    let epochs = args.store.join("epochs");
    if !epochs.is_dir() {
        return Err(Failure::Usage(format!(
            "{}: not an imalog store (expected an `epochs` folder inside it)",
            args.store.display()
        )));
    }
    let store = match args.epoch {
        None => Store::open(&args.store).map_err(store_failure)?,
        Some(epoch) => match Store::open_existing_epoch(&args.store, epoch) {
            Ok(Some(store)) => store,
            Ok(None) => {
                let epochs = Store::list_epochs(&args.store).map_err(|e| Failure::Usage(e.to_string()))?;
                let known = epochs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                return Err(Failure::Usage(format!(
                    "--epoch {epoch}: {} has no such epoch; it has {known}",
                    args.store.display()
                )));
            }
            Err(error) => return Err(store_failure(error)),
        },
    };
    if args.from > store.next_index() {
        return Err(Failure::Usage(format!(
            "--from {}: the store holds records 0 to {} of epoch {}",
            args.from,
            store.next_index().saturating_sub(1),
            store.epoch()
        )));
    }
    let (output_name, mut output) = open_output(&args.output)?;
    let end = store.write_records(args.from, &mut output).map_err(|e| Failure::Usage(e.to_string()))?;
    output.flush().map_err(|e| Failure::write(e, &output_name))?;
    if end == args.from {
        tell!(
            "imalog: no records to write: epoch {} contains {end} records, and --from is {}",
            store.epoch(),
            args.from
        );
    } else {
        tell!(
            "imalog: wrote records {} to {} of epoch {} ({} byte order) to {output_name}",
            args.from,
            end - 1,
            store.epoch(),
            store.byte_order()
        );
    }
    Ok(())
}
