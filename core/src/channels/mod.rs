//! Channels: clients subscribe to named channels and get their publications, publish to
//! them, and ask for presence and history, as the channel's namespace allows.
//!
//! - [`Channels`] is the server's side: its namespaces and limits, given to
//!   [`ServerBuilder::channels`](crate::ServerBuilder::channels), and the handle
//!   [`Server::channels`](crate::Server::channels) returns, to publish from the app's own
//!   code, list subscribers and presence, read history and unsubscribe a connection.
//! - [`ChannelCalls`] is the client's: [`subscribe`](ChannelCalls::subscribe) gives a
//!   [`Subscription`], a stream of [`Event`]s.
//! - A [`Namespace`] (a channel name's prefix, such as `chat:`) carries the options:
//!   history size and age, presence, join and leave events, who may subscribe and publish,
//!   the largest publication.
//! - In a channel with history every publication has a [`Position`]: an offset that grows
//!   by one per publication, and an epoch that changes when the history is lost. A client
//!   that subscribes again from its last position gets every publication it missed,
//!   exactly once and in order, or is told it could not (`recovered: false`); a
//!   [`ReconnectingClient`](crate::ReconnectingClient) does so by itself.
//!
//! On the wire these are calls and one-way sends under the reserved `$ch.` commands
//! ([`wire`]; `docs/PROTOCOL.md`, section 6c). A publication is encoded once for all its
//! subscribers; only sealing is per connection. A subscriber whose connection has more
//! than [`Limits::subscriber_queue`] bytes unsent when a publication comes is closed, so
//! that it never holds up the others.
//!
//! ```
//! use zserver_core::channels::{Channels, Namespace};
//!
//! let channels = Channels::new().namespace(Namespace::new("chat:").history(100, None).presence(true));
//! // zserver::server().channels(channels.clone()).bind(..), then from the app's code:
//! let position = channels.publish("chat:lobby", b"server says hi")?;
//! assert_eq!(position.map(|p| p.offset), Some(1));
//! # Ok::<_, zserver_core::Error>(())
//! ```

mod client;
mod history;
mod hub;
mod options;
mod store;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub(crate) use client::{client_router, new_shared, subscribe_on, Link, Owner, Resubscribe};
pub use client::{ChannelCalls, Event, Subscription};
pub use options::{Check, Identity, Limits, Namespace, DEFAULT_MAX_PUBLICATION};
pub use store::{HistoryStore, PresenceChange, Relay, Relayed, StoredHistory, StoredPublication};
pub use wire::{HistoryPage, Member, Position, Publication, Subscribed};

use crate::connection::Connection;
use crate::error::Error;
use crate::handler::Router;
use crate::rate::RateLimiter;
use crate::runtime::Runtime;
use hub::{Actor, Hub, IdentityCell};

/// How often a server drops expired history from channels nobody is subscribed to.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A server's channels: its namespaces and limits, and the handle to act on them from
/// the app's own code. Cheap to clone; every clone is the same set of channels.
#[derive(Clone)]
pub struct Channels {
    hub: Arc<Hub>,
    namespaces: Vec<Namespace>,
    limits: Limits,
    store: Option<Arc<dyn HistoryStore>>,
    relay: Option<Arc<dyn Relay>>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("namespaces", &self.namespaces)
            .field("channels", &self.hub.channel_count())
            .finish_non_exhaustive()
    }
}

impl Default for Channels {
    fn default() -> Self {
        Self::new()
    }
}

impl Channels {
    /// No namespaces (every channel refused) and default [`Limits`].
    pub fn new() -> Self {
        Self {
            hub: Arc::new(Hub::new(Vec::new(), Limits::default(), None, None)),
            namespaces: Vec::new(),
            limits: Limits::default(),
            store: None,
            relay: None,
        }
    }

    /// The same settings on a new, empty hub (what every builder method returns).
    fn rebuilt(self) -> Self {
        let hub = Hub::new(
            self.namespaces.clone(),
            self.limits.clone(),
            self.store.clone(),
            self.relay.clone(),
        );
        Self {
            hub: Arc::new(hub),
            ..self
        }
    }

