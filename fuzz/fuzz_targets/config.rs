#![no_main]
//! See `pgvigil::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvigil::fuzzing::config(data));
