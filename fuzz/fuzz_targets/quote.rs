#![no_main]

//! TPM2 quote parsing and verification on arbitrary bytes: the attest, the
//! public key and the signature each on their own, then a whole bundle. The
//! bundle layout is two little-endian u16 lengths (key, attest), then the
//! key, the attest and the signature.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = imalog_tpm::QuoteInfo::parse(data);
    let _ = imalog_tpm::AkPublic::parse(data);
    let _ = imalog_tpm::TpmSignature::parse(data);
    if data.len() < 4 {
        return;
    }
    let key_len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let attest_len = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let rest = &data[4..];
    let (key, rest) = rest.split_at(key_len.min(rest.len()));
    let (attest, signature) = rest.split_at(attest_len.min(rest.len()));
    let _ = imalog_tpm::verify_quote(key, attest, signature);
});
