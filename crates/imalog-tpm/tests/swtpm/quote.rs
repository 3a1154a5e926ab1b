//! Quotes through the proxy: `TssTpm::quote` checked field by field and by
//! `tpm2_checkquote`, and `tpm2_quote` of tpm2-tools.

use imalog_core::{Bank, Digest, HashAlgorithm};
use imalog_tpm::testing::{tool_for_test, Swtpm};
use imalog_tpm::{verify_quote, AkAlgorithm, Quote, QuoteInfo, Tpm, TssTpm, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};

use crate::common::{event_digests, parse_pcrread, run_tool_ok, start_proxy, ScratchDirectory};

/// Quotes PCRs after a few extends and checks the attest against the PCR
/// values read through the same proxy.
fn check_own_quote(algorithm: AkAlgorithm, name: &str) {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    let tcti = proxy.tcti().expect("TCP listener");
    let mut tpm = TssTpm::open(&tcti).expect("open swtpm through the proxy");
    tpm.set_ak_algorithm(algorithm);
    let banks = tpm.banks();
    for event in 0..3 {
        tpm.extend(10, &event_digests(&banks, event)).expect("extend PCR 10");
    }
    tpm.extend(0, &event_digests(&banks, 3)).expect("extend PCR 0");

    // Banks out of TPM order, to check that the attest keeps the caller's.
    let selection = vec![(Bank::SHA256, vec![10, 0]), (Bank::SHA1, vec![10])];
    let nonce = b"imalog quote nonce 0123456789abc";
    let quote = tpm.quote(nonce, &selection).expect("quote");

    assert_eq!(quote.attest[0..4], TPM_GENERATED_VALUE.to_be_bytes(), "magic");
    assert_eq!(quote.attest[4..6], TPM_ST_ATTEST_QUOTE.to_be_bytes(), "attest type");
    let info = QuoteInfo::parse(&quote.attest).expect("parse the attest");
    assert_eq!(info.extra_data, nonce, "extraData");
    let verified = verify_quote(&quote.ak_public, &quote.attest, &quote.signature).expect("verify the quote");
    assert_eq!(verified, info);
    assert_eq!(info.pcr_selection, vec![(Bank::SHA256, vec![0, 10]), (Bank::SHA1, vec![10])]);

    let values: Vec<Digest> = info
        .pcr_selection
        .iter()
        .flat_map(|(bank, pcrs)| pcrs.iter().map(move |&pcr| (*bank, pcr)))
        .map(|(bank, pcr)| tpm.read(&bank, pcr).expect("read a quoted PCR"))
        .collect();
    let parts: Vec<&[u8]> = values.iter().map(Digest::as_bytes).collect();
    let expected_digest = HashAlgorithm::Sha256.digest_parts(&parts);
    assert_eq!(info.pcr_digest, expected_digest.as_bytes(), "pcrDigest");

    // The AK is re-derived from the endorsement seed, so it stays the same.
    let again = tpm.quote(b"second nonce", &selection).expect("second quote");
    assert_eq!(again.ak_public, quote.ak_public, "attestation key changed between quotes");
    assert_eq!(QuoteInfo::parse(&again.attest).expect("parse").extra_data, b"second nonce");

    if tool_for_test("tpm2_checkquote", "tpm2-tools") {
        check_with_tpm2_checkquote(&quote, nonce, &tcti, name);
    }
}

/// Verifies the signature and nonce with tpm2-tools, which proves that
/// `attest` contains the bytes the TPM signed.
fn check_with_tpm2_checkquote(quote: &Quote, nonce: &[u8], tcti: &str, name: &str) {
    let scratch = ScratchDirectory::new(name);
    std::fs::write(scratch.0.join("ak.pub"), &quote.ak_public).expect("write ak.pub");
    std::fs::write(scratch.0.join("quote.msg"), &quote.attest).expect("write quote.msg");
    std::fs::write(scratch.0.join("quote.sig"), &quote.signature).expect("write quote.sig");
    let nonce_hex: String = nonce.iter().map(|byte| format!("{byte:02x}")).collect();
    run_tool_ok(
        "tpm2_checkquote",
        &["-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256", "-q", &nonce_hex],
        tcti,
        &scratch.0,
    );
}

#[test]
fn own_quote_through_proxy_ecc() {
    check_own_quote(AkAlgorithm::EccP256, "quote-ecc");
}

#[test]
fn own_quote_through_proxy_rsa() {
    check_own_quote(AkAlgorithm::Rsa2048, "quote-rsa");
}

#[test]
fn tpm2_quote_through_proxy() {
    if !tool_for_test("tpm2_quote", "tpm2-tools") {
        return;
    }
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    let tcti = proxy.tcti().expect("TCP listener");
    let mut tpm = TssTpm::open(&tcti).expect("open swtpm through the proxy");
    let banks = tpm.banks();
    tpm.extend(10, &event_digests(&banks, 0)).expect("extend PCR 10");

    let scratch = ScratchDirectory::new("tpm2-quote");
    let directory = &scratch.0;
    run_tool_ok(
        "tpm2_createprimary",
        &[
            "-C",
            "e",
            "-g",
            "sha256",
            "-G",
            "ecc256:ecdsa-sha256:null",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
            "-c",
            "ak.ctx",
        ],
        &tcti,
        directory,
    );
    run_tool_ok("tpm2_readpublic", &["-c", "ak.ctx", "-o", "ak.pub"], &tcti, directory);
    let quote_args =
        ["-c", "ak.ctx", "-l", "sha256:10", "-q", "0badc0de", "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs"];
    let output = run_tool_ok("tpm2_quote", &[&quote_args[..], &["-g", "sha256"]].concat(), &tcti, directory);
    // Without a resource manager each tool leaves its objects loaded, and
    // swtpm has three object slots.
    run_tool_ok("tpm2_flushcontext", &["-t"], &tcti, directory);

    let pcrs = parse_pcrread(&output);
    let quoted = pcrs.get(&("sha256".to_string(), 10)).expect("tpm2_quote prints sha256 PCR 10");
    assert_eq!(*quoted, tpm.read(&Bank::SHA256, 10).expect("read PCR 10"));
    run_tool_ok(
        "tpm2_checkquote",
        &["-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs", "-g", "sha256", "-q", "0badc0de"],
        &tcti,
        directory,
    );
    let info = QuoteInfo::parse(&std::fs::read(directory.join("quote.msg")).expect("read quote.msg"))
        .expect("parse tpm2_quote's attest");
    assert_eq!(info.extra_data, [0x0b, 0xad, 0xc0, 0xde]);

    // The TssTpm still works after the tools, so its own quote finds a free
    // object slot.
    tpm.quote(b"after tpm2_quote", &[(Bank::SHA256, vec![10])]).expect("quote after the tools");
}
