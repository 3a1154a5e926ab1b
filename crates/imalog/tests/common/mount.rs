//! A running `imalog emulate` on a fresh temporary FUSE mount, and probe
//! children that open its files with fewer privileges than the test.
//!
//! Every [`Emulator`] is stopped with SIGTERM when it drops, also when a
//! test fails, and a mount that is still there afterwards is detached with
//! `fusermount3 -u -z`. The test must drop its own descriptors on the mount
//! first, which declaring the emulator before them does.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use imalog_fs::control::{send, Request};
use serde_json::Value;
use tempfile::TempDir;

use crate::common::{arg, imalog};

/// Time allowed for `imalog emulate` to mount, and to exit after a signal.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a release to reach the model. Linux sends FUSE_RELEASE
/// after `close` has returned, so the model receives it later than a real
/// kernel would run its release.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment variable that makes the test binary act as a probe child;
/// its value lists the operations, one per line.
pub const PROBE_ENV: &str = "IMALOG_EMULATE_PROBE";

/// Name of the test function that runs [`run_probe_child`].
pub const PROBE_TEST: &str = "probe_child";

/// Marks the result lines of a probe child in its output, which libtest
/// shares.
const PROBE_RESULT: &str = "imalog-probe-result ";

/// Returns true when `IMALOG_REQUIRE_ORACLES=1` requires that missing tools
/// fail the tests instead of skipping them.
fn oracles_required() -> bool {
    std::env::var("IMALOG_REQUIRE_ORACLES").as_deref() == Ok("1")
}

/// Returns whether `found` is true. When it is false, panics if
/// `IMALOG_REQUIRE_ORACLES=1`, and otherwise prints a skip message.
pub fn available_or_skip(found: bool, missing: &str) -> bool {
    if !found {
        if oracles_required() {
            panic!("{missing}, and IMALOG_REQUIRE_ORACLES=1 requires it");
        }
        eprintln!("skipping: {missing} (set IMALOG_REQUIRE_ORACLES=1 to fail instead)");
    }
    found
}

/// Finds an executable on PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Returns whether FUSE mounts can be made: `/dev/fuse` and `fusermount3`
/// are both present. Skips or fails as [`available_or_skip`] does.
pub fn fuse_available() -> bool {
    let device = Path::new("/dev/fuse").exists();
    let fusermount = find_tool("fusermount3").is_some();
    available_or_skip(device && fusermount, "FUSE is unavailable: /dev/fuse or fusermount3 is missing (install fuse3)")
}

/// Returns whether `mount_point` is a mount point of this process's mount
/// namespace, from `/proc/self/mountinfo` (field 5 is the mount point).
pub fn is_mounted(mount_point: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let target = mount_point.to_string_lossy();
    info.lines().any(|line| line.split(' ').nth(4) == Some(target.as_ref()))
}

