//! imalog-verifier: attests IMA histories against TPM quotes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod policy;
