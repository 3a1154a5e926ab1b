//! `verify_quote` on swtpm's quotes for every attestation key algorithm,
//! SoftTpm's attest next to swtpm's, and SoftTpm's quotes checked by
//! `tpm2_checkquote` and by swtpm's TPM2_VerifySignature.

use std::path::Path;

use imalog_core::{Bank, Digest};
use imalog_tpm::testing::{tool_for_test, Swtpm};
use imalog_tpm::{
    verify_quote, AkAlgorithm, AkPublic, Hierarchy, MarshalError, Quote, QuoteError, QuoteInfo, SignatureScheme,
    SoftTpm, Tpm, TpmSignature, TssTpm,
};

use crate::common::{event_digests, run_tool, run_tool_ok, ScratchDirectory};

const NONCE: &[u8] = b"imalog verify nonce 0123456789ab";

/// Banks out of TPM order, to check that both TPMs keep the caller's.
fn selection() -> Vec<(Bank, Vec<u32>)> {
    vec![(Bank::SHA256, vec![10, 0]), (Bank::SHA1, vec![10]), (Bank::SHA384, vec![23])]
}

/// Extends PCRs 10 and 0 as the tests of both TPMs do.
fn extend_events(tpm: &mut dyn Tpm) {
    let banks = tpm.banks();
    for event in 0..3 {
        tpm.extend(10, &event_digests(&banks, event)).expect("extend PCR 10");
    }
    tpm.extend(0, &event_digests(&banks, 3)).expect("extend PCR 0");
}

/// Reads the quoted PCR values in the attest's order.
fn quoted_values(tpm: &mut dyn Tpm, info: &QuoteInfo) -> Vec<Digest> {
    let mut values = Vec::new();
    for (bank, pcrs) in &info.pcr_selection {
        for &pcr in pcrs {
            values.push(tpm.read(bank, pcr).expect("read a quoted PCR"));
        }
    }
    values
}

#[test]
fn swtpm_quotes_verify_for_every_algorithm() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let mut tpm = TssTpm::open(&swtpm.tcti()).expect("open swtpm");
    extend_events(&mut tpm);

    for algorithm in AkAlgorithm::ALL {
        tpm.set_ak_algorithm(algorithm);
        let quote = tpm.quote(NONCE, &selection()).unwrap_or_else(|error| panic!("{algorithm}: quote: {error}"));
        let info = verify_quote(&quote.ak_public, &quote.attest, &quote.signature)
            .unwrap_or_else(|error| panic!("{algorithm}: {error}"));

        let key = AkPublic::parse(&quote.ak_public).expect("parse swtpm's key");
        assert_eq!(key.algorithm(), Some(algorithm));
        // swtpm puts the qualified name of the endorsement primary key in the
        // attest, not its Name.
        assert_eq!(info.qualified_signer, key.primary_qualified_name(Hierarchy::Endorsement), "{algorithm}");
        assert_ne!(info.qualified_signer, key.name(), "{algorithm}");
        let signature = TpmSignature::parse(&quote.signature).expect("parse swtpm's signature");
        assert_eq!(signature.signing_scheme(), algorithm.signing_scheme());

        assert_eq!(info.extra_data, NONCE);
        let values = quoted_values(&mut tpm, &info);
        let references: Vec<&Digest> = values.iter().collect();
        assert!(info.check_pcr_values(algorithm.signing_scheme().hash, &references), "{algorithm}: PCR values");
    }
}

#[test]
fn swtpm_quote_fails_with_wrong_key_or_bytes() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let mut tpm = TssTpm::open(&swtpm.tcti()).expect("open swtpm");
    for algorithm in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048] {
        tpm.set_ak_algorithm(algorithm);
        let quote = tpm.quote(NONCE, &selection()).expect("quote");

        let mut soft = SoftTpm::with_attestation_key(&tpm.banks(), algorithm, b"not swtpm").expect("soft TPM");
        let wrong_key = soft.ak_public().expect("soft key");
        assert_eq!(
            verify_quote(&wrong_key, &quote.attest, &quote.signature),
            Err(QuoteError::SignatureMismatch),
            "{algorithm}"
        );

        let mut attest = quote.attest.clone();
        let last = attest.len() - 1;
        attest[last] ^= 1;
        assert_eq!(verify_quote(&quote.ak_public, &attest, &quote.signature), Err(QuoteError::SignatureMismatch));

        let cut = quote.signature.len() - 1;
        let error = verify_quote(&quote.ak_public, &quote.attest, &quote.signature[..cut]).unwrap_err();
        assert!(
            matches!(error, QuoteError::MalformedSignature(MarshalError::Truncated { offset, .. }) if offset == cut),
            "{algorithm}: {error}"
        );
    }
}

