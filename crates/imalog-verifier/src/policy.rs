//! Runtime policy: which file digests each path may have, which paths are
//! not checked, and which buffer measurements (keys on keyrings) are
//! allowed. Keylime's runtime-policy JSON can be imported as it is.
//!
//! A record passes when its path matches an exclusion, or when its file
//! digest is one of the digests the policy lists for its path. A path the
//! policy does not list fails, as with an allowlist. `ima-buf` records are
//! checked against `keyrings` when their event name is a listed keyring,
//! and pass otherwise; a keyring in `ignored_keyrings` always passes.
//! Violations are reported separately (see [`PolicyFailure::Violation`]).

use std::collections::{HashMap, HashSet};

use imalog_core::{FieldId, FieldValue, Record};
use regex::RegexSet;
use serde::Deserialize;

/// A policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The JSON is malformed or has the wrong shape.
    #[error("invalid runtime policy: {0}")]
    Json(String),
    /// An exclusion is not a valid regular expression.
    #[error("invalid exclusion pattern: {0}")]
    Pattern(String),
    /// A digest is not hex, or has a length no IMA hash algorithm has.
    #[error(
        "digest {digest:?} for {path}: expected the hex of a 16, 20, 28, 32, 48 or 64-byte digest \
         (md5, sha1, sha224, sha256 or sm3, sha384, sha512)"
    )]
    Digest {
        /// The path.
        path: String,
        /// The text.
        digest: String,
    },
}

/// Why a record does not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyFailure {
    /// The path is not in the policy.
    UnknownPath {
        /// Absolute record index.
        index: u64,
        /// The path.
        path: String,
        /// The file digest found, `<algo>:<hex>`.
        digest: String,
    },
    /// The path is listed, but with other digests.
    DigestNotAllowed {
        /// Absolute record index.
        index: u64,
        /// The path.
        path: String,
        /// The file digest found.
        digest: String,
    },
    /// A key buffer on a listed keyring with an unlisted digest.
    KeyNotAllowed {
        /// Absolute record index.
        index: u64,
        /// The keyring.
        keyring: String,
        /// The buffer digest found.
        digest: String,
    },
    /// A violation record: the file changed while it was open, so the
    /// measurement cannot be trusted.
    Violation {
        /// Absolute record index.
        index: u64,
        /// The path.
        path: String,
    },
    /// A record without a file digest the policy could check.
    Unreadable {
        /// Absolute record index.
        index: u64,
        /// What is missing.
        reason: String,
    },
}

impl PolicyFailure {
    /// The absolute index of the record that failed.
    pub fn index(&self) -> u64 {
        match self {
            PolicyFailure::UnknownPath { index, .. }
            | PolicyFailure::DigestNotAllowed { index, .. }
            | PolicyFailure::KeyNotAllowed { index, .. }
            | PolicyFailure::Violation { index, .. }
            | PolicyFailure::Unreadable { index, .. } => *index,
        }
    }
}

impl std::fmt::Display for PolicyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyFailure::UnknownPath { index, path, digest } => {
                write!(f, "record {index}: {path} ({digest}) is not in the runtime policy")
            }
            PolicyFailure::DigestNotAllowed { index, path, digest } => {
                write!(f, "record {index}: {path} has digest {digest}, which the runtime policy does not allow")
            }
            PolicyFailure::KeyNotAllowed { index, keyring, digest } => {
                write!(f, "record {index}: key {digest} on keyring {keyring} is not in the runtime policy")
            }
            PolicyFailure::Violation { index, path } => {
                write!(f, "record {index}: violation for {path}: it changed while open, its measurement is not trusted")
            }
            PolicyFailure::Unreadable { index, reason } => write!(f, "record {index}: {reason}"),
        }
    }
}

/// A runtime policy.
#[derive(Debug, Default)]
pub struct Policy {
    /// Allowed file digests (raw bytes) per path.
    digests: HashMap<String, HashSet<Vec<u8>>>,
    excludes: Option<RegexSet>,
    keyrings: HashMap<String, HashSet<Vec<u8>>>,
    ignored_keyrings: HashSet<String>,
    /// Whether violations pass.
    pub accept_violations: bool,
}

