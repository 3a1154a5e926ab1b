//! `imalog measure` and `imalog kexec`: requests to the control socket of a
//! running `imalog emulate`.

use std::path::PathBuf;

use imalog_fs::control::{send, Request};
use serde_json::Value;

use crate::cli::{KexecArgs, MeasureArgs};
use crate::outcome::{Failure, Outcome};

/// Runs `imalog measure`.
pub fn measure(args: &MeasureArgs) -> Outcome {
    let request = match (&args.buffer, &args.data, &args.violation) {
        (Some(name), Some(data), _) => Request::Buffer { name: name.clone(), data: data.clone(), pcr: args.pcr },
        (_, _, Some(path)) => Request::Violation { path: path.clone() },
        _ => {
            // The emulator may run in another folder: send absolute paths.
            let paths: Vec<PathBuf> =
                args.files.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect();
            Request::Measure { paths, pcr: args.pcr }
        }
    };
    let response = send(&args.control, &request).map_err(|e| Failure::Usage(format!("control: {e}")))?;
    let mut failed = 0;
    for result in response["results"].as_array().into_iter().flatten() {
        let outcome = result["outcome"].as_str().unwrap_or("unknown");
        let subject = result["path"].as_str().map(str::to_string).unwrap_or_else(|| describe(&request));
        match result["error"].as_str() {
            Some(error) => {
                failed += 1;
                eprintln!("imalog: {subject}: {error}");
            }
            None => println!("{outcome} {subject}"),
        }
    }
    if failed > 0 {
        return Err(Failure::Verification(format!("{failed} measurement(s) failed")));
    }
    Ok(())
}

fn describe(request: &Request) -> String {
    match request {
        Request::Buffer { name, .. } => name.clone(),
        Request::Violation { path } => path.clone(),
        _ => String::new(),
    }
}

/// Runs `imalog kexec`.
pub fn kexec(args: &KexecArgs) -> Outcome {
    let response = send(&args.control, &Request::Kexec).map_err(|e| Failure::Usage(format!("control: {e}")))?;
    let field = |name: &str| response.get(name).cloned().unwrap_or(Value::Null);
    println!(
        "kexec: restored {} records from a {}-byte buffer; boot {}",
        field("restored"),
        field("dump_bytes"),
        field("boots")
    );
    if let Some(error) = response["restore_error"].as_str() {
        eprintln!("imalog: kexec: restore stopped early: {error}");
    }
    if let Some(error) = response["load"]["error"].as_str() {
        eprintln!("imalog: kexec: kexec_load failed, nothing was carried: {error}");
    }
    Ok(())
}
