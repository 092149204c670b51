//! The protocol's own state, below the connection and everything that runs on it: no
//! I/O, no clock, no tasks (in the manner of quinn-proto).
//!
//! [`Proto`] is one connection after its handshake. Its driver feeds it the bytes it
//! reads ([`Proto::handle_input`]) and the time when its one timer fires
//! ([`Proto::handle_timeout`], re-armed to [`Proto::poll_timeout`]), acts on its events
//! ([`Proto::poll_event`]) and writes what it hands out ([`Proto::poll_transmit`]).
//! Handles queue frames and start calls on it under the connection's lock.
//!
//! Its parts: `state` (framing, records, requests, timers, close), `streams` (the streams
//! open on the connection and their credit) with `stream_frames` (their frames in and
//! out), `pack` (compression of what is sent), `transmit` (what the driver writes).

mod command;
mod pack;
mod state;
mod stream_frames;
pub(crate) mod streams;
#[cfg(test)]
mod tests;
mod transmit;

pub use command::CommandKind;
pub(crate) use pack::{Packed, Packer};
pub(crate) use state::{Event, Keys, Limits, Proto};
pub(crate) use stream_frames::stream_header;
pub(crate) use transmit::Transmit;
