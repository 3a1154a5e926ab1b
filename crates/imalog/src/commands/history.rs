//! `imalog history`: the records a collector stored, read from its store
//! folder while no collector has it open.

use std::io::Write;

use imalog_collector::Store;

use crate::cli::HistoryArgs;
use crate::input::open_output;
use crate::outcome::{Failure, Outcome};

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
        None => Store::open(&args.store).map_err(|e| Failure::Usage(e.to_string()))?,
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
            Err(error) => return Err(Failure::Usage(error.to_string())),
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
    tell!(
        "imalog: wrote records {} to {} of epoch {} ({} byte order) to {output_name}",
        args.from,
        end.saturating_sub(1),
        store.epoch(),
        store.byte_order()
    );
    Ok(())
}
