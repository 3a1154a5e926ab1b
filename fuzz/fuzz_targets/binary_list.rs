#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imalog_core::fuzzing::binary_list(data));
