//! How `imalog verify --state` picks its store: a `postgres://` or
//! `postgresql://` URL goes to PostgreSQL (a usage error in a build without
//! the `postgres` feature), anything else is a SQLite file.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `imalog verify --once` against a collector address that refuses
/// connections, with the given `--state`.
fn verify_once(folder: &Path, state: &str) -> Output {
    let ak = folder.join("ak.hex");
    let key = imalog_tpm::SoftTpm::with_default_banks().ak_public().expect("software attestation key");
    std::fs::write(&ak, imalog_core::hex::encode(&key)).expect("write the key file");
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    Command::new(env!("CARGO_BIN_EXE_imalog"))
        .args(["verify", "--collector", &format!("http://127.0.0.1:{port}"), "--once", "--state", state])
        .arg("--ak")
        .arg(&ak)
        .output()
        .expect("run imalog")
}

#[test]
fn postgres_url_selects_postgres() {
    let folder = tempfile::tempdir().expect("temporary folder");
    // The socket folder is empty, so a build with PostgreSQL support fails
    // to connect without sending anything over the network.
    let url = format!("postgresql://verifier:secret-password@/imalog?host={}", folder.path().display());
    let output = verify_once(folder.path(), &url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "usage error; stderr: {stderr}");
    if cfg!(feature = "postgres") {
        assert!(stderr.contains("--state: PostgreSQL state database: error connecting to server"), "{stderr}");
    } else {
        assert!(stderr.contains("cargo build --features postgres"), "{stderr}");
    }
    assert!(!stderr.contains("secret-password"), "the password stays out of messages: {stderr}");
}

#[test]
fn plain_path_selects_sqlite() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let database = folder.path().join("verifier.db");
    let output = verify_once(folder.path(), database.to_str().expect("UTF-8 path"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The store opens, the round reaches no collector and has no verdict.
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}");
    assert!(stdout.contains("no verdict"), "{stdout}");
    assert!(database.is_file(), "the SQLite database was created");
}