/// Keylime's runtime-policy JSON, version 1 (the parts imalog uses).
#[derive(Deserialize)]
struct KeylimePolicy {
    #[serde(default)]
    digests: HashMap<String, Vec<String>>,
    #[serde(default)]
    excludes: Vec<String>,
    #[serde(default)]
    keyrings: HashMap<String, Vec<String>>,
    #[serde(default)]
    ima: Option<KeylimeImaSection>,
}

#[derive(Deserialize)]
struct KeylimeImaSection {
    #[serde(default)]
    ignored_keyrings: Vec<String>,
}

/// Digest lengths of the hash algorithms IMA logs file digests with.
const DIGEST_LENGTHS: [usize; 6] = [16, 20, 28, 32, 48, 64];

fn decode_digests(path: &str, list: &[String]) -> Result<HashSet<Vec<u8>>, PolicyError> {
    list.iter()
        .map(|text| {
            imalog_core::hex::decode(text.as_bytes())
                .ok()
                .filter(|digest| DIGEST_LENGTHS.contains(&digest.len()))
                .ok_or_else(|| PolicyError::Digest { path: path.to_string(), digest: text.clone() })
        })
        .collect()
}

impl Policy {
    /// Parses Keylime's runtime-policy JSON (`digests`, `excludes`,
    /// `keyrings`, `ima.ignored_keyrings`; other keys are ignored).
    pub fn from_keylime_json(text: &str) -> Result<Policy, PolicyError> {
        let parsed: KeylimePolicy = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        let mut digests = HashMap::new();
        for (path, list) in &parsed.digests {
            digests.insert(path.clone(), decode_digests(path, list)?);
        }
        let mut keyrings = HashMap::new();
        for (name, list) in &parsed.keyrings {
            keyrings.insert(name.clone(), decode_digests(name, list)?);
        }
        let excludes = if parsed.excludes.is_empty() {
            None
        } else {
            // Keylime matches exclusions with Python's re.match, anchored at
            // the start of the path.
            let anchored: Vec<String> = parsed.excludes.iter().map(|p| format!("^(?:{p})")).collect();
            Some(RegexSet::new(&anchored).map_err(|e| PolicyError::Pattern(e.to_string()))?)
        };
        let ignored_keyrings = parsed.ima.map(|s| s.ignored_keyrings.into_iter().collect()).unwrap_or_default();
        Ok(Policy { digests, excludes, keyrings, ignored_keyrings, accept_violations: false })
    }

    /// Allows `digest` for `path`.
    pub fn allow(&mut self, path: &str, digest: &[u8]) {
        self.digests.entry(path.to_string()).or_default().insert(digest.to_vec());
    }

    /// Number of paths listed.
    pub fn path_count(&self) -> usize {
        self.digests.len()
    }

    fn excluded(&self, path: &str) -> bool {
        self.excludes.as_ref().is_some_and(|set| set.is_match(path))
    }

    /// Checks one record, `index` being its absolute index.
    pub fn check(&self, index: u64, record: &Record) -> Result<(), PolicyFailure> {
        let path = String::from_utf8_lossy(record.event_name().unwrap_or_default()).into_owned();
        if record.is_violation() {
            if self.accept_violations || self.excluded(&path) {
                return Ok(());
            }
            return Err(PolicyFailure::Violation { index, path });
        }
        if path == "boot_aggregate" {
            // Checked by the quote's PCRs, not by file digests.
            return Ok(());
        }
        if let Some(buffer) = record.field(FieldId::Buf) {
            return self.check_buffer(index, record, &path, buffer);
        }
        if self.excluded(&path) {
            return Ok(());
        }
        let Some((algorithm, digest)) = file_digest(record) else {
            return Err(PolicyFailure::Unreadable { index, reason: format!("{path}: no file digest field") });
        };
        let shown = format!("{algorithm}:{}", imalog_core::hex::encode(&digest));
        match self.digests.get(&path) {
            None => Err(PolicyFailure::UnknownPath { index, path, digest: shown }),
            Some(allowed) if allowed.contains(&digest) => Ok(()),
            Some(_) => Err(PolicyFailure::DigestNotAllowed { index, path, digest: shown }),
        }
    }

