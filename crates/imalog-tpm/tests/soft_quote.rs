//! `SoftTpm` quotes checked by `verify_quote`: every attestation key
//! algorithm, the attest's fields, reboot counters, and rejection of wrong
//! keys, changed bytes and truncated input.

use imalog_core::{Bank, Digest, HashAlgorithm};
use imalog_tpm::{
    attributes, pcr_digest, verify_quote, AkAlgorithm, AkPublic, AttestError, Hierarchy, MarshalError, Quote,
    QuoteError, QuoteInfo, SoftTpm, Tpm, TpmError, TpmSignature, SOFT_TPM_FIRMWARE_VERSION, TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
};

const BANKS: [Bank; 4] = [Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512];
const NONCE: &[u8] = b"imalog soft quote nonce 0123456";

/// Creates a booted TPM with a key of `algorithm` derived from `seed`, and
/// extends PCR 10 twice.
fn booted_tpm(algorithm: AkAlgorithm, seed: &[u8]) -> SoftTpm {
    let mut tpm = SoftTpm::with_attestation_key(&BANKS, algorithm, seed).expect("derive the attestation key");
    tpm.simulate_boot(b"soft quote test");
    for event in 0..2u8 {
        let digests: Vec<Digest> =
            BANKS.iter().map(|bank| bank.tpm_algorithm().expect("known algorithm").digest(&[event])).collect();
        tpm.extend(10, &digests).expect("extend PCR 10");
    }
    tpm
}

/// Banks out of TPM order and PCRs out of ascending order, as a caller may
/// pass them.
fn selection() -> Vec<(Bank, Vec<u32>)> {
    vec![(Bank::SHA256, vec![10, 0, 7]), (Bank::SHA1, vec![10]), (Bank::SHA512, vec![23])]
}

/// Reads the quoted PCR values in the attest's order.
fn quoted_values(tpm: &mut SoftTpm, info: &QuoteInfo) -> Vec<Digest> {
    let mut values = Vec::new();
    for (bank, pcrs) in &info.pcr_selection {
        for &pcr in pcrs {
            values.push(tpm.read(bank, pcr).expect("read a quoted PCR"));
        }
    }
    values
}

fn quote(algorithm: AkAlgorithm, seed: &[u8]) -> Quote {
    booted_tpm(algorithm, seed).quote(NONCE, &selection()).expect("quote")
}

#[test]
fn soft_quotes_verify_for_every_algorithm() {
    for algorithm in AkAlgorithm::ALL {
        let mut tpm = booted_tpm(algorithm, b"every algorithm");
        let quote = tpm.quote(NONCE, &selection()).expect("quote");

        let info = verify_quote(&quote.ak_public, &quote.attest, &quote.signature)
            .unwrap_or_else(|error| panic!("{algorithm}: {error}"));
        assert_eq!(info.extra_data, NONCE, "{algorithm}: extraData");
        assert_eq!(
            info.pcr_selection,
            vec![(Bank::SHA256, vec![0, 7, 10]), (Bank::SHA1, vec![10]), (Bank::SHA512, vec![23])],
            "{algorithm}: pcrSelect"
        );

        let hash = algorithm.signing_scheme().hash;
        let values = quoted_values(&mut tpm, &info);
        let references: Vec<&Digest> = values.iter().collect();
        assert!(info.check_pcr_values(hash, &references), "{algorithm}: PCR values");
        assert_eq!(info.pcr_digest, pcr_digest(hash, &references).as_bytes(), "{algorithm}: pcrDigest");

        let key = AkPublic::parse(&quote.ak_public).expect("parse the key");
        assert_eq!(key.algorithm(), Some(algorithm));
        assert_eq!(key.object_attributes(), attributes::ATTESTATION_KEY, "{algorithm}: attributes");
        assert_eq!(info.qualified_signer, key.primary_qualified_name(Hierarchy::Endorsement), "{algorithm}");
        let signature = TpmSignature::parse(&quote.signature).expect("parse the signature");
        assert_eq!(signature.signing_scheme(), algorithm.signing_scheme());
        assert_eq!(tpm.ak_public().expect("ak_public"), quote.ak_public, "{algorithm}: ak_public");
        assert_eq!(tpm.ak_algorithm(), algorithm);
    }
}

