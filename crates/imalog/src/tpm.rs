//! Opening a real TPM (swtpm or a device) for `imalog emulate` and
//! `imalog collect`, available in builds with the `tss` feature.
//!
//! TPM names on the command line:
//!
//! - `swtpm:HOST:PORT` or `swtpm:PATH`: a swtpm server socket (TCP, or a
//!   Unix socket whose control socket is PATH.ctrl);
//! - `device:PATH`: a TPM device, normally the kernel's resource manager
//!   `/dev/tpmrm0`;
//! - a tpm2-tss TCTI string such as `swtpm:host=127.0.0.1,port=2321`.

use imalog_tpm::Tpm;

use crate::commands::emulate::ProxyGuard;
use crate::outcome::{Failure, Outcome};

/// Opens `swtpm:...` or `device:...`; see `imalog emulate --help`.
#[cfg(not(feature = "tss"))]
pub fn open_hardware_tpm(spec: &str, _proxy: &str) -> Outcome<(Option<Box<dyn Tpm>>, ProxyGuard)> {
    if spec.starts_with("swtpm:") || spec.starts_with("device:") {
        return Err(Failure::Usage(format!(
            "--tpm {spec}: this imalog was built without the TSS backend; rebuild with `--features tss` \
             (needs libtss2-dev)"
        )));
    }
    Err(Failure::Usage(format!("--tpm {spec}: expected soft, swtpm:HOST:PORT, swtpm:PATH or device:PATH")))
}

/// Opens a TPM for collector quotes; see `imalog collect --help`.
#[cfg(not(feature = "tss"))]
pub fn open_quoter(spec: &str) -> Outcome<Box<dyn imalog_collector::service::Quoter>> {
    Err(Failure::Usage(format!(
        "--tpm {spec}: this imalog was built without the TSS backend; rebuild with `--features tss` (needs libtss2-dev)"
    )))
}

/// Turns a command-line TPM name into a TCTI string.
#[cfg(feature = "tss")]
pub fn tcti_for(spec: &str) -> Outcome<String> {
    if spec.contains('=') {
        return Ok(spec.to_string());
    }
    if let Some(path) = spec.strip_prefix("device:") {
        return Ok(format!("device:{path}"));
    }
    if let Some(target) = spec.strip_prefix("swtpm:") {
        if target.starts_with('/') || target.starts_with('.') {
            return Ok(format!("swtpm:path={target}"));
        }
        if let Some((host, port)) = target.rsplit_once(':') {
            if port.parse::<u16>().is_ok() {
                return Ok(format!("swtpm:host={host},port={port}"));
            }
        }
    }
    Err(Failure::Usage(format!("--tpm {spec}: expected swtpm:HOST:PORT, swtpm:PATH or device:PATH")))
}

#[cfg(feature = "tss")]
pub fn open_hardware_tpm(spec: &str, proxy_address: &str) -> Outcome<(Option<Box<dyn Tpm>>, ProxyGuard)> {
    use std::net::{IpAddr, SocketAddr};

    use imalog_tpm::proxy::{ProxyConfig, TcpListen, TpmProxy};
    use imalog_tpm::TssTpm;

    if let Some(path) = spec.strip_prefix("device:") {
        let tpm = TssTpm::open(&format!("device:{path}")).map_err(|e| Failure::Usage(format!("--tpm {spec}: {e}")))?;
        tracing::info!(device = path, banks = %bank_names(&tpm.banks()), "extending a TPM device");
        return Ok((Some(Box::new(tpm)), None));
    }
    let Some(target) = spec.strip_prefix("swtpm:") else {
        return open_hardware_tpm_error(spec);
    };
    let mut config = if target.starts_with('/') || target.starts_with('.') {
        ProxyConfig::swtpm_unix(target)
    } else {
        let address: SocketAddr = target
            .parse()
            .map_err(|_| Failure::Usage(format!("--tpm {spec}: expected swtpm:HOST:PORT with a numeric address")))?;
        ProxyConfig::swtpm_tcp(address.ip(), address.port())
    };
    let listen: SocketAddr = proxy_address
        .parse()
        .map_err(|_| Failure::Usage(format!("--tpm-proxy {proxy_address}: expected a loopback IP:PORT")))?;
    let ip: IpAddr = listen.ip();
    config.tcp = Some(TcpListen { ip, server_port: listen.port(), control_port: None });
    let proxy = TpmProxy::start(config).map_err(|e| Failure::Usage(format!("--tpm {spec}: proxy: {e}")))?;
    let tcti = proxy.tcti().ok_or_else(|| Failure::Usage("the TPM proxy has no TCP listener".into()))?;
    if let Some((server, control)) = proxy.tcp_addresses() {
        tracing::info!(%server, %control, tcti = %tcti, "TPM proxy listening; other TPM clients connect here");
        say!("tpm-proxy {server} {tcti}");
    }
    let tpm = TssTpm::open(&tcti).map_err(|e| Failure::Usage(format!("--tpm {spec}: {e}")))?;
    tracing::info!(banks = %bank_names(&tpm.banks()), "extending swtpm through the proxy");
    Ok((Some(Box::new(tpm)), Some(Box::new(proxy))))
}

