#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::stable_link`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::stable_link(data));