#[test]
fn soft_attest_fields_match_tpm_format() {
    let mut tpm = booted_tpm(AkAlgorithm::EccP256, b"format");
    let quote = tpm.quote(NONCE, &[(Bank::SHA256, vec![0, 10, 23])]).expect("quote");
    let attest = &quote.attest;

    assert_eq!(attest[0..4], TPM_GENERATED_VALUE.to_be_bytes());
    assert_eq!(attest[4..6], TPM_ST_ATTEST_QUOTE.to_be_bytes());
    // qualifiedSigner: a SHA-256 name of 34 bytes.
    assert_eq!(attest[6..8], [0, 34]);
    let info = QuoteInfo::parse(attest).expect("parse");
    assert!(info.safe);
    assert_eq!(info.firmware_version, SOFT_TPM_FIRMWARE_VERSION);
    assert_eq!((info.reset_count, info.restart_count), (0, 0));

    // TPML_PCR_SELECTION: one bank, sha256, 3-byte bitmap of PCRs 0, 10, 23.
    let selection_offset = attest.len() - 2 - 32 - 10;
    assert_eq!(attest[selection_offset..selection_offset + 10], [0, 0, 0, 1, 0x00, 0x0b, 3, 0x01, 0x04, 0x80]);
    assert_eq!(attest[attest.len() - 34..attest.len() - 32], [0, 32]);
}

#[test]
fn soft_key_derives_from_seed() {
    for algorithm in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048] {
        let first = SoftTpm::with_attestation_key(&BANKS, algorithm, b"seed one").expect("key").ak_public();
        let again = SoftTpm::with_attestation_key(&BANKS, algorithm, b"seed one").expect("key").ak_public();
        let other = SoftTpm::with_attestation_key(&BANKS, algorithm, b"seed two").expect("key").ak_public();
        assert_eq!(first.as_ref().expect("ak_public"), again.as_ref().expect("ak_public"), "{algorithm}");
        assert_ne!(first.as_ref().expect("ak_public"), other.as_ref().expect("ak_public"), "{algorithm}");
    }
}

#[test]
fn default_soft_key_is_random_p256() {
    let mut first = SoftTpm::new(&BANKS).expect("soft TPM");
    let mut second = SoftTpm::with_default_banks();
    assert_eq!(first.ak_algorithm(), AkAlgorithm::EccP256);
    let first_key = first.ak_public().expect("random key");
    assert_eq!(first.ak_public().expect("same key"), first_key, "the key stays once made");
    assert_ne!(second.ak_public().expect("random key"), first_key);

    let quote = first.quote(b"", &[]).expect("quote of no PCRs");
    assert_eq!(quote.ak_public, first_key);
    let info = verify_quote(&quote.ak_public, &quote.attest, &quote.signature).expect("verify");
    assert!(info.pcr_selection.is_empty());
    assert_eq!(info.pcr_digest, HashAlgorithm::Sha256.digest(b"").as_bytes());
}

#[test]
fn reset_and_restart_update_counters() {
    let mut tpm = booted_tpm(AkAlgorithm::EccP256, b"reboot");
    let selection = [(Bank::SHA256, vec![10])];
    let verify = |quote: &Quote| verify_quote(&quote.ak_public, &quote.attest, &quote.signature).expect("verify");

    let before = verify(&tpm.quote(b"1", &selection).expect("quote"));
    assert_eq!((before.reset_count, before.restart_count), (0, 0));
    let pcr_before = tpm.read(&Bank::SHA256, 10).expect("read");

    tpm.restart();
    tpm.restart();
    let resumed = verify(&tpm.quote(b"2", &selection).expect("quote"));
    assert_eq!((resumed.reset_count, resumed.restart_count), (0, 2));
    assert_eq!(resumed.pcr_digest, before.pcr_digest, "a resume keeps the PCRs");
    assert_eq!(tpm.read(&Bank::SHA256, 10).expect("read"), pcr_before);

    tpm.reset();
    let rebooted = verify(&tpm.quote(b"3", &selection).expect("quote"));
    assert_eq!((rebooted.reset_count, rebooted.restart_count), (1, 0));
    assert_eq!((tpm.reset_count(), tpm.restart_count()), (1, 0));
    assert_eq!(tpm.read(&Bank::SHA256, 10).expect("read"), Digest::zero(32), "a reset clears PCR 10");
    assert_eq!(tpm.read(&Bank::SHA1, 17).expect("read"), Digest::from_slice(&[0xff; 20]).expect("20 bytes"));
    assert_ne!(rebooted.pcr_digest, before.pcr_digest);

    // Each quote's clock exceeds the last, also within one millisecond.
    assert!(before.clock < resumed.clock, "clock did not advance over the resume");
    assert!(resumed.clock < rebooted.clock, "clock did not advance over the reset");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let later = verify(&tpm.quote(b"4", &selection).expect("quote"));
    assert!(later.clock > rebooted.clock, "clock {} did not advance past {}", later.clock, rebooted.clock);
    assert!(later.clock >= 20, "clock {} counts fewer than the 20 ms slept since the TPM was made", later.clock);
    assert_eq!(later.qualified_signer, before.qualified_signer, "the key survives a reset");
}

