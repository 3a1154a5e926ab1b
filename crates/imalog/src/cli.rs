//! Command-line definition: what the user typed, validated by clap, with no
//! I/O. Each flag has a short help line and, where the short line is not
//! enough, a long one for `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use imalog_core::{Bank, ByteOrder};

/// imalog: Linux IMA measurement lists, the 7.2 export and delete interfaces, collection and attestation.
#[derive(Debug, Parser)]
#[command(name = "imalog", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Never show a progress line, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a list in the kernel's ASCII format, or as JSON lines.
    Show(ShowArgs),
    /// Convert a list between the binary and ASCII formats, banks and byte orders.
    Convert(ConvertArgs),
    /// Replay a list into PCR values and check them against quoted values.
    Replay(ReplayArgs),
    /// Write a synthetic, internally consistent list for tests and benchmarks.
    Generate(GenerateArgs),
    /// Mount the Linux 7.2 IMA securityfs files of an emulated kernel over FUSE.
    Emulate(EmulateArgs),
    /// Make a running `imalog emulate` measure files, a buffer or a violation.
    Measure(MeasureArgs),
    /// Soft-reboot a running `imalog emulate` into a new kernel instance.
    Kexec(KexecArgs),
    /// Keep every record since boot while the kernel exports and deletes them.
    Collect(CollectArgs),
    /// Attest a machine through its collector, or check one offline bundle.
    Verify(VerifyArgs),
    /// Run the whole system on this machine: kernel model, collector, verifier.
    Demo(DemoArgs),
    /// Write the records a collector stored, as a binary list.
    History(HistoryArgs),
}

/// Options that describe the input list; detection fills in what is not given.
#[derive(Debug, Args, Clone, Default)]
pub struct InputArgs {
    /// Input format [default: detected].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<FormatArg>,

    /// Byte order of the kernel that wrote the list [default: detected for
    /// binary lists, le for ASCII lists].
    ///
    /// Big-endian kernels without ima_canonical_fmt write big-endian
    /// integers and hash big-endian field lengths into template digests.
    /// ASCII lists cannot show their byte order, so give `be` for an ASCII
    /// list from such a kernel.
    #[arg(long, value_name = "le|be", value_parser = parse_byte_order)]
    pub input_endian: Option<ByteOrder>,

    /// Bank of the template digests in the input [default: from the file name
    /// suffix, else from the digest size].
    ///
    /// The legacy lists (binary_runtime_measurements,
    /// ascii_runtime_measurements) hold SHA-1 digests; per-bank lists hold
    /// their bank's. A 32-byte digest is taken as sha256 unless the file
    /// name or this option says sm3 or sha3_256. Accepts sha1, sha256,
    /// sha384, sha512, sm3, sha3_256, sha3_384, sha3_512, tpm_alg_<hex>:<size>.
    #[arg(long, value_name = "BANK", value_parser = parse_bank)]
    pub input_bank: Option<Bank>,
}

/// `imalog show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The list to read; `-` reads standard input.
    pub file: PathBuf,

    /// Bank whose template digest is printed [default: the input's bank].
    ///
    /// When it differs from the input's bank, each digest is recomputed from
    /// the template data (padded SHA-1 for banks the kernel cannot hash;
    /// violations stay all zero).
    #[arg(long, value_name = "BANK", value_parser = parse_bank)]
    pub bank: Option<Bank>,

    /// Print one JSON object per record instead of the kernel's ASCII lines.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub input: InputArgs,
}

/// `imalog convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The list to read; `-` reads standard input.
    pub file: PathBuf,

    /// Output format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub to: FormatArg,

    /// Bank of the template digests written [default: the input's bank].
    #[arg(long, value_name = "BANK", value_parser = parse_bank)]
    pub bank: Option<Bank>,

    /// Byte order of binary output [default: the input's].
    ///
    /// Changing the byte order also changes template digests, because a
    /// big-endian kernel hashes big-endian field lengths; they are
    /// recomputed.
    #[arg(long, value_name = "le|be", value_parser = parse_byte_order)]
    pub endian: Option<ByteOrder>,

    /// Output file; `-` writes standard output.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Copy logged template digests without checking them against the
    /// template data.
    #[arg(long)]
    pub no_verify: bool,

    #[command(flatten)]
    pub input: InputArgs,
}

