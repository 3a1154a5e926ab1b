//! `imalog replay`: extend every record into PCRs, print the final values,
//! and check them against values read from a TPM.
//!
//! Standard output is valid `tpm2_pcrread` YAML with `#` comment lines
//! around it, so the values can be fed back to `--pcrs`.

use std::collections::BTreeSet;

use imalog_core::pipeline::{self, PipelineError};
use imalog_core::{format_pcr_yaml, parse_pcr_yaml, Bank, ExpectedPcr, ReplayState, Replayer};
use serde_json::{json, Map, Value};

use crate::cli::ReplayArgs;
use crate::commands::warn_short_lines;
use crate::input::{is_same_file, open_input, open_output, read_text};
use crate::outcome::{Failure, Outcome};
use crate::progress::Progress;
use crate::state::{parse_state, render_state};

/// Runs `imalog replay`.
pub fn run(args: &ReplayArgs, progress: bool) -> Outcome {
    check_single_stdin(args)?;
    if let Some(path) = &args.save_state {
        if is_same_file(&args.file, path) {
            return Err(Failure::Usage(format!(
                "{}: --save-state names the list being replayed; give another file",
                path.display()
            )));
        }
    }
    let (start, state_name) = match &args.from_state {
        Some(path) => {
            let (name, text) = read_text(path, "the replay state")?;
            let state = parse_state(&text).map_err(|e| Failure::Usage(format!("{name}: {e}")))?;
            (state, name)
        }
        None => (ReplayState::cold_boot(), String::new()),
    };
    let expected = match &args.pcrs {
        Some(path) => {
            let (name, text) = read_text(path, "PCR values")?;
            let values = parse_pcr_yaml(&text).map_err(|e| Failure::Usage(format!("{name}: {e}")))?;
            if values.is_empty() {
                return Err(Failure::Usage(format!("{name}: no PCR values found; expected tpm2_pcrread output")));
            }
            Some(values)
        }
        None => None,
    };
    check_state_banks(&state_name, &start, &args.banks, expected.as_deref())?;

    let mut input = open_input(&args.file, &args.input)?;
    let mut progress = Progress::new("replay", progress);

    // Template digests are computed on a second thread while this one
    // decodes and extends.
    let replayed = pipeline::replay_list(
        &mut input.reader,
        |format| new_replayer(args, format.bank, &start, expected.as_deref()),
        |records, bytes| progress.update_now(records, bytes),
    );
    progress.finish();
    let replayer = match replayed {
        Ok(replayer) => replayer,
        Err(PipelineError::Decode(error)) => return Err(input.decode_failure(error)),
        Err(PipelineError::Replay { record, location, error }) => {
            return Err(Failure::Verification(format!("{}: record {record} at {location}: {error}", input.name)))
        }
        Err(PipelineError::Start(failure)) => return Err(failure),
    };
    warn_short_lines(&input);
    let records = input.reader.records_read();

    // An empty list still reports the starting state and can match it.
    let replayer = match replayer {
        Some(replayer) => replayer,
        None => new_replayer(args, Bank::SHA1, &start, expected.as_deref())?,
    };
    report(args, &input.name, records, &start, &replayer, expected.as_deref())
}

/// Rejects a command line on which more than one input is `-`: the first
/// reader would consume standard input and leave the others empty.
fn check_single_stdin(args: &ReplayArgs) -> Outcome {
    let inputs =
        [("FILE", Some(&args.file)), ("--pcrs", args.pcrs.as_ref()), ("--from-state", args.from_state.as_ref())];
    let stdin_readers: Vec<&str> =
        inputs.iter().filter(|(_, path)| path.is_some_and(|p| p.as_os_str() == "-")).map(|(name, _)| *name).collect();
    if stdin_readers.len() > 1 {
        return Err(Failure::Usage(format!(
            "standard input ('-') is given for {}, but it can be read only once; give a file name for all but one",
            stdin_readers.join(" and ")
        )));
    }
    Ok(())
}

