//! Measuring real files and the boot aggregate: template data as the kernel
//! builds it, from file content, xattrs and inode metadata.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use imalog_core::{Bank, Digest, FieldId, FieldValue, HashAlgorithm, Template};
use imalog_kernel::measure::FileOutcome;
use imalog_kernel::{Appended, Ima, KernelConfig};
use imalog_tpm::{SoftTpm, Tpm};

fn booted_tpm() -> SoftTpm {
    let mut tpm = SoftTpm::new(&[Bank::SHA1, Bank::SHA256]).unwrap();
    tpm.simulate_boot(b"measure tests");
    tpm
}

fn kernel(config: KernelConfig) -> Ima {
    Ima::cold_boot(config, Some(Box::new(booted_tpm()))).unwrap()
}

fn last_record(ima: &Ima) -> imalog_core::Record {
    ima.current_entries().last().unwrap().entry.record.clone()
}

/// Whether this file system lets us set `security.*` xattrs (root on ext4,
/// tmpfs and most others). The project's test script runs as root and sets
/// IMALOG_REQUIRE_ORACLES=1, and then a failure here fails the test.
fn can_set_security_xattrs(path: &std::path::Path) -> bool {
    let possible = xattr_set(path, "security.imalog-probe", b"1").is_ok();
    if !possible && std::env::var("IMALOG_REQUIRE_ORACLES").as_deref() == Ok("1") {
        panic!("cannot set security.* xattrs on {}; the test script runs as root and needs them", path.display());
    }
    possible
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg("import os,sys; os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))")
        .arg(path)
        .arg(name)
        .arg(imalog_core::hex::encode(value))
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("setxattr failed"))
    }
}

#[test]
fn boot_aggregate_hashes_pcrs_0_to_9_of_ima_hash_bank() {
    let ima = kernel(KernelConfig::default());
    let record = last_record(&ima);
    assert_eq!(record.event_name(), Some(&b"boot_aggregate"[..]));
    let mut tpm = booted_tpm();
    let pcrs: Vec<Digest> = (0..10).map(|pcr| tpm.read(&Bank::SHA256, pcr).unwrap()).collect();
    let parts: Vec<&[u8]> = pcrs.iter().map(|d| d.as_bytes()).collect();
    let expected = HashAlgorithm::Sha256.digest_parts(&parts);
    let mut field = b"sha256:\0".to_vec();
    field.extend_from_slice(expected.as_bytes());
    assert_eq!(record.field(FieldId::DNg), Some(field.as_slice()));
}

#[test]
fn boot_aggregate_sha1_bank_covers_pcrs_0_to_7() {
    let config = KernelConfig { ima_hash: HashAlgorithm::Sha1, ..KernelConfig::default() };
    let ima = kernel(config);
    let record = last_record(&ima);
    let mut tpm = booted_tpm();
    let pcrs: Vec<Digest> = (0..8).map(|pcr| tpm.read(&Bank::SHA1, pcr).unwrap()).collect();
    let parts: Vec<&[u8]> = pcrs.iter().map(|d| d.as_bytes()).collect();
    let mut field = b"sha1:\0".to_vec();
    field.extend_from_slice(HashAlgorithm::Sha1.digest_parts(&parts).as_bytes());
    assert_eq!(record.field(FieldId::DNg), Some(field.as_slice()));
}

#[test]
fn boot_aggregate_without_tpm_is_zero() {
    let ima = Ima::cold_boot(KernelConfig::default(), None).unwrap();
    let record = last_record(&ima);
    let mut field = b"sha256:\0".to_vec();
    field.extend_from_slice(&[0; 32]);
    assert_eq!(record.field(FieldId::DNg), Some(field.as_slice()));
    // With no TPM only the SHA-1 files exist.
    let names: Vec<String> = ima.list_files().into_iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "ascii_runtime_measurements_sha1",
            "binary_runtime_measurements_sha1",
            "ascii_runtime_measurements_sha1_staged",
            "binary_runtime_measurements_sha1_staged"
        ]
    );
}

#[test]
fn boot_aggregate_legacy_template_is_zero_for_sha256_bank() {
    let config = KernelConfig { template: Template::builtin("ima").unwrap(), ..KernelConfig::default() };
    let ima = kernel(config);
    let record = last_record(&ima);
    assert_eq!(record.field(FieldId::D), Some(&[0u8; 20][..]));
    assert!(!record.is_violation(), "a zero file digest is not a violation");
}

#[test]
fn measure_file_hashes_content_and_reads_metadata() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("my tool");
    fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
    let template = Arc::new(Template::custom("d-ng|n-ng|iuid|igid|imode").unwrap());
    let ima = kernel(KernelConfig { template, ..KernelConfig::default() });
    assert_eq!(ima.measure_path(&path, None).unwrap(), FileOutcome::Measured(Appended::Yes));

    let record = last_record(&ima);
    let metadata = fs::metadata(&path).unwrap();
    let values: Vec<FieldValue> = record.field_values().map(|(_, v)| v.unwrap()).collect();
    assert_eq!(
        values[0],
        FieldValue::DigestWithAlgo {
            algorithm: "sha256",
            digest: HashAlgorithm::Sha256.digest(b"#!/bin/sh\necho hi\n").as_bytes()
        }
    );
    let expected_name = format!("{}", path.display()).replace(' ', "_");
    assert_eq!(values[1], FieldValue::Name(expected_name.as_bytes()));
    assert_eq!(values[2], FieldValue::Uint(metadata.uid() as u64));
    assert_eq!(values[3], FieldValue::Uint(metadata.gid() as u64));
    assert_eq!(values[4], FieldValue::Uint((metadata.mode() & 0xffff) as u64));
}