#[cfg(feature = "tss")]
fn open_hardware_tpm_error(spec: &str) -> Outcome<(Option<Box<dyn Tpm>>, ProxyGuard)> {
    Err(Failure::Usage(format!("--tpm {spec}: expected soft, swtpm:HOST:PORT, swtpm:PATH or device:PATH")))
}

/// Quotes through tss-esapi. The kernel may extend PCR 10 at any moment, so
/// the PCR values are read just before and just after each quote, and the
/// set whose hash equals the quote's pcrDigest is returned with it. When
/// neither does (an extend landed on each side of the quote), it quotes
/// again.
#[cfg(feature = "tss")]
struct TssQuoter {
    tpm: std::sync::Mutex<imalog_tpm::TssTpm>,
}

#[cfg(feature = "tss")]
type PcrValues = Vec<(imalog_core::Bank, u32, imalog_core::Digest)>;

/// Attempts before `TssQuoter` gives up on a PCR that changes around every
/// quote.
#[cfg(feature = "tss")]
const QUOTE_ATTEMPTS: u32 = 10;

#[cfg(feature = "tss")]
impl TssQuoter {
    fn read(tpm: &mut imalog_tpm::TssTpm, selection: &[(imalog_core::Bank, Vec<u32>)]) -> Result<PcrValues, String> {
        let mut values = Vec::new();
        for (bank, pcrs) in selection {
            for pcr in pcrs {
                values.push((*bank, *pcr, tpm.read(bank, *pcr).map_err(|e| e.to_string())?));
            }
        }
        Ok(values)
    }

    /// True when `values`, in the quote's order, hash to its pcrDigest.
    fn covers(info: &imalog_tpm::QuoteInfo, values: &PcrValues) -> bool {
        let algorithm = match info.pcr_digest.len() {
            20 => imalog_core::HashAlgorithm::Sha1,
            32 => imalog_core::HashAlgorithm::Sha256,
            48 => imalog_core::HashAlgorithm::Sha384,
            64 => imalog_core::HashAlgorithm::Sha512,
            _ => return false,
        };
        let mut quoted = Vec::new();
        for (bank, pcrs) in &info.pcr_selection {
            for pcr in pcrs {
                match values.iter().find(|(b, p, _)| b.tpm_alg_id() == bank.tpm_alg_id() && p == pcr) {
                    Some((_, _, value)) => quoted.push(value.as_bytes()),
                    None => return false,
                }
            }
        }
        algorithm.digest_parts(&quoted).as_bytes() == info.pcr_digest.as_slice()
    }
}

#[cfg(feature = "tss")]
impl imalog_collector::service::Quoter for TssQuoter {
    fn quote(&self, nonce: &[u8], pcrs: &[u32]) -> Result<imalog_collector::service::QuoteOutput, String> {
        let mut tpm = self.tpm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let selection: Vec<(imalog_core::Bank, Vec<u32>)> = tpm.banks().iter().map(|b| (*b, pcrs.to_vec())).collect();
        for attempt in 1..=QUOTE_ATTEMPTS {
            let before = Self::read(&mut tpm, &selection)?;
            let quote = tpm.quote(nonce, &selection).map_err(|e| e.to_string())?;
            let info = quote.info().map_err(|e| e.to_string())?;
            let covered = if Self::covers(&info, &before) {
                Some(before)
            } else {
                let after = Self::read(&mut tpm, &selection)?;
                Self::covers(&info, &after).then_some(after)
            };
            if let Some(values) = covered {
                return Ok(imalog_collector::service::QuoteOutput {
                    attest: quote.attest,
                    signature: quote.signature,
                    ak_public: quote.ak_public,
                    pcrs: values,
                });
            }
            tracing::debug!(attempt, "PCRs changed on both sides of the quote; quoting again");
        }
        Err(format!(
            "the quoted PCRs changed on both sides of each of {QUOTE_ATTEMPTS} quotes; measurements are too frequent \
             to pin a quote, try again"
        ))
    }
}

#[cfg(feature = "tss")]
pub fn open_quoter(spec: &str) -> Outcome<Box<dyn imalog_collector::service::Quoter>> {
    let tcti = tcti_for(spec)?;
    let tpm = imalog_tpm::TssTpm::open(&tcti).map_err(|e| Failure::Usage(format!("--tpm {spec}: {e}")))?;
    Ok(Box::new(TssQuoter { tpm: std::sync::Mutex::new(tpm) }))
}

/// Bank names for a log line, such as `sha1,sha256`.
#[cfg(feature = "tss")]
fn bank_names(banks: &[imalog_core::Bank]) -> String {
    banks.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}
