//! Writes one valid quote bundle per attestation key algorithm into the
//! folder given as the only argument, in the layout of the `quote` fuzz
//! target: two little-endian u16 lengths (key, attest), then the key, the
//! attest and the signature. `scripts/fuzz-smoke` seeds that target with
//! them.

use std::path::PathBuf;

use imalog_core::Bank;
use imalog_tpm::{AkAlgorithm, SoftTpm, Tpm};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let folder: PathBuf = std::env::args_os().nth(1).ok_or("usage: quote_seeds FOLDER")?.into();
    std::fs::create_dir_all(&folder)?;
    let banks = [Bank::SHA1, Bank::SHA256];
    for algorithm in AkAlgorithm::ALL {
        let mut tpm = SoftTpm::with_attestation_key(&banks, algorithm, b"fuzz seed key")?;
        tpm.simulate_boot(b"fuzz seed");
        let quote = tpm.quote(b"fuzz seed nonce", &[(Bank::SHA256, vec![0, 10]), (Bank::SHA1, vec![10])])?;
        let mut bundle = Vec::new();
        bundle.extend_from_slice(&u16::try_from(quote.ak_public.len())?.to_le_bytes());
        bundle.extend_from_slice(&u16::try_from(quote.attest.len())?.to_le_bytes());
        bundle.extend_from_slice(&quote.ak_public);
        bundle.extend_from_slice(&quote.attest);
        bundle.extend_from_slice(&quote.signature);
        std::fs::write(folder.join(format!("soft-{algorithm:?}")), bundle)?;
    }
    Ok(())
}
