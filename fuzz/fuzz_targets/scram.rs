#![no_main]
//! See `pgvigil::fuzzing::scram`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvigil::fuzzing::scram(data));
