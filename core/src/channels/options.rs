//! What a server lets clients do with channels: namespaces with their options, the
//! identity the app gives a connection, and limits against hostile peers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::connection::Connection;
use crate::error::Error;

/// Who a connection is, for channels: the user (checked by permission hooks, shown in
/// presence and as the author of what it publishes) and info the app attaches (shown in
/// presence). Set it with [`Channels::identify`](super::Channels::identify), typically from
/// a login handler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user's name (empty: not identified).
    pub user: String,
    /// What presence shows beside the user.
    pub info: Bytes,
}

/// A permission check: sees the connection, its identity and the channel's full name;
/// an error (normally [`Error::Denied`]) refuses. It runs synchronously, on the
/// connection's task: keep it quick (look the answer up, do not compute it).
pub type Check = Arc<dyn Fn(&Connection, &Identity, &str) -> Result<(), Error> + Send + Sync>;

/// The options of the channels whose names start with a prefix (such as `chat:` in
/// `chat:lobby`). A channel takes the namespace with the longest matching prefix; a
/// channel that matches none is refused. The prefix `""` matches every channel.
///
/// ```
/// use std::time::Duration;
/// use zserver_core::channels::{Channels, Namespace};
/// use zserver_core::Error;
///
/// let channels = Channels::new()
///     .namespace(
///         Namespace::new("chat:")
///             .history(100, Some(Duration::from_secs(600)))
///             .presence(true)
///             .join_leave(true),
///     )
///     .namespace(Namespace::new("news:").client_publish(false))
///     .namespace(Namespace::new("user:").subscribe_if(|_conn, who, channel| {
///         // Only `user:NAME` for NAME itself.
///         if channel == format!("user:{}", who.user) { Ok(()) } else { Err(Error::Denied(channel.into())) }
///     }));
/// # let _ = channels;
/// ```
#[derive(Clone)]
pub struct Namespace {
    pub(crate) prefix: String,
    pub(crate) history_size: usize,
    pub(crate) history_ttl: Option<Duration>,
    pub(crate) durable: bool,
    pub(crate) presence: bool,
    pub(crate) join_leave: bool,
    pub(crate) client_publish: bool,
    pub(crate) max_publication: usize,
    pub(crate) subscribe_check: Option<Check>,
    pub(crate) publish_check: Option<Check>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("prefix", &self.prefix)
            .field("history_size", &self.history_size)
            .field("history_ttl", &self.history_ttl)
            .field("durable", &self.durable)
            .field("presence", &self.presence)
            .field("join_leave", &self.join_leave)
            .field("client_publish", &self.client_publish)
            .field("max_publication", &self.max_publication)
            .finish_non_exhaustive()
    }
}

/// Largest publication by default: 64 KiB.
pub const DEFAULT_MAX_PUBLICATION: usize = 64 * 1024;

impl Namespace {
    /// The channels whose names start with `prefix`: no history, no presence, no join and
    /// leave events, anyone may subscribe and publish, publications up to 64 KiB.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            history_size: 0,
            history_ttl: None,
            durable: false,
            presence: false,
            join_leave: false,
            client_publish: true,
            max_publication: DEFAULT_MAX_PUBLICATION,
            subscribe_check: None,
            publish_check: None,
        }
    }

    /// Keeps the last `size` publications of each channel, each for at most `ttl` (`None`:
    /// no age limit), with positions, so that subscribers recover what they missed.
    /// `size` 0 keeps no history (and gives no positions).
    pub fn history(mut self, size: usize, ttl: Option<Duration>) -> Self {
        self.history_size = size;
        self.history_ttl = ttl;
        self
    }

    /// Keeps the history in the server's [`HistoryStore`](super::HistoryStore) too
    /// ([`Channels::store`](super::Channels::store)), so that positions and recovery survive
    /// a restart: each publication is stored before it is delivered or acknowledged. Only
    /// with [`history`](Self::history); without a store it is kept in memory alone.
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// Whether subscribers may ask who else is subscribed.
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }

    /// Whether subscribers are told when others subscribe and unsubscribe.
    pub fn join_leave(mut self, on: bool) -> Self {
        self.join_leave = on;
        self
    }

    /// Whether clients may publish (the server's own code always may).
    pub fn client_publish(mut self, on: bool) -> Self {
        self.client_publish = on;
        self
    }

    /// The largest publication, in bytes; larger ones are refused with [`Error::Limit`].
    pub fn max_publication(mut self, bytes: usize) -> Self {
        self.max_publication = bytes;
        self
    }

    /// Who may subscribe: `check` runs before every subscription.
    pub fn subscribe_if<F>(mut self, check: F) -> Self
    where
        F: Fn(&Connection, &Identity, &str) -> Result<(), Error> + Send + Sync + 'static,
    {
        self.subscribe_check = Some(Arc::new(check));
        self
    }

    /// Who may publish from a client: `check` runs before every client publication.
    pub fn publish_if<F>(mut self, check: F) -> Self
    where
        F: Fn(&Connection, &Identity, &str) -> Result<(), Error> + Send + Sync + 'static,
    {
        self.publish_check = Some(Arc::new(check));
        self
    }

    /// Whether history is kept.
    pub(crate) fn keeps_history(&self) -> bool {
        self.history_size > 0
    }
}

/// Bounds on what peers may make the server hold.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Channels one connection may be subscribed to at once.
    pub channels_per_connection: usize,
    /// Subscribers one channel may have at once, on this server.
    pub subscribers_per_channel: usize,
    /// Channels held at once (with subscribers, or with history kept).
    pub channels: usize,
    /// Bytes of history held over every channel; past it, the oldest publications of the
    /// channel being published to are dropped first (subscribers from before them then
    /// recover with `recovered: false`).
    pub history_bytes: usize,
    /// A subscriber with this many bytes queued and unsent when a publication comes is
    /// too slow: its connection is closed, and the others are not held up.
    pub subscriber_queue: usize,
    /// Longest channel name, in bytes.
    pub max_name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            channels_per_connection: 256,
            subscribers_per_channel: 1_000_000,
            channels: 1_000_000,
            history_bytes: 256 * 1024 * 1024,
            subscriber_queue: 4 * 1024 * 1024,
            max_name: 255,
        }
    }
}
