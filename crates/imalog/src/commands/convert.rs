//! `imalog convert`: rewrite a list in the other format, another bank or
//! another byte order, as the kernel would have written it.

use imalog_core::{ascii, binary};

use crate::cli::{ConvertArgs, FormatArg};
use crate::commands::{for_each_record, record_failure};
use crate::input::{is_same_file, open_input, open_output};
use crate::outcome::{Failure, Outcome};
use crate::progress::Progress;

/// Runs `imalog convert`.
pub fn run(args: &ConvertArgs, progress: bool) -> Outcome {
    if args.to == FormatArg::Ascii && args.endian.is_some() {
        return Err(Failure::Usage(
            "--endian applies to binary output; for an ASCII list from a big-endian kernel use --input-endian be"
                .into(),
        ));
    }
    if is_same_file(&args.file, &args.output) {
        return Err(Failure::Usage(format!(
            "{}: the output file is the input file, which would be truncated before it is read; \
             write to another file and rename it",
            args.output.display()
        )));
    }
    let mut input = open_input(&args.file, &args.input)?;
    let (output_name, mut output) = open_output(&args.output)?;
    let mut progress = Progress::new("convert", progress);
    let mut buffer = Vec::with_capacity(512);

    for_each_record(&mut input, &mut progress, |record, format, input| {
        let index = input.reader.records_read() - 1;
        if !args.no_verify && !record.is_violation() {
            let computed = record.bank_digest(&format.bank);
            if computed != record.digest {
                return Err(record_failure(
                    input,
                    index,
                    format!(
                        "logged template digest {} does not match the {} digest of its template data, {computed}; \
                         pass --no-verify to copy it anyway",
                        record.digest, format.bank
                    ),
                ));
            }
        }

        let bank = args.bank.unwrap_or(format.bank);
        let order = match args.to {
            FormatArg::Binary => args.endian.unwrap_or(format.byte_order),
            FormatArg::Ascii => record.byte_order,
        };
        let reorder = order != record.byte_order;
        record.set_byte_order(order);
        let digest = if bank == format.bank && !reorder { record.digest } else { record.bank_digest(&bank) };

        buffer.clear();
        match args.to {
            FormatArg::Binary => binary::encode_record(record, &digest, order, &mut buffer),
            FormatArg::Ascii => ascii::encode_record(record, &digest, &mut buffer),
        }
        output.write_all(&buffer).map_err(|e| Failure::write(e, &output_name))
    })?;
    output.flush().map_err(|e| Failure::write(e, &output_name))
}
