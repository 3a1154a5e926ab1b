//! `imalog show`: print a list as the kernel's ASCII lines or as JSON lines.

use imalog_core::{ascii, FieldValue, Record};
use serde_json::{json, Map, Value};

use crate::cli::ShowArgs;
use crate::commands::for_each_record;
use crate::input::{open_input, open_output};
use crate::outcome::{Failure, Outcome};
use crate::progress::Progress;

/// Runs `imalog show`.
pub fn run(args: &ShowArgs, progress: bool) -> Outcome {
    let mut input = open_input(&args.file, &args.input)?;
    let (output_name, mut output) = open_output("-".as_ref())?;
    let mut progress = Progress::new("show", progress);
    let mut line = Vec::with_capacity(512);

    for_each_record(&mut input, &mut progress, |record, format, input| {
        let bank = args.bank.unwrap_or(format.bank);
        let digest = if bank == format.bank { record.digest } else { record.bank_digest(&bank) };
        line.clear();
        if args.json {
            let index = input.reader.records_read() - 1;
            let object = record_json(record, index, &bank.to_string(), &digest.to_hex());
            line.extend_from_slice(object.to_string().as_bytes());
            line.push(b'\n');
        } else {
            ascii::encode_record(record, &digest, &mut line);
        }
        output.write_all(&line).map_err(|e| Failure::write(e, &output_name))
    })?;
    output.flush().map_err(|e| Failure::write(e, &output_name))
}

/// One record as a JSON object.
pub fn record_json(record: &Record, index: u64, bank: &str, digest: &str) -> Value {
    let fields: Vec<Value> = record
        .fields()
        .zip(record.field_values())
        .map(|((id, data), (_, value))| field_json(id.as_str(), data, value))
        .collect();
    json!({
        "index": index,
        "pcr": record.pcr,
        "bank": bank,
        "template_digest": digest,
        "violation": record.is_violation(),
        "template": record.template.name(),
        "fields": fields,
    })
}

fn field_json(id: &str, data: &[u8], value: Result<FieldValue<'_>, imalog_core::FieldError>) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(id));
    let hex = imalog_core::hex::encode(data);
    match value {
        Err(error) => {
            object.insert("hex".into(), json!(hex));
            object.insert("error".into(), json!(error.to_string()));
        }
        Ok(FieldValue::Empty) => {
            object.insert("empty".into(), json!(true));
        }
        Ok(FieldValue::Digest(digest)) => {
            object.insert("digest".into(), json!(imalog_core::hex::encode(digest)));
        }
        Ok(FieldValue::DigestWithAlgo { algorithm, digest }) => {
            object.insert("algorithm".into(), json!(algorithm));
            object.insert("digest".into(), json!(imalog_core::hex::encode(digest)));
        }
        Ok(FieldValue::DigestWithTypeAndAlgo { digest_type, algorithm, digest }) => {
            object.insert("type".into(), json!(digest_type));
            object.insert("algorithm".into(), json!(algorithm));
            object.insert("digest".into(), json!(imalog_core::hex::encode(digest)));
        }
        Ok(FieldValue::Name(name)) => {
            object.insert("name".into(), json!(String::from_utf8_lossy(name)));
            if std::str::from_utf8(name).is_err() {
                object.insert("name_hex".into(), json!(imalog_core::hex::encode(name)));
            }
        }
        Ok(FieldValue::Signature(signature)) => {
            object.insert("hex".into(), json!(hex));
            let header = signature.header.map(|h| {
                json!({
                    "type": h.xattr_type,
                    "version": h.version,
                    "hash_algorithm": h.hash_algo_name(),
                    "key_id": imalog_core::hex::encode(&h.key_id),
                    "length": h.signature_len,
                })
            });
            object.insert("signature".into(), header.unwrap_or(Value::Null));
        }
        Ok(FieldValue::Bytes(_)) => {
            object.insert("hex".into(), json!(hex));
        }
        Ok(FieldValue::Uint(value)) => {
            object.insert("value".into(), json!(value));
        }
        Ok(FieldValue::XattrNames(names)) => {
            let names: Vec<String> = names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
            object.insert("names".into(), json!(names));
        }
        Ok(FieldValue::XattrLengths(lengths)) => {
            object.insert("lengths".into(), json!(lengths));
        }
        Ok(_) => {
            object.insert("hex".into(), json!(hex));
        }
    }
    Value::Object(object)
}
