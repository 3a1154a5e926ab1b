//! Opening a real TPM (swtpm or a device) for `imalog emulate`, available in
//! builds with the `tss` feature.

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
