#![no_main]
//! See `pgvigil::fuzzing::classify`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvigil::fuzzing::classify(data));
