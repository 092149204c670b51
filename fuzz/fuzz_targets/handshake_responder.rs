#![no_main]
//! Fuzz target: see `zserver_core::fuzzing::handshake_responder`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zserver_core::fuzzing::handshake_responder(data));
