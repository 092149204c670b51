//! Per-connection settings, shared by servers and clients.

use std::time::Duration;

use crate::compression::Compression;
use crate::frame::DEFAULT_MAX_FRAME;
use crate::proxy::TrustedProxies;
use crate::secure::Encryption;
use crate::stable::StableSession;

/// How a connection behaves. Start from [`Config::default`] and change what you need.
///
/// ```
/// let mut config = zserver_core::Config::default();
/// config.max_frame = 1 << 20;
/// config.sequential = true;
/// ```
///
/// For a link that is already trusted, encryption can be turned off explicitly:
/// ```
/// let config = zserver_core::Config::plain_trusted_link();
/// assert_eq!(config.encryption, zserver_core::Encryption::PlainTrustedLink);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Encryption: a Noise handshake and AES-256-GCM records by default. Both ends must agree.
    pub encryption: Encryption,
    /// Largest frame (header + payload) accepted from the peer or sent to it, in bytes.
    /// A peer announcing a larger one is disconnected before anything is allocated.
    pub max_frame: usize,
    /// Bytes queued for sending above which calls and sends wait (back-pressure).
    pub max_pending_write: usize,
    /// Requests from the peer handled at once on one connection; past this the connection
    /// stops reading until one finishes. Replies the peer leaves unread are bounded too: the
    /// connection stops reading while more than twice `max_pending_write` bytes are queued.
    pub max_handlers_in_flight: usize,
    /// Run this side's handlers one at a time, in arrival order, each finishing before the
    /// next starts. Off by default: handlers run concurrently (started in arrival order).
    pub sequential: bool,
    /// Bytes of one incoming stream buffered before its sender must wait for the consumer
    /// (the flow-control window; at least [`INITIAL_WINDOW`](crate::stream::INITIAL_WINDOW)).
    pub stream_window: usize,
    /// Streams the peer may have open on one connection at once (uploads it sends plus
    /// downloads it asks for); a stream call past this is refused with an error. An upload
    /// nobody reads costs its receiver the initial window (256 KiB) until read, so this
    /// also bounds that memory per connection (32 × 256 KiB = 8 MiB by default).
    pub max_streams: usize,
    /// After this long without hearing from the peer, send it a `Ping` (its `Pong` proves
    /// it alive). `None` turns heartbeats and the idle time-out off.
    pub heartbeat: Option<Duration>,
    /// Close a connection that has heard nothing from its peer (not even a `Pong` to a
    /// heartbeat) for this long (DataSnap's idle disconnect), with [`Error::IdleTimeout`](crate::Error::IdleTimeout).
    pub idle_timeout: Duration,
    /// Connections a server holds at once, handshaking ones included; more are closed as
    /// soon as they are accepted (counted in `ServerStats::connections_refused`).
    pub max_connections: usize,
    /// Connections a server holds at once from one IP address (slowloris and floods from
    /// one host); more are closed as soon as they are accepted. Behind a trusted proxy
    /// ([`trusted_proxies`](Self::trusted_proxies)) the address is the client's as the
    /// proxy announces it, and such a connection is counted once it is known (after the
    /// PROXY header or the WebSocket upgrade).
    pub max_connections_per_ip: usize,
    /// The proxies (TLS terminators, load balancers) whose word on the client's address
    /// the server believes, and whether they send a PROXY header ([`crate::proxy`]).
    /// None by default: every peer is taken for the client.
    pub trusted_proxies: TrustedProxies,
    /// How long a new connection may take to send its preamble before it is dropped.
    pub handshake_timeout: Duration,
    /// How long [`Server::shutdown`](crate::Server::shutdown) waits for calls in flight.
    pub shutdown_grace: Duration,
    /// Stable sessions: a dropped link is re-established within an offline time-out and
    /// nothing is lost or repeated ([`crate::stable`]). Off by default; both ends must agree.
    pub stable: Option<StableSession>,
    /// Payload compression ([`crate::compression`]): the codecs this side offers, most preferred
    /// first, and the payload size from which it compresses. Off by default; a codec is
    /// used only if both ends offer it (the client's preference wins).
    pub compression: Compression,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            encryption: Encryption::default(),
            max_frame: DEFAULT_MAX_FRAME,
            max_pending_write: 8 * 1024 * 1024,
            max_handlers_in_flight: 1024,
            sequential: false,
            stream_window: 1024 * 1024,
            max_connections: 1_000_000,
            max_connections_per_ip: 10_000,
            trusted_proxies: TrustedProxies::default(),
            heartbeat: Some(Duration::from_secs(30)),
            idle_timeout: Duration::from_secs(90),
            max_streams: 32,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            stable: None,
            compression: Compression::off(),
        }
    }
}

impl Config {
    /// Defaults, but with encryption off: only for links that are already trusted.
    pub fn plain_trusted_link() -> Self {
        Self {
            encryption: Encryption::PlainTrustedLink,
            ..Self::default()
        }
    }
}
