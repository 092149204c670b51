#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::proto`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::proto(data));