#[test]
fn soft_attest_matches_swtpm_attest() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let mut tss = TssTpm::open(&swtpm.tcti()).expect("open swtpm");
    let mut soft = SoftTpm::with_attestation_key(&tss.banks(), AkAlgorithm::EccP256, b"compare").expect("soft TPM");
    extend_events(&mut tss);
    extend_events(&mut soft);

    let tss_quote = tss.quote(NONCE, &selection()).expect("swtpm quote");
    let soft_quote = soft.quote(NONCE, &selection()).expect("soft quote");
    let tss_info = QuoteInfo::parse(&tss_quote.attest).expect("parse swtpm's attest");
    let soft_info = verify_quote(&soft_quote.ak_public, &soft_quote.attest, &soft_quote.signature).expect("verify");

    assert_eq!(soft_quote.attest.len(), tss_quote.attest.len(), "attest sizes");
    assert_eq!(soft_info.pcr_selection, tss_info.pcr_selection);
    assert_eq!(soft_info.pcr_digest, tss_info.pcr_digest, "pcrDigest of the same PCR values");
    assert_eq!(soft_info.extra_data, tss_info.extra_data);
    // The TPML_PCR_SELECTION and pcrDigest end both attests byte for byte.
    let tail = 4 + 3 * 6 + 2 + 32;
    let soft_tail = &soft_quote.attest[soft_quote.attest.len() - tail..];
    assert_eq!(soft_tail, &tss_quote.attest[tss_quote.attest.len() - tail..]);
    // Both keys have the same template, so the public areas agree up to
    // `unique`, which starts at byte 20 of the TPMT_PUBLIC.
    assert_eq!(soft_quote.ak_public[2..22], tss_quote.ak_public[2..22]);
}

/// Writes a quote's files in the formats `tpm2_checkquote` reads, runs it,
/// and returns whether it accepted the quote. `values` are the quoted PCR
/// values in selection order, `pcr_list` the selection in tpm2-tools syntax.
fn tpm2_checkquote(quote: &Quote, nonce: &[u8], hash: &str, pcr_list: &str, values: &[Digest], scratch: &Path) -> bool {
    std::fs::write(scratch.join("ak.pub"), &quote.ak_public).expect("write ak.pub");
    std::fs::write(scratch.join("quote.msg"), &quote.attest).expect("write quote.msg");
    std::fs::write(scratch.join("quote.sig"), &quote.signature).expect("write quote.sig");
    let pcrs: Vec<u8> = values.iter().flat_map(|value| value.as_bytes().to_vec()).collect();
    std::fs::write(scratch.join("quote.pcrs"), pcrs).expect("write quote.pcrs");
    let nonce_hex: String = nonce.iter().map(|byte| format!("{byte:02x}")).collect();
    let args = [
        "-u",
        "ak.pub",
        "-m",
        "quote.msg",
        "-s",
        "quote.sig",
        "-g",
        hash,
        "-q",
        &nonce_hex,
        "-f",
        "quote.pcrs",
        "-l",
        pcr_list,
    ];
    // tpm2_checkquote works offline and opens no TPM.
    let output = run_tool("tpm2_checkquote", &args, "none", scratch);
    if !output.status.success() {
        eprintln!("tpm2_checkquote rejected the quote: {}", String::from_utf8_lossy(&output.stderr));
    }
    output.status.success()
}

