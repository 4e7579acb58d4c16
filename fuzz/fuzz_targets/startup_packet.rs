#![no_main]
//! See `pgvigil::fuzzing::startup_packets`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvigil::fuzzing::startup_packets(data));
