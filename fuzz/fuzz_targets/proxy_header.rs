#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::proxy_header`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::proxy_header(data));