/// Sends `signal` to process `pid`.
fn send_signal(pid: u32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory.
    match unsafe { libc::kill(pid as libc::pid_t, signal) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// A running `imalog emulate` with `--test-hooks`, mounted on `mnt/` of its
/// own temporary folder, with its control socket and log beside it.
pub struct Emulator {
    child: Child,
    dir: TempDir,
    stopped: bool,
}

impl Emulator {
    /// Starts `imalog emulate` with `extra` arguments and waits until
    /// `integrity/ima` appears in the mount. The temporary folder is made
    /// world-searchable, so that probes as other users can reach the mount.
    pub fn start(extra: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().expect("failed to create a temporary folder");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod of the temporary folder");
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).expect("failed to create the mount point");
        let log = File::create(dir.path().join("emulate.log")).expect("failed to create the emulator log");
        let log_copy = log.try_clone().expect("failed to duplicate the log descriptor");
        let control = dir.path().join("control.sock");

        let child = Command::new(env!("CARGO_BIN_EXE_imalog"))
            .args(["emulate", "--mount", arg(&mount), "--control", arg(&control), "--test-hooks"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_copy)
            .spawn()
            .expect("failed to start imalog emulate");
        let mut emulator = Emulator { child, dir, stopped: false };

        let deadline = Instant::now() + START_TIMEOUT;
        while fs::symlink_metadata(emulator.ima("")).is_err() {
            if let Ok(Some(status)) = emulator.child.try_wait() {
                emulator.stopped = true;
                panic!("imalog emulate {extra:?} exited with {status} before mounting:\n{}", emulator.log());
            }
            assert!(Instant::now() < deadline, "imalog emulate {extra:?} did not mount within {START_TIMEOUT:?}");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(emulator.control().exists(), "the control socket is missing after the mount appeared");
        emulator
    }

    /// Returns the mount point.
    pub fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Returns the path of the control socket.
    pub fn control(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Returns the path of a file under `integrity/ima/` of the mount.
    pub fn ima(&self, name: &str) -> PathBuf {
        self.mount_point().join("integrity/ima").join(name)
    }

    /// Returns a path in the temporary folder, outside the mount, for test
    /// files.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Returns what the emulator wrote to standard output and standard error.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("emulate.log")).unwrap_or_default()
    }

    /// Sends a control request that must succeed and returns the response.
    pub fn request(&self, request: &Request) -> Value {
        send(&self.control(), request).unwrap_or_else(|e| panic!("control request {request:?} failed: {e}"))
    }

    /// Returns the `status` response: counters, suspension and the open-file
    /// state.
    pub fn status(&self) -> Value {
        self.request(&Request::Status)
    }

    /// Returns `open_users` of the running kernel: readers (more than 0), a
    /// writer (-1) or idle (0).
    pub fn open_users(&self) -> i64 {
        self.status()["open_users"].as_i64().expect("status has no open_users")
    }

    /// Waits until `open_users` is `expected`, because FUSE releases reach
    /// the model after `close` returns.
    pub fn wait_for_open_users(&self, expected: i64) {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            let users = self.open_users();
            if users == expected {
                return;
            }
            assert!(Instant::now() < deadline, "open_users is {users}, expected {expected} within {RELEASE_TIMEOUT:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads PCR 10 of every bank of the emulated TPM, as (bank, lowercase
    /// hex).
    pub fn pcr10(&self) -> Vec<(String, String)> {
        let response = self.request(&Request::ReadPcrs { pcrs: vec![10] });
        let banks = response["banks"].as_object().expect("read_pcrs response has no banks");
        banks
            .iter()
            .map(|(bank, values)| {
                let value = values["10"].as_str().unwrap_or_else(|| panic!("no PCR 10 in bank {bank}"));
                (bank.clone(), value.to_string())
            })
            .collect()
    }

    /// Measures files through `imalog measure`, which must report each one
    /// as measured.
    pub fn measure(&self, paths: &[PathBuf]) {
        let mut args = vec!["measure".to_string(), "--control".into(), arg(&self.control()).into()];
        args.extend(paths.iter().map(|p| arg(p).to_string()));
        let run = imalog(&args);
        assert_eq!(run.code, 0, "imalog {args:?}: {}", run.stderr);
        let expected: String = paths.iter().map(|p| format!("measured {}\n", p.display())).collect();
        assert_eq!(run.stdout_text(), expected, "imalog measure output");
    }

    /// Writes a file with `contents` to the temporary folder and measures it.
    pub fn measure_new_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.scratch(name);
        fs::write(&path, contents).expect("failed to write a file to measure");
        self.measure(std::slice::from_ref(&path));
        path
    }

    /// Soft-reboots through `imalog kexec` and returns its output line.
    pub fn kexec(&self) -> String {
        let run = imalog(["kexec", "--control", arg(&self.control())]);
        assert_eq!(run.code, 0, "imalog kexec: {}", run.stderr);
        run.stdout_text()
    }

    /// Sends `signal` and waits for the emulator to exit. A second call
    /// returns the status of the first.
    pub fn stop(&mut self, signal: i32) -> ExitStatus {
        if !self.stopped {
            let pid = self.child.id();
            send_signal(pid, signal).unwrap_or_else(|e| panic!("kill({pid}, {signal}) failed: {e}"));
        }
        self.stopped = true;
        match wait_timeout(&mut self.child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("imalog emulate did not exit within {STOP_TIMEOUT:?} of signal {signal}:\n{}", self.log());
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            // The emulator may have exited already.
            let _ = send_signal(self.child.id(), libc::SIGTERM);
            if wait_timeout(&mut self.child, STOP_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let mount = self.mount_point();
        if is_mounted(&mount) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&mount).status();
        }
        if thread::panicking() {
            eprintln!("imalog emulate log:\n{}", self.log());
        }
    }
}

/// One operation of a probe child.
#[derive(Clone, Debug)]
pub enum ProbeOp {
    /// Open read-only and read to the end.
    Read(PathBuf),
    /// Open write-only.
    Write(PathBuf),
}

/// The credentials a probe child runs with.
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    /// root without CAP_SYS_ADMIN in any capability set.
    RootWithoutCapSysAdmin,
    /// uid and gid 65534 (nobody), no supplementary groups.
    Nobody,
}

/// What a probe operation did: the number of bytes read (0 for a write
/// open), or the errno of the failed call.
pub type ProbeResult = Result<usize, i32>;

/// Runs `ops` in a child process with `identity`, started by `setpriv` (or
/// `capsh` if setpriv is missing), and returns one result per operation.
/// Returns `None` when neither tool is installed and the tests may skip.
pub fn probe(identity: Identity, ops: &[ProbeOp], scratch: &Path) -> Option<Vec<ProbeResult>> {
    let setpriv = find_tool("setpriv");
    let capsh = find_tool("capsh");
    if !available_or_skip(
        setpriv.is_some() || capsh.is_some(),
        "neither setpriv nor capsh is on PATH (util-linux, libcap2-bin)",
    ) {
        return None;
    }

    let exe = reachable_test_binary(identity, scratch);
    let test_args: Vec<OsString> =
        [exe.as_os_str(), PROBE_TEST.as_ref(), "--exact".as_ref(), "--nocapture".as_ref(), "--quiet".as_ref()]
            .iter()
            .map(|s| s.to_os_string())
            .collect();
    let mut command = match (&setpriv, identity) {
        (Some(setpriv), Identity::RootWithoutCapSysAdmin) => {
            let mut command = Command::new(setpriv);
            command.args(["--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]);
            command
        }
        (Some(setpriv), Identity::Nobody) => {
            let mut command = Command::new(setpriv);
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            command
        }
        (None, identity) => {
            let mut command = Command::new(capsh.as_ref().expect("capsh was found"));
            match identity {
                Identity::RootWithoutCapSysAdmin => command.arg("--drop=cap_sys_admin"),
                Identity::Nobody => command.args(["--gid=65534", "--groups=65534", "--uid=65534"]),
            };
            // capsh runs the shell after `--`; the shell replaces itself
            // with the test binary.
            command.args(["--shell=/bin/sh", "--", "-c", "exec \"$0\" \"$@\""]);
            command
        }
    };

    let script: String = ops
        .iter()
        .map(|op| match op {
            ProbeOp::Read(path) => format!("r {}\n", path.display()),
            ProbeOp::Write(path) => format!("w {}\n", path.display()),
        })
        .collect();
    let output = command
        .args(&test_args)
        .env(PROBE_ENV, script)
        .stdin(Stdio::null())
        .output()
        .expect("failed to start the probe child");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: Vec<ProbeResult> = stdout
        .lines()
        .filter_map(|line| line.find(PROBE_RESULT).map(|at| &line[at + PROBE_RESULT.len()..]))
        .map(|line| match line.split_once(' ') {
            Some(("ok", bytes)) => Ok(bytes.parse().expect("probe byte count")),
            Some(("errno", code)) => Err(code.parse().expect("probe errno")),
            _ => panic!("unexpected probe output line: {line}"),
        })
        .collect();
    assert!(
        output.status.success() && results.len() == ops.len(),
        "probe child {identity:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Some(results)
}

/// Returns the path of this test binary, or of a link to it in `scratch`
/// when `identity` could not run it there. A folder on the way may be closed
/// to other users, as home folders often are.
fn reachable_test_binary(identity: Identity, scratch: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    if matches!(identity, Identity::RootWithoutCapSysAdmin) || world_executable(&exe) {
        return exe;
    }
    let copy = scratch.join("probe-test-binary");
    if fs::hard_link(&exe, &copy).is_err() {
        fs::copy(&exe, &copy).expect("failed to copy the test binary for the probe");
    }
    copy
}

/// Returns whether a user that is neither owner nor group member may run
/// `path`: every folder on the way searchable and the file executable by
/// others.
fn world_executable(path: &Path) -> bool {
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode(path) & 0o005 == 0o005 && path.ancestors().skip(1).all(|folder| mode(folder) & 0o001 != 0)
}

/// Runs the child side of [`probe`]: the operations listed in [`PROBE_ENV`],
/// printing one `ok BYTES` or `errno CODE` line each after the
/// [`PROBE_RESULT`] marker. Does nothing when the variable is unset.
pub fn run_probe_child() {
    let Ok(script) = std::env::var(PROBE_ENV) else { return };
    for line in script.lines() {
        let (kind, path) = line.split_once(' ').expect("probe operation is `r PATH` or `w PATH`");
        let result = match kind {
            "r" => File::open(path).and_then(|mut file| {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map(|_| bytes.len())
            }),
            "w" => fs::OpenOptions::new().write(true).open(path).map(|_| 0),
            _ => panic!("unknown probe operation {kind}"),
        };
        match result {
            Ok(bytes) => println!("\n{PROBE_RESULT}ok {bytes}"),
            Err(error) => println!("\n{PROBE_RESULT}errno {}", error.raw_os_error().unwrap_or(-1)),
        }
    }
}