#[test]
fn measure_same_file_twice_is_duplicate() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("f");
    fs::write(&path, b"x").unwrap();
    let ima = kernel(KernelConfig::default());
    assert_eq!(ima.measure_path(&path, None).unwrap(), FileOutcome::Measured(Appended::Yes));
    assert_eq!(ima.measure_path(&path, None).unwrap(), FileOutcome::Duplicate);
    // The same file into another PCR is not a duplicate.
    assert_eq!(ima.measure_path(&path, Some(11)).unwrap(), FileOutcome::Measured(Appended::Yes));
    fs::write(&path, b"y").unwrap();
    assert_eq!(ima.measure_path(&path, None).unwrap(), FileOutcome::Measured(Appended::Yes));
    assert_eq!(ima.audit_counts().hash_exists, 1);
}

#[test]
fn measure_file_with_signature_xattr() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("signed");
    fs::write(&path, b"signed content").unwrap();
    if !can_set_security_xattrs(&path) {
        eprintln!("skipping: cannot set security.* xattrs here (needs root on a file system with xattrs)");
        return;
    }
    let signature = [3u8, 2, 4, 0xde, 0xad, 0xbe, 0xef, 0, 3, 1, 2, 3];
    xattr_set(&path, "security.ima", &signature).unwrap();
    let ima = kernel(KernelConfig { template: Template::builtin("ima-sig").unwrap(), ..KernelConfig::default() });
    ima.measure_path(&path, None).unwrap();
    let record = last_record(&ima);
    assert_eq!(record.field(FieldId::Sig), Some(&signature[..]));

    // A hash (not a signature) in security.ima leaves the field empty.
    let plain = folder.path().join("hashed");
    fs::write(&plain, b"hashed content").unwrap();
    xattr_set(&plain, "security.ima", &[4, 4, 1, 2, 3]).unwrap();
    ima.measure_path(&plain, None).unwrap();
    assert_eq!(last_record(&ima).field(FieldId::Sig), Some(&b""[..]));
}

#[test]
fn measure_file_evm_fields() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("evm");
    fs::write(&path, b"evm content").unwrap();
    if !can_set_security_xattrs(&path) {
        eprintln!("skipping: cannot set security.* xattrs here (needs root on a file system with xattrs)");
        return;
    }
    xattr_set(&path, "security.ima", &[3, 2, 4, 1, 2, 3, 4, 0, 0]).unwrap();
    xattr_set(&path, "security.evm", &[5, 2, 4, 9, 9, 9, 9, 0, 0]).unwrap();
    let ima = kernel(KernelConfig { template: Template::builtin("evm-sig").unwrap(), ..KernelConfig::default() });
    ima.measure_path(&path, None).unwrap();
    let record = last_record(&ima);
    assert_eq!(record.field(FieldId::EvmSig), Some(&[5u8, 2, 4, 9, 9, 9, 9, 0, 0][..]));
    // security.selinux may exist on SELinux hosts; security.ima is always
    // listed after it, in EVM's order.
    let names = record.field(FieldId::XattrNames).unwrap();
    assert!(names.ends_with(b"security.ima\0"), "{}", String::from_utf8_lossy(names));
    let lengths = record.field(FieldId::XattrLengths).unwrap();
    assert_eq!(&lengths[lengths.len() - 4..], &9u32.to_le_bytes());
}

#[test]
fn measure_directory_is_an_error() {
    let folder = tempfile::tempdir().unwrap();
    let ima = kernel(KernelConfig::default());
    let error = ima.measure_path(folder.path(), None).unwrap_err();
    assert!(error.to_string().contains("not a regular file"), "{error}");
}

#[test]
fn measure_fifo_is_refused_without_blocking() {
    let folder = tempfile::tempdir().unwrap();
    let fifo = folder.path().join("fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let ima = kernel(KernelConfig::default());
    // Without a writer, a blocking open of the FIFO would never return.
    let error = ima.measure_path(&fifo, None).unwrap_err();
    assert_eq!(error.to_string(), format!("{}: not a regular file", fifo.display()));
}

#[test]
fn measure_pcr_beyond_63_is_einval() {
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("file");
    fs::write(&file, b"content").unwrap();
    let ima = kernel(KernelConfig::default());
    let before = ima.counters();
    let error = ima.measure_path(&file, Some(64)).unwrap_err();
    assert_eq!(error.to_string(), format!("{}: PCR 64 is out of range 0 to 63", file.display()));
    assert_eq!(ima.measure_buffer(b"kernel_version", b"7.2", Some(u32::MAX)), Err(imalog_kernel::Errno::Einval));
    assert_eq!(ima.counters(), before);
    assert!(matches!(ima.measure_path(&file, Some(23)), Ok(FileOutcome::Measured(Appended::Yes))));
}

#[test]
fn measure_buffer_beyond_template_data_limit_is_einval() {
    let ima = kernel(KernelConfig::default());
    let before = ima.counters();
    let limit = imalog_core::binary::MAX_TEMPLATE_DATA_LEN as usize;
    assert_eq!(ima.measure_buffer(b"big", &vec![0u8; limit], None), Err(imalog_kernel::Errno::Einval));
    assert_eq!(ima.counters(), before);
    assert_eq!(ima.measure_buffer(b"small", &[0u8; 1024], None), Ok(Appended::Yes));
}
