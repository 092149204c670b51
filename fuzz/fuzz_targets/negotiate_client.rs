#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::negotiate_client`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::negotiate_client(data));
