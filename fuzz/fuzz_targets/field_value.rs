#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imalog_core::fuzzing::field_value(data));
