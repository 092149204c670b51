//! The fault harness (issue 28): zserver over real packets on a link that misbehaves.
//!
//! The server runs in a network namespace of its own, the client in another, and the only
//! way between them is a pair of TUN devices and a forwarder in this process (a userspace
//! netem, [`netem`]), which can delay packets, lose them at random, or cut the link
//! silently. No `tc netem`, no ping, no iptables: only root, `ip` and `/dev/net/tun`.
//! Where those are missing, every case prints why it is skipped and passes.
//!
//! ```text
//! sudo cargo test --test faults -- --nocapture          # every scenario, every back end
//! cargo test --test faults cut::                        # scenario 2: a cut link
//! cargo test --test faults lossy:: -- --nocapture       # scenario 3: a bad network, figures
//! ```
//!
//! Each case runs once per back end compiled in (`<module>::<case>::<back end>::run`);
//! `cargo test --workspace --test faults` compiles in all three.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

#[path = "faults/netem.rs"]
mod netem;

#[path = "faults/cut.rs"]
mod cut;

#[path = "faults/lossy.rs"]
mod lossy;
