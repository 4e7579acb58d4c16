#![no_main]
//! See `pgvigil::fuzzing::client_messages`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvigil::fuzzing::client_messages(data));
