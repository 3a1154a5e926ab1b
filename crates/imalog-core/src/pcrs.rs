//! PCR values as `tpm2_pcrread` prints them:
//!
//! ```text
//!   sha1:
//!     10: 0x9BE6BAC02BF18D09D17E726C2DF00BCA4E8831EA
//!   sha256:
//!     10: 0x7FAC48C8...
//! ```
//!
//! A bank line is a name and a colon; each PCR line under it is an index, a
//! colon and the value in hex, with or without `0x`.

use crate::bank::Bank;
use crate::hash::Digest;
use crate::replay::ExpectedPcr;

/// A line of a PCR file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PcrFileError {
    /// One-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses `tpm2_pcrread` YAML output into expected PCR values, in file order.
pub fn parse_pcr_yaml(text: &str) -> Result<Vec<ExpectedPcr>, PcrFileError> {
    let mut bank: Option<Bank> = None;
    let mut out: Vec<ExpectedPcr> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = number + 1;
        let error = |message: String| PcrFileError { line, message };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() || content == "---" {
            continue;
        }
        let (key, value) = content
            .split_once(':')
            .ok_or_else(|| error(format!("expected '<bank>:' or '<pcr>: <hex>', found {content:?}")))?;
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() {
            let parsed: Bank = key.parse().map_err(|e| error(format!("{e}")))?;
            bank = Some(parsed);
            continue;
        }
        let current = bank.ok_or_else(|| error(format!("PCR {key} appears before any bank line such as 'sha256:'")))?;
        let pcr: u32 = key.parse().map_err(|_| error(format!("expected a PCR index, found {key:?}")))?;
        if pcr > crate::binary::MAX_PCR_INDEX {
            return Err(error(format!("PCR index {pcr} is out of range 0 to 63")));
        }
        let digest = Digest::from_hex(value).ok_or_else(|| error(format!("invalid hex value {value:?}")))?;
        if digest.len() != current.digest_size() {
            return Err(error(format!(
                "PCR {pcr} in bank {} is {} bytes; expected {}",
                current.tpm2_tools_name(),
                digest.len(),
                current.digest_size()
            )));
        }
        if out.iter().any(|e| e.bank == current && e.pcr == pcr) {
            return Err(error(format!("PCR {pcr} in bank {} is given twice", current.tpm2_tools_name())));
        }
        out.push(ExpectedPcr { bank: current, pcr, value: digest });
    }
    Ok(out)
}

/// Renders PCR values in the same YAML layout.
pub fn format_pcr_yaml(values: &[ExpectedPcr]) -> String {
    let mut out = String::new();
    let mut current: Option<Bank> = None;
    for entry in values {
        if current != Some(entry.bank) {
            out.push_str(&format!("  {}:\n", entry.bank.tpm2_tools_name()));
            current = Some(entry.bank);
        }
        out.push_str(&format!("    {}: 0x{}\n", entry.pcr, entry.value.to_hex().to_uppercase()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "  sha1:\n    10: 0xFD8BA138F75941985C97B8D8E6E41C7DB79FBE5E\n  sha256:\n    10: 0xC4B33F4F4D1C9D28B1CACE4F6C4AAE0AD2924778474E88F5325461EDF8C7349D\n";

    #[test]
    fn pcr_yaml_round_trip() {
        let values = parse_pcr_yaml(SAMPLE).unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0].bank, Bank::SHA1);
        assert_eq!(values[1].value.to_hex(), "c4b33f4f4d1c9d28b1cace4f6c4aae0ad2924778474e88f5325461edf8c7349d");
        assert_eq!(format_pcr_yaml(&values), SAMPLE);
    }

    #[test]
    fn pcr_yaml_errors_name_the_line() {
        assert_eq!(parse_pcr_yaml("    10: 0x00\n").unwrap_err().line, 1);
        let error = parse_pcr_yaml("  sha1:\n    10: 0x00\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("expected 20"), "{error}");
        assert!(parse_pcr_yaml("  md5:\n").is_err());
        assert!(parse_pcr_yaml("  sha1:\n    64: 0x00\n").is_err());
    }
}
