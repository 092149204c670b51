#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::negotiate_server`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::negotiate_server(data));