    /// Adds a namespace (before the server starts: the result is a new, empty set of
    /// channels).
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespaces.retain(|n| n.prefix != namespace.prefix);
        self.namespaces.push(namespace);
        self.rebuilt()
    }

    /// Replaces the namespaces while serving (a configuration reload): every later
    /// subscribe, publish, presence and history call follows the new rules, a channel of a
    /// namespace no longer listed is refused. Channels open now keep their subscribers and
    /// history (a channel's history size is the one its namespace had when it was made).
    pub fn set_namespaces(&self, namespaces: Vec<Namespace>) {
        self.hub.set_namespaces(namespaces);
    }

    /// Sets the limits (before the server starts: the result is a new, empty set of
    /// channels).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.rebuilt()
    }

    /// Where [durable](Namespace::durable) namespaces keep their history (before the
    /// server starts: the result is a new, empty set of channels).
    pub fn store(mut self, store: Arc<dyn HistoryStore>) -> Self {
        self.store = Some(store);
        self.rebuilt()
    }

    /// Carries this server's publications to the other servers of a cluster (before the
    /// server starts: the result is a new, empty set of channels). Publications in
    /// namespaces without history, and in [durable](Namespace::durable) ones (whose offsets
    /// the shared store orders), are relayed; a namespace whose history is in memory stays
    /// on its server. The other servers apply them with [`apply_remote`](Self::apply_remote).
    pub fn relay(mut self, relay: Arc<dyn Relay>) -> Self {
        self.relay = Some(relay);
        self.rebuilt()
    }

    /// Applies a publication another server of the cluster made: delivered here to the
    /// channel's subscribers, in the channel's one order (a gap is filled from the shared
    /// store first). Blocking (it may read the store): call it from a blocking thread.
    pub fn apply_remote(&self, publication: &Relayed) -> Result<(), Error> {
        self.hub.apply_remote(publication)
    }

    /// Applies a presence change on another server of the cluster: this server's
    /// subscribers of the channel get the join or leave event if its namespace sends them.
    /// (Presence itself asks the [`Relay`]'s
    /// [`remote_members`](Relay::remote_members).)
    pub fn apply_remote_presence(&self, change: &PresenceChange) {
        self.hub.apply_remote_presence(change);
    }

    /// Ties these channels to a server's clock and frame limit, and starts sweeping expired
    /// history in the background.
    pub(crate) fn bind(&self, runtime: &Arc<dyn Runtime>, max_frame: usize) {
        self.hub.bind(runtime.clone(), max_frame);
        let weak = Arc::downgrade(&self.hub);
        let clock = runtime.clone();
        runtime.spawn(Box::pin(async move {
            loop {
                clock.sleep(SWEEP_EVERY).await;
                match weak.upgrade() {
                    Some(hub) => hub.sweep(),
                    None => break,
                }
            }
        }));
    }

    /// The user [`identify`](Self::identify) set for `conn`, if any (for rate limits).
    pub(crate) fn user_of(conn: &Connection) -> Option<String> {
        let identity = hub::identity_of(conn);
        (!identity.user.is_empty()).then(|| identity.user.clone())
    }

    /// Limits what clients publish by namespace (set by the server builder).
    pub(crate) fn bind_rate(&self, rate: RateLimiter) {
        self.hub.bind_rate(rate);
    }

    /// Sets who `conn` is for channels: the user that permission hooks see, presence
    /// shows and publications carry as their author, and the info presence shows. Call it
    /// from a login handler, before the client subscribes.
    pub fn identify(&self, conn: &Connection, user: impl Into<String>, info: impl Into<Bytes>) {
        conn.extension::<IdentityCell>().set(Identity {
            user: user.into(),
            info: info.into(),
        });
    }

    /// Publishes `data` to `channel` from the app's own code (past the permission hooks,
    /// within the namespace's size limit); the publication's position when the channel
    /// keeps history. In a [durable](Namespace::durable) namespace this waits for the
    /// store's write: call it from a blocking context there.
    pub fn publish(
        &self,
        channel: &str,
        data: impl AsRef<[u8]>,
    ) -> Result<Option<Position>, Error> {
        self.hub.publish(
            Actor::Server,
            channel,
            Bytes::copy_from_slice(data.as_ref()),
        )
    }

    /// Who is subscribed to `channel`, whatever its namespace's presence option.
    pub fn presence(&self, channel: &str) -> Result<Vec<Member>, Error> {
        self.hub.presence(Actor::Server, channel)
    }

    /// The connections subscribed to `channel`.
    pub fn subscribers(&self, channel: &str) -> Vec<Connection> {
        self.hub.subscribers(channel)
    }

    /// Up to `limit` publications of `channel` after `since` (the oldest kept when
    /// `None`).
    pub fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
    ) -> Result<HistoryPage, Error> {
        self.hub.history(Actor::Server, channel, since, limit)
    }

    /// Ends `conn`'s subscription to `channel` and tells the client why (it sees
    /// [`Event::Unsubscribed`]); whether it was subscribed.
    pub fn unsubscribe(&self, conn: &Connection, channel: &str, reason: &str) -> bool {
        self.hub.kick(conn, channel, reason)
    }

    /// Channels held now (with subscribers or with history).
    pub fn channel_count(&self) -> usize {
        self.hub.channel_count()
    }

    /// Bytes of history held over every channel.
    pub fn history_bytes(&self) -> usize {
        self.hub.history_bytes()
    }

    /// Counters: publications made, deliveries queued, and subscribers closed for being
    /// too slow, since the server started.
    pub fn counts(&self) -> ChannelCounts {
        use std::sync::atomic::Ordering::Relaxed;
        ChannelCounts {
            published: self.hub.published.load(Relaxed),
            delivered: self.hub.delivered.load(Relaxed),
            slow_closed: self.hub.slow_closed.load(Relaxed),
        }
    }

    /// The handlers of the `$ch.` commands, serving these channels. Each runs on the
    /// connection's task, except where the channel's namespace is durable: then on a
    /// blocking thread, as it may wait for the store.
    pub(crate) fn router(&self) -> Router {
        let hub = &self.hub;
        Router::new()
            .delayed(
                wire::SUBSCRIBE,
                serve(
                    hub,
                    |r: &wire::SubscribeRequest| &r.channel,
                    |hub, conn, r| encode(&hub.subscribe(conn, &r.channel, r.since)?),
                ),
            )
            .delayed(
                wire::UNSUBSCRIBE,
                inline(hub, |hub, conn, channel| {
                    hub.unsubscribe(conn, &channel);
                    Ok(Vec::new())
                }),
            )
            .delayed(
                wire::PUBLISH,
                serve_with(
                    hub,
                    publish_request,
                    |r| &r.0,
                    |hub, conn, (channel, data)| {
                        encode(&hub.publish(Actor::Client(conn), &channel, data)?)
                    },
                ),
            )
            .delayed(
                wire::PRESENCE,
                inline(hub, |hub, conn, channel| {
                    encode(&hub.presence(Actor::Client(conn), &channel)?)
                }),
            )
            .delayed(
                wire::HISTORY,
                serve(
                    hub,
                    |r: &wire::HistoryRequest| &r.channel,
                    |hub, conn, r| {
                        let limit = r.limit as usize;
                        encode(&hub.history(Actor::Client(conn), &r.channel, r.since, limit)?)
                    },
                ),
            )
    }
}