/// `imalog replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The list to read; `-` reads standard input.
    pub file: PathBuf,

    /// Banks to replay; repeat or separate with commas [default: the banks
    /// in --pcrs and --from-state, else sha1 and sha256 plus the input's].
    #[arg(long = "bank", value_name = "BANK", value_delimiter = ',', value_parser = parse_bank)]
    pub banks: Vec<Bank>,

    /// PCR values to match, as `tpm2_pcrread` prints them; `-` reads stdin.
    ///
    /// The replay succeeds when some prefix of the list reproduces every
    /// value in the file: the list may hold records appended after the
    /// values were read, but never fewer records than they cover.
    #[arg(long, value_name = "FILE")]
    pub pcrs: Option<PathBuf>,

    /// Start from this state instead of a cold boot (JSON: next_index and
    /// PCR values per bank), to replay a list whose earlier records were
    /// verified before and deleted.
    #[arg(long, value_name = "FILE")]
    pub from_state: Option<PathBuf>,

    /// Write the state after the last record to this file, in the format
    /// --from-state reads.
    #[arg(long, value_name = "FILE")]
    pub save_state: Option<PathBuf>,

    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub input: InputArgs,
}

/// `imalog generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of records, the boot_aggregate included.
    #[arg(long, default_value_t = 1000)]
    pub records: u64,

    /// Seed; the same seed always writes the same list.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Template of every record (a built-in name or a format string such as
    /// `d-ng|n-ng|sig`), or `all` to cycle through every built-in template
    /// and two custom ones.
    #[arg(long, default_value = "ima-ng", value_name = "TEMPLATE")]
    pub template: String,

    /// Make every N-th record a violation.
    #[arg(long, value_name = "N")]
    pub violations_every: Option<u64>,

    /// Bank of the template digests written.
    #[arg(long, default_value = "sha1", value_name = "BANK", value_parser = parse_bank)]
    pub bank: Bank,

    /// Byte order of the kernel imitated.
    #[arg(long, default_value = "le", value_name = "le|be", value_parser = parse_byte_order)]
    pub endian: ByteOrder,

    /// Output format.
    #[arg(long, value_enum, default_value = "binary", value_name = "FORMAT")]
    pub format: FormatArg,

    /// Output file; `-` writes standard output.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

/// `imalog emulate`.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Folder to mount the securityfs tree on; `integrity/ima/` appears in it.
    #[arg(long, value_name = "DIR")]
    pub mount: PathBuf,

    /// TPM the emulated kernel extends: `soft` (in-process), `swtpm:HOST:PORT`
    /// or `swtpm:PATH` (a swtpm server socket), `device:PATH` (/dev/tpmrm0).
    ///
    /// With swtpm, imalog holds swtpm's one connection and serves other TPM
    /// clients (tpm2-tools, the collector) through --tpm-proxy, as the
    /// kernel's resource manager would. The swtpm and device backends need
    /// a build with the `tss` feature.
    #[arg(long, default_value = "soft", value_name = "TPM")]
    pub tpm: String,

    /// Loopback address where other TPM clients reach a swtpm TPM; its port
    /// + 1 is the control port. Port 0 picks free ports, printed at start.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDRESS")]
    pub tpm_proxy: String,

    /// PCR banks of the software TPM [default: sha1,sha256,sha384,sha512, as swtpm].
    #[arg(long, value_delimiter = ',', value_name = "BANKS", value_parser = parse_bank)]
    pub banks: Vec<Bank>,

    /// IMA hash algorithm (`ima_hash=`): file digests and the hash table key.
    #[arg(long, default_value = "sha256", value_name = "ALG")]
    pub ima_hash: String,

    /// Template of file measurements (`ima_template=`), a built-in name or a
    /// format string such as `d-ng|n-ng|sig`.
    #[arg(long, default_value = "ima-ng", value_name = "NAME")]
    pub template: String,

    /// Build without CONFIG_IMA_STAGING: no `_staged` files.
    #[arg(long)]
    pub no_staging: bool,

    /// With --no-staging, make the original list files read-only (0440), as
    /// the 7.2 documentation describes. The merged code leaves them
    /// writable and accepting `N`, which is the default here.
    #[arg(long)]
    pub read_only_without_staging: bool,

    /// Boot parameter `ima_flush_htable`: `D` empties the hash table and `N`
    /// is rejected.
    #[arg(long)]
    pub flush_htable: bool,

    /// CONFIG_IMA_DISABLE_HTABLE: no duplicate suppression.
    #[arg(long)]
    pub disable_htable: bool,

    /// Start as if the machine had already recorded this list: its records
    /// are appended and extended into the TPM, instead of a boot_aggregate.
    #[arg(long, value_name = "FILE")]
    pub boot_log: Option<PathBuf>,

    /// Unix socket for `imalog measure` and `imalog kexec`.
    #[arg(long, value_name = "SOCKET")]
    pub control: Option<PathBuf>,

    /// Accept the control requests that exist only for tests: setting the
    /// reader count and failing the next hash table allocation.
    #[arg(long)]
    pub test_hooks: bool,

    /// Write a new random boot id to this file at start and at every
    /// kexec, as /proc/sys/kernel/random/boot_id changes at every boot;
    /// give it to `imalog collect --boot-id-file`.
    #[arg(long, value_name = "FILE")]
    pub boot_id_file: Option<PathBuf>,

    #[command(flatten)]
    pub input: InputArgs,
}

