//! Fuzz target: `tandem::fuzzing::push_body` (the invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzzing::push_body(data));