#[test]
fn tpm2_checkquote_accepts_soft_quotes() {
    if !tool_for_test("tpm2_checkquote", "tpm2-tools") {
        return;
    }
    let scratch = ScratchDirectory::new("checkquote-soft");
    let pcr_list = "sha256:0,10+sha1:10+sha384:23";
    // tpm2_checkquote 5.4 checks RSA signatures with PKCS#1 v1.5 padding
    // only, and rejects RSAPSS quotes, swtpm's own included, so
    // `swtpm_verifies_soft_signatures` checks those with the TPM.
    let algorithms =
        AkAlgorithm::ALL.into_iter().filter(|algorithm| algorithm.signing_scheme().scheme != SignatureScheme::Rsapss);
    for algorithm in algorithms {
        let mut tpm =
            SoftTpm::with_attestation_key(&[Bank::SHA1, Bank::SHA256, Bank::SHA384], algorithm, b"checkquote")
                .expect("soft TPM");
        extend_events(&mut tpm);
        let quote = tpm.quote(NONCE, &selection()).expect("quote");
        let info = QuoteInfo::parse(&quote.attest).expect("parse");
        let values = quoted_values(&mut tpm, &info);
        let hash = algorithm.signing_scheme().hash.tpm2_tools_name();

        assert!(tpm2_checkquote(&quote, NONCE, hash, pcr_list, &values, &scratch.0), "{algorithm}: valid quote");
        assert!(!tpm2_checkquote(&quote, b"other nonce", hash, pcr_list, &values, &scratch.0), "{algorithm}: nonce");
        let mut other_values = values.clone();
        other_values[0] = Digest::zero(32);
        assert!(!tpm2_checkquote(&quote, NONCE, hash, pcr_list, &other_values, &scratch.0), "{algorithm}: PCRs");
        let mut changed = quote.clone();
        changed.attest[20] ^= 1;
        assert!(!tpm2_checkquote(&changed, NONCE, hash, pcr_list, &values, &scratch.0), "{algorithm}: attest");
    }
}

#[test]
fn swtpm_verifies_soft_signatures() {
    if !tool_for_test("tpm2_verifysignature", "tpm2-tools") {
        return;
    }
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let tcti = swtpm.tcti();
    let scratch = ScratchDirectory::new("verifysignature-soft");
    let directory = &scratch.0;
    for algorithm in AkAlgorithm::ALL {
        let mut tpm = SoftTpm::with_attestation_key(&[Bank::SHA1, Bank::SHA256, Bank::SHA384], algorithm, b"swtpm")
            .expect("soft TPM");
        let quote = tpm.quote(NONCE, &selection()).expect("quote");
        std::fs::write(directory.join("ak.pub"), &quote.ak_public).expect("write ak.pub");
        std::fs::write(directory.join("quote.msg"), &quote.attest).expect("write quote.msg");
        std::fs::write(directory.join("quote.sig"), &quote.signature).expect("write quote.sig");
        let mut changed = quote.attest.clone();
        changed[20] ^= 1;
        std::fs::write(directory.join("changed.msg"), &changed).expect("write changed.msg");

        // TPM2_LoadExternal of the public area, then TPM2_VerifySignature.
        run_tool_ok("tpm2_loadexternal", &["-C", "o", "-u", "ak.pub", "-c", "ak.ctx"], &tcti, directory);
        let hash = algorithm.signing_scheme().hash.tpm2_tools_name();
        let verify = |message: &str| {
            let args = ["-c", "ak.ctx", "-g", hash, "-m", message, "-s", "quote.sig", "-t", "ticket"];
            run_tool("tpm2_verifysignature", &args, &tcti, directory)
        };
        let accepted = verify("quote.msg");
        let rejected = verify("changed.msg");
        // Without a resource manager each tool leaves its objects loaded,
        // and swtpm has three object slots.
        run_tool_ok("tpm2_flushcontext", &["-t"], &tcti, directory);

        assert!(
            accepted.status.success(),
            "{algorithm}: swtpm rejected the signature: {}",
            String::from_utf8_lossy(&accepted.stderr)
        );
        assert!(!rejected.status.success(), "{algorithm}: swtpm accepted the signature of a changed attest");
    }
}