/// `imalog measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Control socket of the running `imalog emulate`.
    #[arg(long, value_name = "SOCKET")]
    pub control: PathBuf,

    /// PCR to measure into, 0 to 63 [default: the kernel's, 10].
    #[arg(long, value_name = "PCR", value_parser = clap::value_parser!(u32).range(0..=63))]
    pub pcr: Option<u32>,

    /// Measure a buffer (critical data) with this event name instead of files.
    #[arg(long, value_name = "NAME", requires = "data", conflicts_with_all = ["files", "violation"])]
    pub buffer: Option<String>,

    /// The buffer's content, in hex.
    #[arg(long, value_name = "HEX", requires = "buffer")]
    pub data: Option<String>,

    /// Record a violation naming this path instead of measuring files.
    #[arg(long, value_name = "PATH", conflicts_with = "files")]
    pub violation: Option<String>,

    /// Files to measure.
    #[arg(value_name = "FILE", required_unless_present_any = ["buffer", "violation"])]
    pub files: Vec<PathBuf>,
}

/// `imalog collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// The securityfs `ima` folder, or a folder with `integrity/ima` in it
    /// (a real kernel's /sys/kernel/security, or the mount of `imalog emulate`).
    #[arg(long, value_name = "DIR")]
    pub securityfs: PathBuf,

    /// Folder of the durable record store; created if missing.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,

    /// How records leave the kernel: `staged` (A, read, D), `delete-n` (read,
    /// then N) or `read-only` (never delete) [default: staged when the kernel
    /// has _staged files, read-only otherwise].
    #[arg(long, value_name = "FLAVOR")]
    pub flavor: Option<String>,

    /// Time between export rounds, such as 500ms, 10s or 2m.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub interval: std::time::Duration,

    /// Address of the HTTP API (history and quotes); `none` turns it off.
    #[arg(long, default_value = "127.0.0.1:7340", value_name = "ADDRESS")]
    pub listen: String,

    /// TPM to quote for /v1/quote: `swtpm:HOST:PORT`, `swtpm:PATH` or
    /// `device:PATH` (needs a build with the `tss` feature). Without it,
    /// /v1/quote returns 503 with an error message.
    #[arg(long, value_name = "TPM")]
    pub tpm: Option<String>,

    /// File whose content identifies the running kernel instance; it must
    /// change at every boot, kexec included. With `none`, the collector
    /// cannot distinguish a reboot from a kexec, and keeps one epoch.
    #[arg(long, default_value = "/proc/sys/kernel/random/boot_id", value_name = "FILE|none")]
    pub boot_id_file: PathBuf,

    /// Run one export round and exit.
    #[arg(long)]
    pub once: bool,
}

