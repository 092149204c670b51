#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::dispatcher`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::dispatcher(data));