#[test]
fn soft_quote_rejects_invalid_requests() {
    let mut tpm = SoftTpm::with_attestation_key(&[Bank::SHA1, Bank::SHA256], AkAlgorithm::EccP256, b"requests")
        .expect("soft TPM");
    assert_eq!(tpm.quote(&[0; 65], &[(Bank::SHA256, vec![10])]), Err(TpmError::NonceSize { max: 64, found: 65 }));
    assert_eq!(
        tpm.quote(b"nonce", &[(Bank::SHA256, vec![10]), (Bank::SHA256, vec![0])]),
        Err(TpmError::DuplicateBank(Bank::SHA256))
    );
    assert_eq!(tpm.quote(b"nonce", &[(Bank::SHA384, vec![10])]), Err(TpmError::NoSuchBank(Bank::SHA384)));
    assert_eq!(tpm.quote(b"nonce", &[(Bank::SHA1, vec![24])]), Err(TpmError::NoSuchPcr { pcr: 24 }));
    assert!(tpm.quote(&[0; 64], &[(Bank::SHA1, vec![10, 10])]).is_ok());
}

#[test]
fn quote_with_wrong_key_fails() {
    let quote = quote(AkAlgorithm::EccP256, b"right key");
    let same_algorithm = self::quote(AkAlgorithm::EccP256, b"wrong key").ak_public;
    assert_eq!(verify_quote(&same_algorithm, &quote.attest, &quote.signature), Err(QuoteError::SignatureMismatch));

    let other_algorithm = self::quote(AkAlgorithm::EccP384, b"right key").ak_public;
    let error = verify_quote(&other_algorithm, &quote.attest, &quote.signature).unwrap_err();
    assert!(matches!(error, QuoteError::SchemeMismatch { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "the signature is ECDSA-SHA256, but the attestation key signs with ECC NIST P-384 ECDSA-SHA384"
    );

    let rsa = self::quote(AkAlgorithm::Rsa2048, b"right key");
    let error = verify_quote(&rsa.ak_public, &quote.attest, &quote.signature).unwrap_err();
    assert!(matches!(error, QuoteError::SchemeMismatch { .. }), "{error}");

    // The same key with another attribute has another name, and the
    // signature still verifies, so only the name check catches it.
    let mut changed = quote.ak_public.clone();
    changed[9] ^= attributes::FIXED_TPM as u8;
    let error = verify_quote(&changed, &quote.attest, &quote.signature).unwrap_err();
    assert!(matches!(error, QuoteError::NameMismatch { .. }), "{error}");
    let key = AkPublic::parse(&changed).expect("still an attestation key");
    assert!(key.verify_quote_signature(&quote.attest, &quote.signature).is_ok());
}

/// Flips the low bit of each byte of the part of `quote` that `select`
/// returns, one byte at a time, and checks that verification fails with an
/// error that `allowed` accepts.
fn check_every_flip(
    algorithm: AkAlgorithm,
    quote: &Quote,
    part: &str,
    select: impl Fn(&mut Quote) -> &mut Vec<u8>,
    allowed: impl Fn(&QuoteError) -> bool,
) {
    let length = select(&mut quote.clone()).len();
    for offset in 0..length {
        let mut changed = quote.clone();
        select(&mut changed)[offset] ^= 0x01;
        let result = verify_quote(&changed.ak_public, &changed.attest, &changed.signature);
        match result {
            Ok(_) => panic!("{algorithm}: {part} with byte {offset} changed verifies"),
            Err(error) => assert!(allowed(&error), "{algorithm}: {part} byte {offset}: unexpected error {error}"),
        }
    }
}

#[test]
fn changed_bytes_fail_verification() {
    for algorithm in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048Pss, AkAlgorithm::EccP384, AkAlgorithm::Rsa2048] {
        let quote = quote(algorithm, b"flips");
        check_every_flip(
            algorithm,
            &quote,
            "attest",
            |quote| &mut quote.attest,
            |error| matches!(error, QuoteError::MalformedAttest(_) | QuoteError::SignatureMismatch),
        );
        check_every_flip(
            algorithm,
            &quote,
            "signature",
            |quote| &mut quote.signature,
            |error| {
                matches!(
                    error,
                    QuoteError::MalformedSignature(_)
                        | QuoteError::UnsupportedAlgorithm { structure: "TPMT_SIGNATURE", .. }
                        | QuoteError::SchemeMismatch { .. }
                        | QuoteError::SignatureMismatch
                )
            },
        );
        check_every_flip(
            algorithm,
            &quote,
            "key",
            |quote| &mut quote.ak_public,
            |error| !matches!(error, QuoteError::MalformedAttest(_) | QuoteError::MalformedSignature(_)),
        );
    }
}

#[test]
fn changed_payload_is_signature_mismatch() {
    let quote = quote(AkAlgorithm::EccP256, b"payload");
    let length = quote.attest.len();

    // The last byte of pcrDigest, and the last byte of the nonce.
    for offset in [length - 1, 8 + 34 + 2 + NONCE.len() - 1] {
        let mut attest = quote.attest.clone();
        attest[offset] ^= 0x80;
        assert_eq!(
            verify_quote(&quote.ak_public, &attest, &quote.signature),
            Err(QuoteError::SignatureMismatch),
            "attest byte {offset}"
        );
    }

    let mut signature = quote.signature.clone();
    let last = signature.len() - 1;
    signature[last] ^= 0x80;
    assert_eq!(verify_quote(&quote.ak_public, &quote.attest, &signature), Err(QuoteError::SignatureMismatch));

    let mut attest = quote.attest.clone();
    attest[0] = 0;
    let error = verify_quote(&quote.ak_public, &attest, &quote.signature).unwrap_err();
    assert_eq!(error, QuoteError::MalformedAttest(AttestError::Magic { found: 0x0054_4347 }));
}

#[test]
fn truncated_inputs_name_offset() {
    for algorithm in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048] {
        let quote = quote(algorithm, b"truncated");
        for cut in 0..quote.ak_public.len() {
            let error = verify_quote(&quote.ak_public[..cut], &quote.attest, &quote.signature).unwrap_err();
            assert!(
                matches!(error, QuoteError::MalformedKey(MarshalError::Truncated { offset, .. }) if offset == cut),
                "{algorithm}: key cut at {cut}: {error}"
            );
            assert!(error.to_string().contains(&format!("byte {cut}")), "{error}");
        }
        for cut in 0..quote.signature.len() {
            let error = verify_quote(&quote.ak_public, &quote.attest, &quote.signature[..cut]).unwrap_err();
            assert!(
                matches!(error, QuoteError::MalformedSignature(MarshalError::Truncated { offset, .. }) if offset == cut),
                "{algorithm}: signature cut at {cut}: {error}"
            );
            assert!(error.to_string().contains(&format!("byte {cut}")), "{error}");
        }
        for cut in 0..quote.attest.len() {
            let error = verify_quote(&quote.ak_public, &quote.attest[..cut], &quote.signature).unwrap_err();
            assert!(
                matches!(error, QuoteError::MalformedAttest(AttestError::Truncated { offset, .. }) if offset == cut),
                "{algorithm}: attest cut at {cut}: {error}"
            );
            assert!(error.to_string().contains(&format!("byte {cut}")), "{error}");
        }
    }
}