/// The longest interval accepted: a week, in seconds.
const MAX_DURATION_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Parses `500ms`, `10s`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || {
        format!("invalid duration '{text}': expected a number with an optional unit ms, s (the default), m or h, such as 10s")
    };
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(invalid()),
    };
    if !seconds.is_finite() {
        return Err(invalid());
    }
    if seconds <= 0.0 {
        return Err(format!("invalid duration '{text}': it must be greater than zero"));
    }
    if seconds > MAX_DURATION_SECONDS {
        return Err(format!("invalid duration '{text}': it must be at most a week"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// `imalog verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Base URL of the machine's collector, such as http://127.0.0.1:7340.
    #[arg(long, value_name = "URL", conflicts_with_all = ["records", "quote"])]
    pub collector: Option<String>,

    /// The trusted attestation key: its TPM2B_PUBLIC, binary or hex,
    /// enrolled out of band (never taken from the machine at attestation).
    #[arg(long, value_name = "FILE")]
    pub ak: PathBuf,

    /// The verifier's per-machine state: a SQLite database file, created if
    /// missing, or a postgres:// or postgresql:// URL for state that several
    /// verifiers share [default: SQLite in memory, for one run].
    ///
    /// A URL needs a build with --features postgres. It connects without
    /// TLS, so point it at a Unix socket, at loopback or at a local TLS proxy.
    #[arg(long, value_name = "FILE|URL")]
    pub state: Option<PathBuf>,

    /// Runtime policy, Keylime's runtime-policy JSON.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Time between attestation rounds.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub interval: std::time::Duration,

    /// Name the machine has in the state database [default: the collector URL].
    #[arg(long, value_name = "NAME")]
    pub machine: Option<String>,

    /// Run one round and exit with its verdict.
    #[arg(long)]
    pub once: bool,

    /// Rounds without newly certified records tolerated while records wait.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub stall_limit: u32,

    /// Maximum number of records one round reads; a collector that sends more fails
    /// the round.
    #[arg(long, default_value_t = imalog_verifier::attest::DEFAULT_MAX_ROUND_RECORDS, value_name = "N")]
    pub max_round_records: u64,

    /// Offline: the history (SHA-1 binary list, from index 0).
    #[arg(long, value_name = "FILE", requires = "quote")]
    pub records: Option<PathBuf>,

    /// Offline: the quote, as JSON from the collector's /v1/quote.
    #[arg(long, value_name = "FILE", requires = "records")]
    pub quote: Option<PathBuf>,

    /// Offline: the nonce the quote must carry, in hex.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,

    /// Offline: byte order of the records [default: detected from the first
    /// record's PCR index; `/v1/status` of the collector reports it too].
    #[arg(long, value_name = "le|be", value_parser = parse_byte_order, requires = "records")]
    pub records_endian: Option<ByteOrder>,

    /// Violations (records with an all-zero template digest) pass the
    /// runtime policy; by default they fail unless their path is excluded.
    #[arg(long, requires = "policy")]
    pub accept_violations: bool,
}

/// `imalog demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Attestation rounds to run.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Time between rounds.
    #[arg(long, default_value = "500ms", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub interval: std::time::Duration,

    /// New files measured per round (changed files are measured again on top).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = parse_positive_count)]
    pub files_per_round: usize,

    /// Folders whose executables and libraries are measured [default:
    /// /usr/bin, /usr/sbin, /usr/lib].
    #[arg(long, value_name = "DIR")]
    pub workload: Vec<PathBuf>,

    /// Folder for the record store and the verifier state; it must be new
    /// or empty [default: a new folder under the system's temporary folder].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Runtime policy for the verifier, Keylime's runtime-policy JSON.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Soft-reboot the kernel model every N rounds, to show that the
    /// history survives kexec.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub kexec_every: Option<u32>,

    /// Run over FUSE: mount the kernel model here, with `imalog emulate`,
    /// `imalog collect` and the verifier as separate processes.
    #[arg(long, value_name = "DIR", requires = "tpm")]
    pub mount: Option<PathBuf>,

    /// With --mount: the TPM, `swtpm:HOST:PORT` (a build with the tss feature).
    #[arg(long, value_name = "TPM", requires = "mount")]
    pub tpm: Option<String>,
}

/// `imalog history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The collector's store folder (`imalog collect --store`, or `store`
    /// inside the `imalog demo --dir` folder). Opening it takes the store
    /// lock and, as the collector does, cuts off a torn last frame.
    pub store: PathBuf,

    /// First absolute record index to write.
    #[arg(long, default_value_t = 0, value_name = "INDEX")]
    pub from: u64,

    /// Epoch (one per cold boot) whose records to write [default: the
    /// latest, the running boot's].
    #[arg(long, value_name = "N")]
    pub epoch: Option<u64>,

    /// Output file; `-` writes standard output.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

/// `imalog kexec`.
#[derive(Debug, Args)]
pub struct KexecArgs {
    /// Control socket of the running `imalog emulate`.
    #[arg(long, value_name = "SOCKET")]
    pub control: PathBuf,
}

/// The two list formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// binary_runtime_measurements layout.
    Binary,
    /// ascii_runtime_measurements layout.
    Ascii,
}

fn parse_positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("invalid count '{text}': expected a whole number of at least 1")),
        Ok(count) => Ok(count),
    }
}

fn parse_bank(text: &str) -> Result<Bank, String> {
    text.parse::<Bank>().map_err(|e| e.to_string())
}

fn parse_byte_order(text: &str) -> Result<ByteOrder, String> {
    text.parse::<ByteOrder>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn replay_banks_accept_commas_and_repeats() {
        let cli = Cli::try_parse_from(["imalog", "replay", "x", "--bank", "sha1,sha256", "--bank", "sm3"]).unwrap();
        match cli.command {
            Command::Replay(args) => {
                assert_eq!(args.banks, vec![Bank::SHA1, Bank::SHA256, Bank::SM3])
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_bank_is_a_usage_error() {
        let error = Cli::try_parse_from(["imalog", "show", "x", "--bank", "md5"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("unknown bank 'md5'"), "{error}");
    }

    #[test]
    fn convert_requires_output() {
        assert!(Cli::try_parse_from(["imalog", "convert", "x", "--to", "ascii"]).is_err());
    }
}