/// Rejects banks that a state past the cold boot has no values for. Every
/// record extends every bank, so such a state was saved without that bank,
/// and replaying the bank from its reset value would print a wrong PCR value.
fn check_state_banks(
    state_name: &str,
    start: &ReplayState,
    banks: &[Bank],
    expected: Option<&[ExpectedPcr]>,
) -> Outcome {
    if start.next_index == 0 {
        return Ok(());
    }
    let index = start.next_index;
    if start.values.is_empty() {
        return Err(Failure::Usage(format!(
            "{state_name}: the state at absolute index {index} lists no PCR values, so no bank can be replayed from it"
        )));
    }
    let requested = banks.iter().chain(expected.unwrap_or_default().iter().map(|e| &e.bank));
    for bank in requested {
        if !start.values.keys().any(|(state_bank, _)| state_bank == bank) {
            let listed: BTreeSet<String> = start.values.keys().map(|(b, _)| b.to_string()).collect();
            return Err(Failure::Usage(format!(
                "{state_name}: the state at absolute index {index} has no values in bank {bank}, so that bank \
                 cannot be replayed from it; replay only the banks it lists ({}) or save a state that includes {bank}",
                listed.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}

fn new_replayer(
    args: &ReplayArgs,
    list_bank: Bank,
    start: &ReplayState,
    expected: Option<&[ExpectedPcr]>,
) -> Outcome<Replayer> {
    let mut banks: Vec<Bank> = args.banks.clone();
    if banks.is_empty() {
        let mut from_inputs: Vec<Bank> = Vec::new();
        for bank in expected.unwrap_or_default().iter().map(|e| e.bank).chain(start.values.keys().map(|(b, _)| *b)) {
            if !from_inputs.contains(&bank) {
                from_inputs.push(bank);
            }
        }
        banks = if from_inputs.is_empty() { vec![Bank::SHA1, Bank::SHA256, list_bank] } else { from_inputs };
    }
    let mut replayer = Replayer::new(list_bank, &banks, start).map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(values) = expected {
        replayer.expect(values).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    Ok(replayer)
}

/// The PCR values to print: every PCR the replay touched, plus every PCR
/// given, in bank order.
fn final_values(replayer: &Replayer, expected: Option<&[ExpectedPcr]>) -> Vec<ExpectedPcr> {
    let state = replayer.state();
    let mut keys: BTreeSet<(usize, u32)> = BTreeSet::new();
    let banks = replayer.banks();
    let position = |bank: &Bank| banks.iter().position(|b| b == bank).unwrap_or(usize::MAX);
    for (bank, pcr) in state.values.keys() {
        keys.insert((position(bank), *pcr));
    }
    for entry in expected.unwrap_or_default() {
        keys.insert((position(&entry.bank), entry.pcr));
    }
    keys.into_iter()
        .filter_map(|(i, pcr)| banks.get(i).map(|bank| ExpectedPcr { bank: *bank, pcr, value: state.value(bank, pcr) }))
        .collect()
}

fn report(
    args: &ReplayArgs,
    name: &str,
    records: u64,
    start: &ReplayState,
    replayer: &Replayer,
    expected: Option<&[ExpectedPcr]>,
) -> Outcome {
    let values = final_values(replayer, expected);
    let first = start.next_index;
    let next = replayer.next_index();

    let matched = replayer.prefix_match();
    let (output_name, mut output) = open_output("-".as_ref())?;
    let text = if args.json {
        json_report(records, first, next, &values, replayer, expected.is_some()).to_string() + "\n"
    } else {
        let origin = if first == 0 && start.values.is_empty() {
            "from a cold boot".to_string()
        } else {
            format!("from the state at absolute index {first}")
        };
        let mut text = match records {
            0 => format!("# replayed 0 records {origin}\n"),
            1 => format!("# replayed 1 record (absolute index {first}) {origin}\n"),
            _ => format!("# replayed {records} records (absolute indexes {first} to {}) {origin}\n", next - 1),
        };
        text.push_str(&format_pcr_yaml(&values));
        if let (Some(given), Some(run)) = (expected, matched) {
            let covered = run.last - first;
            if covered == 0 {
                text.push_str(&format!(
                    "# match: the starting state already reproduces all {} given PCR values\n",
                    given.len()
                ));
            } else {
                text.push_str(&format!(
                    "# match: the first {covered} records (absolute indexes {first} to {}) reproduce all {} given PCR values\n",
                    run.last - 1,
                    given.len()
                ));
            }
            if run.first < run.last {
                text.push_str(&format!(
                    "# any prefix of {} to {covered} records matches: the records in between extend PCRs that were not given\n",
                    run.first - first
                ));
            }
            if next > run.last {
                text.push_str(&format!(
                    "# the {} later records are not covered by the given values (appended after they were read)\n",
                    next - run.last
                ));
            }
        }
        text
    };
    output.write_all(text.as_bytes()).map_err(|e| Failure::write(e, &output_name))?;
    output.flush().map_err(|e| Failure::write(e, &output_name))?;

    let failed = expected.is_some() && matched.is_none();
    if !failed {
        if let Some(path) = &args.save_state {
            std::fs::write(path, render_state(&replayer.state()))
                .map_err(|e| Failure::Usage(format!("{}: cannot write the replay state: {e}", path.display())))?;
        }
    }
    if failed {
        let mismatches = replayer.mismatches();
        let detail = mismatches.first().map(|m| m.to_string()).unwrap_or_default();
        return Err(Failure::Verification(format!(
            "{name}: no prefix of the list reproduces the given PCR values; after all {records} records, {detail}"
        )));
    }
    Ok(())
}

fn json_report(
    records: u64,
    first: u64,
    next: u64,
    values: &[ExpectedPcr],
    replayer: &Replayer,
    checked: bool,
) -> Value {
    let mut pcrs: Map<String, Value> = Map::new();
    for entry in values {
        let bank = pcrs.entry(entry.bank.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = bank {
            map.insert(entry.pcr.to_string(), json!(entry.value.to_hex()));
        }
    }
    let matched = replayer.prefix_match().map(|run| {
        json!({
            "records": run.last - first,
            "next_index": run.last,
            "shortest_records": run.first - first,
        })
    });
    let mismatches: Vec<Value> = replayer
        .mismatches()
        .iter()
        .map(|m| json!({"bank": m.bank.to_string(), "pcr": m.pcr, "expected": m.expected.to_hex(), "computed": m.computed.to_hex()}))
        .collect();
    json!({
        "records": records,
        "first_index": first,
        "next_index": next,
        "banks": replayer.banks().iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        "pcrs": pcrs,
        "checked": checked,
        "mismatches": if checked && matched.is_none() { json!(mismatches) } else { Value::Null },
        "match": matched,
    })
}
