#![no_main]
//! See `pgvigil::fuzzing::server_messages`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgvigil::fuzzing::server_messages(data));
