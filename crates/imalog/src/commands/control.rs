//! `imalog measure` and `imalog kexec`: requests to the control socket of a
//! running `imalog emulate`.

use imalog_fs::control::{send, Request};
use serde_json::Value;

use crate::cli::{KexecArgs, MeasureArgs};
use crate::outcome::{Failure, Outcome};

/// Runs `imalog measure`.
pub fn measure(args: &MeasureArgs) -> Outcome {
    let request = match (&args.buffer, &args.data, &args.violation) {
        (Some(name), Some(data), _) => Request::Buffer { name: name.clone(), data: data.clone(), pcr: args.pcr },
        (None, Some(_), _) => {
            return Err(Failure::Usage("--data needs --buffer NAME: it is a buffer's content".into()))
        }
        (_, _, Some(path)) => Request::Violation { path: path.clone() },
        _ => {
            // The emulator may run in another folder: send absolute paths.
            let mut paths = Vec::with_capacity(args.files.len());
            for path in &args.files {
                if path.to_str().is_none() {
                    return Err(Failure::Usage(format!(
                        "{}: the control socket carries UTF-8 paths only",
                        path.to_string_lossy().escape_debug()
                    )));
                }
                paths.push(std::path::absolute(path).unwrap_or_else(|_| path.clone()));
            }
            Request::Measure { paths, pcr: args.pcr }
        }
    };
    let response = send(&args.control, &request).map_err(|e| Failure::Usage(format!("control: {e}")))?;
    let (mut failed, mut suspended) = (0, 0);
    for result in response["results"].as_array().into_iter().flatten() {
        let outcome = result["outcome"].as_str().unwrap_or("unknown");
        let subject = result["path"].as_str().map(str::to_string).unwrap_or_else(|| describe(&request));
        // Names may hold newlines or control characters: print them escaped.
        let subject = subject.escape_debug();
        if let Some(error) = result["error"].as_str() {
            failed += 1;
            // File errors from the kernel model already start with the path.
            let raw = result["path"].as_str().unwrap_or_default();
            let error = error.strip_prefix(raw).and_then(|rest| rest.strip_prefix(": ")).unwrap_or(error);
            tell!("imalog: {subject}: {error}");
        } else if result["tpm_error"] == Value::Bool(true) {
            failed += 1;
            tell!("imalog: {subject}: recorded in the list, but the TPM extend failed");
        } else if outcome == "suspended" {
            suspended += 1;
            say!("suspended {subject}");
        } else if matches!(request, Request::Violation { .. }) && outcome == "measured" {
            say!("violation {subject}");
        } else {
            say!("{outcome} {subject}");
        }
    }
    if failed > 0 || suspended > 0 {
        let mut parts = Vec::new();
        if failed > 0 {
            parts.push(format!("{failed} measurement(s) failed"));
        }
        if suspended > 0 {
            parts.push(format!("{suspended} not recorded because the kernel is suspended for kexec"));
        }
        return Err(Failure::Verification(parts.join("; ")));
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
    say!(
        "kexec: restored {} records from a {}-byte buffer; boot {}",
        field("restored"),
        field("dump_bytes"),
        field("boots")
    );
    if let Some(error) = response["restore_error"].as_str() {
        tell!("imalog: kexec: restore stopped early: {error}");
    }
    if let Some(error) = response["load"]["error"].as_str() {
        tell!("imalog: kexec: kexec_load failed, nothing was carried: {error}");
    }
    Ok(())
}
