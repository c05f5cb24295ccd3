#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| samvault::fuzzing::id_token(data));
