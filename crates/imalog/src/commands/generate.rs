//! `imalog generate`: write a synthetic list with the core's generator.

use std::sync::Arc;

use imalog_core::synth::{SynthOptions, SyntheticList, TemplateMix};
use imalog_core::{ascii, binary, Template};

use crate::cli::{FormatArg, GenerateArgs};
use crate::input::open_output;
use crate::outcome::{Failure, Outcome};
use crate::progress::Progress;

/// Runs `imalog generate`.
pub fn run(args: &GenerateArgs, progress: bool) -> Outcome {
    let templates = if args.template == "all" {
        TemplateMix::All
    } else {
        let template =
            Template::lookup(args.template.as_bytes()).map_err(|e| Failure::Usage(format!("--template: {e}")))?;
        TemplateMix::Single(Arc::clone(&template))
    };
    if args.violations_every == Some(0) {
        return Err(Failure::Usage("--violations-every must be at least 1".into()));
    }
    if args.format == FormatArg::Ascii && args.endian != imalog_core::ByteOrder::Little {
        return Err(Failure::Usage("--endian be applies to binary output only".into()));
    }
    let options = SynthOptions {
        records: args.records,
        seed: args.seed,
        templates,
        violation_every: args.violations_every,
        boot_aggregate: true,
        bank: args.bank,
        byte_order: args.endian,
    };

    let (output_name, mut output) = open_output(&args.output)?;
    let mut progress = Progress::new("generate", progress);
    let mut buffer = Vec::with_capacity(1024);
    let mut written = 0u64;
    for (index, record) in SyntheticList::new(options).enumerate() {
        buffer.clear();
        match args.format {
            FormatArg::Binary => binary::encode_record(&record, &record.digest, args.endian, &mut buffer),
            FormatArg::Ascii => ascii::encode_record(&record, &record.digest, &mut buffer),
        }
        output.write_all(&buffer).map_err(|e| Failure::write(e, &output_name))?;
        written += buffer.len() as u64;
        progress.update(index as u64 + 1, written);
    }
    progress.finish();
    output.flush().map_err(|e| Failure::write(e, &output_name))
}
