//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! folder, then `pg_ctl start` with no TCP listener and its Unix socket in
//! that folder. The server stops and the folder goes away on drop.
//!
//! The binaries come from PATH or from Debian's `/usr/lib/postgresql/<major>/bin`
//! (the package `postgresql`). PostgreSQL refuses to run as root, so under
//! root the folder is handed to the `postgres` system user, which that
//! package creates, and the server runs as that user through `setpriv`.
//! When the binaries or that user are missing the tests skip, unless
//! `IMALOG_REQUIRE_ORACLES=1` makes them fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The superuser `initdb` creates, with trust authentication on the socket.
const SUPERUSER: &str = "imalog";

/// A running server, stopped on drop.
pub struct TestServer {
    bin: PathBuf,
    /// The `postgres` user's uid and gid when the tests run as root.
    run_as: Option<(u32, u32)>,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    // Last, so that the folder is removed after the server stops.
    _root: TempDir,
}

impl TestServer {
    /// Starts a server, or returns `None` (after a skip message) when
    /// PostgreSQL is not installed. Panics on any other failure.
    pub fn start() -> Option<TestServer> {
        let Some(bin) = find_bindir() else {
            return skip("initdb and pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin (install postgresql)");
        };
        let run_as = if is_root() {
            match postgres_user() {
                Some(ids) => Some(ids),
                None => return skip("running as root and no `postgres` user to run the server as"),
            }
        } else {
            None
        };

        let root = tempfile::Builder::new().prefix("imalog-pg").tempdir().expect("temporary folder");
        let data = root.path().join("data");
        let socket_dir = root.path().join("socket");
        let log = root.path().join("server.log");
        fs::create_dir(&socket_dir).expect("socket folder");
        if let Some((uid, gid)) = run_as {
            for path in [root.path(), socket_dir.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to the postgres user: {e}", path.display()));
            }
        }
        let server = TestServer { bin, run_as, data, socket_dir, log, _root: root };

        let data = server.data.to_string_lossy().into_owned();
        server.run_checked(
            "initdb",
            &["-D", &data, "-U", SUPERUSER, "--auth=trust", "--locale=C", "--encoding=UTF8", "--no-sync"],
        );
        // Settings appended last override initdb's: no TCP listener, the
        // socket in the temporary folder, and no fsync, which a throwaway
        // cluster does not need.
        let settings = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 50\n",
            server.socket_dir.display()
        );
        let mut config = fs::read_to_string(server.data.join("postgresql.conf")).expect("read postgresql.conf");
        config.push_str(&settings);
        fs::write(server.data.join("postgresql.conf"), config).expect("write postgresql.conf");
        server.pg_ctl_start();
        Some(server)
    }

    /// Returns a `postgresql://` URL for `database` on this server's socket.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql:///{database}?host={}&user={SUPERUSER}", self.socket_dir.display())
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the test server: {e:?}\n{}", self.log_text()));
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
        self.url(name)
    }

    /// Stops the server at once, as a crash or a failover would.
    pub fn stop(&self) {
        let data = self.data.to_string_lossy().into_owned();
        self.run_checked("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// Starts the server again after [`TestServer::stop`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    fn pg_ctl_start(&self) {
        let data = self.data.to_string_lossy().into_owned();
        let log = self.log.to_string_lossy().into_owned();
        self.run_checked("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"]);
    }

    /// Reads the server log, for failure messages.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no server log: {e})"))
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.bin.join(tool);
        let mut command = match self.run_as {
            Some((uid, gid)) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command.args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }

    fn run_checked(&self, tool: &str, args: &[&str]) {
        let output = self.run(tool, args);
        assert!(
            output.status.success(),
            "{tool} {args:?} failed with {}\nstdout: {}\nstderr: {}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if fs::metadata(self.data.join("postmaster.pid")).is_ok() {
            let data = self.data.to_string_lossy().into_owned();
            let output = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            if !output.status.success() {
                eprintln!("pg_ctl stop failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
    }
}

/// Prints why the test skips and returns `None`, or panics when
/// `IMALOG_REQUIRE_ORACLES=1`.
fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("IMALOG_REQUIRE_ORACLES").as_deref() == Ok("1") {
        panic!("{reason}, and IMALOG_REQUIRE_ORACLES=1 requires PostgreSQL");
    }
    eprintln!("skipping: {reason} (set IMALOG_REQUIRE_ORACLES=1 to fail instead)");
    None
}

/// The folder holding `initdb` and `pg_ctl`: PATH first, then the highest
/// major version under Debian's `/usr/lib/postgresql`.
fn find_bindir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(paths) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&paths).find(|dir| has_tools(dir)) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// Looks up the uid and gid of the `postgres` system user.
fn postgres_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}