    fn check_buffer(&self, index: u64, record: &Record, name: &str, _buffer: &[u8]) -> Result<(), PolicyFailure> {
        if self.ignored_keyrings.contains(name) || self.ignored_keyrings.contains("*") {
            return Ok(());
        }
        let Some(allowed) = self.keyrings.get(name) else {
            return Ok(());
        };
        let Some((algorithm, digest)) = file_digest(record) else {
            return Err(PolicyFailure::Unreadable { index, reason: format!("{name}: no buffer digest field") });
        };
        if allowed.contains(&digest) {
            Ok(())
        } else {
            Err(PolicyFailure::KeyNotAllowed {
                index,
                keyring: name.to_string(),
                digest: format!("{algorithm}:{}", imalog_core::hex::encode(&digest)),
            })
        }
    }
}

/// The measured digest of a record: `d-ng`, `d-ngv2` or legacy `d`.
fn file_digest(record: &Record) -> Option<(String, Vec<u8>)> {
    for (id, value) in record.field_values() {
        match (id, value) {
            (FieldId::DNg, Ok(FieldValue::DigestWithAlgo { algorithm, digest })) => {
                return Some((algorithm.to_string(), digest.to_vec()))
            }
            (FieldId::DNgV2, Ok(FieldValue::DigestWithTypeAndAlgo { algorithm, digest, .. })) => {
                return Some((algorithm.to_string(), digest.to_vec()))
            }
            (FieldId::D, Ok(FieldValue::Digest(digest))) => return Some(("sha1".to_string(), digest.to_vec())),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use imalog_core::{ListOptions, ListReader};

    fn record(line: &str) -> Record {
        ListReader::open(line.as_bytes(), ListOptions::default()).unwrap().next().unwrap().unwrap()
    }

    const LS: &str = "10 e3a7ef1a9b9e7c4c5b2ddc8a4ba2ef3d0c0ee9cc ima-ng sha256:0000000000000000000000000000000000000000000000000000000000000001 /usr/bin/ls\n";

    #[test]
    fn keylime_policy_allows_listed_digest() {
        let policy = Policy::from_keylime_json(&format!(
            r#"{{"meta":{{"version":1}},"digests":{{"/usr/bin/ls":["{}"]}},"excludes":["/tmp/.*"]}}"#,
            "00".repeat(31) + "01"
        ))
        .unwrap();
        assert_eq!(policy.check(5, &record(LS)), Ok(()));
        let other = LS.replace("0001 /usr", "0002 /usr");
        assert!(matches!(policy.check(6, &record(&other)), Err(PolicyFailure::DigestNotAllowed { index: 6, .. })));
        let unknown = LS.replace("/usr/bin/ls", "/usr/bin/cat");
        let failure = policy.check(7, &record(&unknown)).unwrap_err();
        assert_eq!(
            failure.to_string(),
            format!("record 7: /usr/bin/cat (sha256:{}01) is not in the runtime policy", "00".repeat(31))
        );
        let excluded = LS.replace("/usr/bin/ls", "/tmp/x");
        assert_eq!(policy.check(8, &record(&excluded)), Ok(()));
    }

    #[test]
    fn violation_fails_unless_accepted() {
        let line = format!("10 {} ima-ng sha256:{} /tmp/v\n", "00".repeat(20), "00".repeat(32));
        let mut policy = Policy::default();
        assert_eq!(policy.check(3, &record(&line)), Err(PolicyFailure::Violation { index: 3, path: "/tmp/v".into() }));
        policy.accept_violations = true;
        assert_eq!(policy.check(3, &record(&line)), Ok(()));
    }

    #[test]
    fn invalid_policy_is_an_error() {
        assert!(matches!(Policy::from_keylime_json("{"), Err(PolicyError::Json(_))));
        assert!(matches!(Policy::from_keylime_json(r#"{"excludes":["("]}"#), Err(PolicyError::Pattern(_))));
        assert!(matches!(Policy::from_keylime_json(r#"{"digests":{"/a":["zz"]}}"#), Err(PolicyError::Digest { .. })));
        // Hex, but no hash algorithm makes a 2-byte digest.
        match Policy::from_keylime_json(r#"{"digests":{"/a":["abcd"]}}"#) {
            Err(PolicyError::Digest { path, digest }) => assert_eq!((path.as_str(), digest.as_str()), ("/a", "abcd")),
            other => panic!("expected a digest error, got {other:?}"),
        }
    }
}
