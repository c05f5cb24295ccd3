#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| samvault::fuzzing::token_request(data));