type Act<T> = fn(&Arc<Hub>, &Connection, T) -> Result<Vec<u8>, Error>;

/// A `$ch.` handler whose request is a postcard `T`; see [`serve_with`].
fn serve<T>(
    hub: &Arc<Hub>,
    channel: fn(&T) -> &String,
    act: Act<T>,
) -> impl Fn(crate::Context, Bytes, crate::Responder) + Send + Sync + 'static
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    serve_with(hub, |bytes| decode(bytes), channel, act)
}

/// A `$ch.` handler that never touches the store (unsubscribe, presence), so it runs on
/// the connection's task in the order the requests came, durable namespace or not: an
/// unsubscribe is done before a subscription to the same channel that follows it.
fn inline(
    hub: &Arc<Hub>,
    act: Act<String>,
) -> impl Fn(crate::Context, Bytes, crate::Responder) + Send + Sync + 'static {
    let hub = hub.clone();
    move |ctx, bytes, responder| match decode::<String>(&bytes) {
        Ok(channel) => responder.respond(act(&hub, ctx.connection(), channel)),
        Err(e) => responder.fail(e),
    }
}

/// A `$ch.pub` request read without decoding its data byte by byte: the channel, and the
/// data copied once into a buffer of its own (history keeps it; a slice of the read
/// buffer would pin the whole buffer).
fn publish_request(bytes: &Bytes) -> Result<(String, Bytes), Error> {
    let request: wire::PublishRef<'_> = decode(bytes)?;
    Ok((
        request.channel.to_owned(),
        Bytes::copy_from_slice(request.data),
    ))
}

/// A `$ch.` handler: decodes the request, then acts at once, or on a blocking thread when
/// the channel is durable, and answers.
fn serve_with<T>(
    hub: &Arc<Hub>,
    decode: fn(&Bytes) -> Result<T, Error>,
    channel: fn(&T) -> &String,
    act: Act<T>,
) -> impl Fn(crate::Context, Bytes, crate::Responder) + Send + Sync + 'static
where
    T: Send + 'static,
{
    let hub = hub.clone();
    move |ctx, bytes, responder| {
        let request: T = match decode(&bytes) {
            Ok(request) => request,
            Err(e) => return responder.fail(e),
        };
        let conn = ctx.connection().clone();
        if !hub.is_durable(channel(&request)) {
            let answer = act(&hub, &conn, request);
            return answer_then_close(&conn, responder, answer);
        }
        let hub = hub.clone();
        let runtime = conn.runtime().clone();
        runtime.spawn(Box::pin(async move {
            let answer = blocking::unblock({
                let conn = conn.clone();
                move || act(&hub, &conn, request)
            })
            .await;
            answer_then_close(&conn, responder, answer);
        }));
    }
}

/// Answers, then closes `conn` if the answer was a rate limit's refusal that disconnects
/// it (so that the client reads why first).
fn answer_then_close(
    conn: &Connection,
    responder: crate::Responder,
    answer: Result<Vec<u8>, Error>,
) {
    let refused = matches!(answer, Err(Error::RateLimited(_)));
    responder.respond(answer);
    if refused {
        crate::rate::close_if_struck_out(conn);
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(postcard::to_allocvec(value)?)
}

/// What [`Channels::counts`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelCounts {
    /// Publications made.
    pub published: u64,
    /// Deliveries queued (publications × subscribers).
    pub delivered: u64,
    /// Subscribers closed for having too much unsent.
    pub slow_closed: u64,
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::BadRequest(e.to_string()))
}
