//! Fuzz target: `tandem::fuzzing::event` (the invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzzing::event(data));
