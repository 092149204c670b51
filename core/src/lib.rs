//! zserver-core: the runtime-agnostic heart of zserver.
//!
//! - [`transport`]: the `Transport`, `ServerIo` and `ClientIo` traits a back end implements;
//! - [`runtime`]: the small spawn/sleep interface a back end provides;
//! - [`frame`]: the wire format (sans-IO), documented byte for byte in `docs/PROTOCOL.md`;
//! - [`request`]: the table of calls awaiting replies (sans-IO, time passed in);
//! - [`secure`]: the Noise XX handshake and the AES-256-GCM record layer with rekeying;
//! - [`service`]: typed services, remote objects and discovery (DataSnap's server classes);
//! - [`compression`]: per-frame payload compression codecs negotiated in the handshake, and
//!   the [`CompressionCodec`] trait for your own;
//! - [`stable`]: stable sessions, which survive dropped links without loss or duplicates;
//! - [`stream`]: big streams tied to a call (uploads and downloads) with flow control,
//!   progress, resume and an end-to-end hash;
//! - the command engine: [`Router`] and handlers, [`Connection`], [`Server`], [`Client`],
//!   [`BlockingClient`], [`Stats`];
//! - [`channels`]: subscribe, publish, presence and history, with recovery from a position;
//! - [`hooks`]: hooks around every command, to observe or veto it by name and connection;
//! - [`rate`]: rate limits per connection and per user on calls and publications;
//! - [`metrics`]: call counts, errors and a duration histogram fed by such a hook;
//! - [`ws`] (feature `ws`): the WebSocket transport, for browsers;
//! - [`tls`] (feature `tls`): TLS on WebSocket listeners and clients (`wss://`),
//!   with certificates reloadable while serving;
//! - [`reconnect`]: [`ReconnectingClient`], a client that reconnects with back-off and
//!   re-runs its login hook.
//!
//! Applications normally use the `zserver` facade crate, which picks a back end by feature.
//!
//! # Ordering guarantees
//! - One-way sends (and calls) made one after another from one task leave in that order
//!   and their handlers start in that order on the peer.
//! - Handlers run concurrently by default: a slow call does not hold up later ones, and
//!   replies may arrive out of order (they are matched by request id).
//! - With [`Config::sequential`], each handler finishes before the next one starts.
#![forbid(unsafe_code)]

mod blocking;
mod calls;
pub mod channels;
mod client;
pub mod compression;
mod config;
mod connection;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
pub mod hooks;
mod link;
pub mod metrics;
pub(crate) mod proto;
pub mod proxy;
pub mod rate;
mod read_buf;
pub mod reconnect;
pub mod runtime;
pub mod secure;
mod sequential;
mod server;
pub mod service;
mod signal;
pub mod stable;
mod stats;
pub mod stream;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
#[cfg(feature = "ws")]
pub mod ws;

#[doc(hidden)]
pub mod internal;
pub(crate) use internal::{frame, request};

/// The traits a caller needs in scope for calls, sends, streams and channels on a
/// [`Connection`], [`Client`] or [`ReconnectingClient`]: `use zserver::prelude::*;`.
///
/// ```
/// use zserver_core::prelude::*;
/// fn takes_calls(_: &impl Calls) {}
/// fn takes_channels(_: &impl ChannelCalls) {}
/// ```
pub mod prelude {
    pub use crate::channels::ChannelCalls;
    pub use crate::Calls;
}

pub use blocking::BlockingClient;
pub use bytes::Bytes;
pub use calls::{Calls, RequestBuilder};
pub use client::{Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT};
#[cfg(feature = "zstd")]
pub use compression::Zstd;
pub use compression::{Compression, CompressionCodec, Lz4};
pub use config::Config;
pub use connection::Connection;
pub use error::Error;
pub use frame::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
pub use handler::{Context, Responder, Router};
pub use hooks::{CommandInfo, CommandKind};
pub use reconnect::{Backoff, LinkState, ReconnectingBuilder, ReconnectingClient};
pub use runtime::Runtime;
pub use secure::{fingerprint, parse_fingerprint, Encryption, Keypair, Provider, RekeyPolicy};
pub use server::{Server, ServerBuilder};
pub use service::{Class, Method, ObjectId, RemoteObject, Service, Services};
pub use signal::ctrl_c;
pub use stable::StableSession;
pub use stats::{ServerStats, Stats};
pub use stream::{DownloadRequest, FileDownload, Incoming, Outgoing, Progress};
pub use transport::{ClientIo, Listener, ServerIo, Transport, Upgrade, Upgraded};
#[cfg(feature = "ws")]
pub use ws::{WsOptions, WsTransport};
