#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imalog_core::fuzzing::ascii_list(data));
