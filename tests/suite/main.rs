//! The facade's behavioural suite, in one test binary (built and linked once, instead of
//! once per file): each module is one area, each case run on every back end compiled in,
//! over TCP or, with `ZSERVER_TEST_TRANSPORT=ws`, WebSocket.
//!
//! ```text
//! cargo test --test suite                     # every area, every back end
//! cargo test --test suite engine:: streams::  # some areas
//! cargo test --test suite ::smol::            # one back end
//! ```
//!
//! `tests/leaks.rs`, `tests/memory.rs` and `tests/backend.rs` stay binaries of their own:
//! they measure the whole process or run it again.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod channels;
mod compression;
mod engine;
mod hooks;
mod mixed;
mod proxy;
mod rate;
mod reconnect;
mod secure;
mod services;
mod stable;
mod streams;
mod tls;
mod wire;
mod ws;