#[test]
fn bare_public_area_verifies() {
    let quote = quote(AkAlgorithm::Rsa2048Pss, b"bare");
    let info = verify_quote(&quote.ak_public[2..], &quote.attest, &quote.signature).expect("verify with TPMT_PUBLIC");
    assert_eq!(info.extra_data, NONCE);
    // Every prefix of the bare area fails without panicking.
    for cut in 0..quote.ak_public.len() - 2 {
        assert!(AkPublic::parse(&quote.ak_public[2..2 + cut]).is_err(), "TPMT_PUBLIC cut at {cut}");
    }
}

#[test]
fn arbitrary_prefixes_do_not_panic() {
    // Pairing every prefix of one input with every prefix of the others
    // would be quadratic. Each prefix with the others whole, then empty,
    // reaches every parser in the order verify_quote calls them.
    let quote = quote(AkAlgorithm::EccP384, b"prefixes");
    let inputs = [&quote.ak_public, &quote.attest, &quote.signature];
    for (index, input) in inputs.iter().enumerate() {
        for cut in 0..=input.len() {
            for others_empty in [false, true] {
                let mut parts: Vec<&[u8]> =
                    inputs.iter().map(|whole| if others_empty { &[][..] } else { whole.as_slice() }).collect();
                parts[index] = &input[..cut];
                let _ = verify_quote(parts[0], parts[1], parts[2]);
                let _ = TpmSignature::parse(parts[2]);
                let _ = QuoteInfo::parse(parts[1]);
            }
        }
    }
}
