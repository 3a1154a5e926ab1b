//! `TssTpm` on swtpm: banks, extends against `SoftTpm`, and input checks.

use imalog_core::{Bank, Digest};
use imalog_tpm::testing::Swtpm;
use imalog_tpm::{SoftTpm, Tpm, TpmError, TssTpm, PCR_COUNT};

use crate::common::{event_chain, event_digests, start_proxy};

const DEFAULT_BANKS: [Bank; 4] = [Bank::SHA1, Bank::SHA256, Bank::SHA384, Bank::SHA512];

#[test]
fn tss_tpm_reports_swtpm_default_banks() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let tpm = TssTpm::open(&swtpm.tcti()).expect("open swtpm");
    assert_eq!(tpm.banks(), DEFAULT_BANKS);
}

#[test]
fn tss_tpm_extends_match_soft_tpm() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let mut tss = TssTpm::open(&swtpm.tcti()).expect("open swtpm");
    let banks = tss.banks();
    let mut soft = SoftTpm::new(&banks).expect("soft TPM with swtpm's banks");

    // PCR 10 as IMA uses it, and PCRs 0, 16 and 23. PCRs 17 to 22 start at
    // all ones, and locality 0 cannot extend them.
    for (event, pcr) in [10, 10, 10, 0, 16, 23].into_iter().enumerate() {
        let digests = event_digests(&banks, event);
        tss.extend(pcr, &digests).expect("extend swtpm");
        soft.extend(pcr, &digests).expect("extend the soft TPM");
    }

    for bank in &banks {
        for pcr in 0..PCR_COUNT {
            let expected = soft.read(bank, pcr).expect("read the soft TPM");
            let actual = tss.read(bank, pcr).expect("read swtpm");
            assert_eq!(actual, expected, "bank {bank}, PCR {pcr}");
        }
    }
    assert_eq!(tss.read(&Bank::SHA256, 10).unwrap(), event_chain(&Bank::SHA256, 3)[3]);
}

#[test]
fn tss_tpm_opens_swtpm_unix_socket() {
    let Some(swtpm) = Swtpm::start_unix_for_test() else { return };
    let tcti = swtpm.tcti();
    assert!(tcti.starts_with("swtpm:path="), "{tcti}");

    let mut tpm = TssTpm::open(&tcti).expect("open swtpm through its Unix socket");
    assert_eq!(tpm.banks(), DEFAULT_BANKS);
    tpm.extend(10, &event_digests(&DEFAULT_BANKS, 0)).expect("extend");
    assert_eq!(tpm.read(&Bank::SHA1, 10).unwrap(), event_chain(&Bank::SHA1, 1)[1]);
}

#[test]
fn tss_tpm_works_through_proxy_to_unix_swtpm() {
    let Some(swtpm) = Swtpm::start_unix_for_test() else { return };
    let proxy = start_proxy(&swtpm);
    let mut tpm = TssTpm::open(&proxy.tcti().expect("TCP listener")).expect("open through the proxy");
    tpm.extend(10, &event_digests(&DEFAULT_BANKS, 0)).expect("extend");
    assert_eq!(tpm.read(&Bank::SHA512, 10).unwrap(), event_chain(&Bank::SHA512, 1)[1]);
    assert!(proxy.stats().commands >= 3, "{:?}", proxy.stats());
}

#[test]
fn tss_tpm_rejects_invalid_requests() {
    let Some(swtpm) = Swtpm::start_for_test() else { return };
    let mut tpm = TssTpm::open(&swtpm.tcti()).expect("open swtpm");
    let digests = event_digests(&DEFAULT_BANKS, 0);

    assert_eq!(tpm.extend(24, &digests), Err(TpmError::NoSuchPcr { pcr: 24 }));
    assert_eq!(tpm.extend(10, &digests[..3]), Err(TpmError::DigestCount { expected: 4, found: 3 }));
    let mut wrong_size = digests.clone();
    wrong_size[1] = Digest::zero(20);
    assert_eq!(tpm.extend(10, &wrong_size), Err(TpmError::DigestSize { bank: Bank::SHA256, expected: 32, found: 20 }));
    assert_eq!(tpm.read(&Bank::SM3, 10), Err(TpmError::NoSuchBank(Bank::SM3)));
    assert_eq!(tpm.read(&Bank::SHA1, 24), Err(TpmError::NoSuchPcr { pcr: 24 }));

    assert_eq!(tpm.quote(&[0; 65], &[(Bank::SHA256, vec![10])]), Err(TpmError::NonceSize { max: 64, found: 65 }));
    assert_eq!(
        tpm.quote(b"nonce", &[(Bank::SHA256, vec![10]), (Bank::SHA256, vec![0])]),
        Err(TpmError::DuplicateBank(Bank::SHA256))
    );
    assert_eq!(tpm.quote(b"nonce", &[(Bank::SM3, vec![10])]), Err(TpmError::NoSuchBank(Bank::SM3)));
    assert_eq!(tpm.quote(b"nonce", &[(Bank::SHA1, vec![24])]), Err(TpmError::NoSuchPcr { pcr: 24 }));

    // None of the rejected extends reached the TPM.
    assert_eq!(tpm.read(&Bank::SHA256, 10).unwrap(), Digest::zero(32));
}

#[test]
fn tss_tpm_rejects_invalid_tcti() {
    let error = TssTpm::open("swtpm:host=127.0.0.1,prot=2321").unwrap_err();
    assert!(matches!(error, TpmError::InvalidTcti { .. }), "{error}");

    let error = TssTpm::open("swtpm:path=/nonexistent/imalog-swtpm.sock").unwrap_err();
    assert!(matches!(error, TpmError::Device(_)), "{error}");
    assert!(error.to_string().contains("/nonexistent/imalog-swtpm.sock"), "{error}");
}

#[test]
fn tss_tpm_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<TssTpm>();
    assert_send::<Box<dyn Tpm>>();
}
