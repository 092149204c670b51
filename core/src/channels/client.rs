//! The client's side of channels: [`ChannelCalls`] (subscribe, publish, presence,
//! history), [`Subscription`] streams, and the handlers that route the server's
//! deliveries to them, exactly once and in order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_lite::Stream;

use super::wire::{
    self, Delivery, HistoryPage, HistoryRequest, Member, Position, PresenceEvent, Publication,
    SubscribeRequest, Subscribed, Unsubscribed,
};
use crate::calls::Calls;
use crate::connection::Connection;
use crate::error::Error;
use crate::handler::Router;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A publication, in the channel's order (each once).
    Publication(Publication),
    /// Someone subscribed (namespaces with join and leave events).
    Join(Member),
    /// Someone unsubscribed, or their connection closed.
    Leave(Member),
    /// A [`ReconnectingClient`](crate::ReconnectingClient) subscribed again on a new
    /// connection. With `recovered`, every publication missed while away follows, before
    /// any newer one; without it (the gap was older than the history, or the history was
    /// lost), the app should reload the channel's state.
    Resubscribed {
        /// Whether nothing was lost.
        recovered: bool,
        /// The channel's position on resubscribing.
        position: Option<Position>,
    },
    /// The server ended the subscription; this is the last event.
    Unsubscribed(String),
}

/// One subscription's state, shared by its stream and every connection it was made on.
pub(crate) struct SubShared {
    channel: String,
    tx: async_channel::Sender<Event>,
    /// The position of the last publication delivered (or of the subscription's start).
    last: Mutex<Option<Position>>,
    /// Unsubscribed: not to be subscribed again.
    ended: AtomicBool,
}

impl SubShared {
    /// Delivers a publication unless it was delivered already.
    fn publication(&self, publication: Publication) {
        if publication.offset > 0 {
            let mut last = lock(&self.last);
            match &mut *last {
                Some(last) if publication.offset <= last.offset => return,
                Some(last) => last.offset = publication.offset,
                None => {}
            }
        }
        let _ = self.tx.try_send(Event::Publication(publication));
    }

    fn event(&self, event: Event) {
        let _ = self.tx.try_send(event);
    }

    fn end(&self, reason: String) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            let _ = self.tx.try_send(Event::Unsubscribed(reason));
            self.tx.close();
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(crate) fn position(&self) -> Option<Position> {
        *lock(&self.last)
    }
}

/// A subscription's slot on one connection: while its `$ch.sub` is in flight, what
/// arrives for it waits, so that the answer's recovered publications come first.
struct Slot {
    shared: Arc<SubShared>,
    pending: Option<Vec<Event>>,
}

/// The subscriptions of one client connection (a connection extension).
#[derive(Default)]
pub(crate) struct ClientSubs(Mutex<HashMap<String, Slot>>);

impl ClientSubs {
    fn route(&self, channel: &str, event: Event) {
        let mut slots = lock(&self.0);
        let Some(slot) = slots.get_mut(channel) else {
            return;
        };
        match (&mut slot.pending, event) {
            (Some(pending), event) => pending.push(event),
            (None, Event::Publication(p)) => slot.shared.publication(p),
            (None, event) => slot.shared.event(event),
        }
    }

    fn remove(&self, channel: &str) -> Option<Arc<SubShared>> {
        lock(&self.0).remove(channel).map(|slot| slot.shared)
    }
}

/// The handlers a client's router gets for what the server sends about channels.
pub(crate) fn client_router() -> Router {
    Router::new()
        .sync_bytes(wire::DELIVERY, |ctx, bytes| {
            let d: Delivery<'_> = postcard::from_bytes(&bytes)?;
            let publication = Publication {
                offset: d.offset,
                from: d.from.to_owned(),
                data: d.data.to_vec(),
            };
            let subs = ctx.connection().extension::<ClientSubs>();
            subs.route(d.channel, Event::Publication(publication));
            Ok([])
        })
        .sync_bytes(wire::JOIN, |ctx, bytes| {
            let e: PresenceEvent = postcard::from_bytes(&bytes)?;
            let subs = ctx.connection().extension::<ClientSubs>();
            subs.route(&e.channel, Event::Join(e.member));
            Ok([])
        })
        .sync_bytes(wire::LEAVE, |ctx, bytes| {
            let e: PresenceEvent = postcard::from_bytes(&bytes)?;
            let subs = ctx.connection().extension::<ClientSubs>();
            subs.route(&e.channel, Event::Leave(e.member));
            Ok([])
        })
        .sync_bytes(wire::UNSUBSCRIBED, |ctx, bytes| {
            let e: Unsubscribed = postcard::from_bytes(&bytes)?;
            let subs = ctx.connection().extension::<ClientSubs>();
            if let Some(shared) = subs.remove(&e.channel) {
                shared.end(e.reason);
            }
            Ok([])
        })
}

/// Subscribes `shared` on `conn` from `since`: registers it first (so that deliveries
/// racing the answer wait), asks, then hands over the recovered publications and what
/// waited, each once and in order. With `again`, [`Event::Resubscribed`] comes first.
pub(crate) async fn subscribe_on(
    conn: &Connection,
    shared: &Arc<SubShared>,
    since: Option<Position>,
    again: bool,
) -> Result<Subscribed, Error> {
    let subs = conn.extension::<ClientSubs>();
    {
        let mut slots = lock(&subs.0);
        if slots.contains_key(&shared.channel) {
            return Err(Error::BadRequest(format!(
                "already subscribed to `{}`",
                shared.channel
            )));
        }
        slots.insert(
            shared.channel.clone(),
            Slot {
                shared: shared.clone(),
                pending: Some(Vec::new()),
            },
        );
    }
    let request = SubscribeRequest {
        channel: shared.channel.clone(),
        since,
    };
    let answer: Subscribed = match conn.call(wire::SUBSCRIBE, &request).await {
        Ok(answer) => answer,
        Err(e) => {
            subs.remove(&shared.channel);
            return Err(e);
        }
    };
    let mut slots = lock(&subs.0);
    let Some(slot) = slots.get_mut(&shared.channel) else {
        return Err(Error::Closed);
    };
    if again {
        shared.event(Event::Resubscribed {
            recovered: answer.recovered,
            position: answer.position,
        });
    }
    if since.is_some() {
        for publication in &answer.publications {
            shared.publication(publication.clone());
        }
    }
    if let Some(position) = answer.position {
        *lock(&shared.last) = Some(position);
    }
    for event in slot.pending.take().unwrap_or_default() {
        match event {
            Event::Publication(p) => shared.publication(p),
            other => shared.event(other),
        }
    }
    Ok(answer)
}

/// The live connection of a reconnecting client, if it has one.
pub(crate) type Link = Arc<dyn Fn() -> Result<Connection, Error> + Send + Sync>;

/// Whom a subscription was made through, to unsubscribe.
pub(crate) enum Owner {
    Connection(Connection),
    /// A reconnecting client: its resubscriptions and its live connection.
    Reconnecting(Arc<Resubscribe>, Link),
}

/// The publications and events of one channel, in order: a [`Stream`] of [`Event`]s
/// (`next().await` with `futures_lite::StreamExt`), or [`recv`](Self::recv). It ends
/// when the connection closes (a [`ReconnectingClient`](crate::ReconnectingClient)'s goes
/// on across reconnects), or after [`Event::Unsubscribed`]. Dropping it unsubscribes in
/// the background; [`unsubscribe`](Self::unsubscribe) waits for the server.
pub struct Subscription {
    shared: Arc<SubShared>,
    rx: Pin<Box<async_channel::Receiver<Event>>>,
    answer: Subscribed,
    owner: Option<Owner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.shared.channel)
            .field("position", &self.shared.position())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        shared: Arc<SubShared>,
        rx: async_channel::Receiver<Event>,
        answer: Subscribed,
        owner: Owner,
    ) -> Self {
        Self {
            shared,
            rx: Box::pin(rx),
            answer,
            owner: Some(owner),
        }
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// When subscribed from a position: whether every publication after it came (the
    /// first events, before any newer publication). Without a position, true.
    pub fn recovered(&self) -> bool {
        self.answer.recovered
    }

    /// The position of the last publication delivered to this subscription (`None` when the
    /// channel keeps no history): resubscribe from it to miss nothing.
    pub fn position(&self) -> Option<Position> {
        self.shared.position()
    }

    /// The next event; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await.ok()
    }

    /// Unsubscribes and waits for the server to confirm.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        match self.owner.take() {
            Some(owner) => unsubscribe(&self.shared, owner).await,
            None => Ok(()),
        }
    }
}

/// Ends a subscription on this side: marked ended, not to be made again on reconnect, and
/// off its connection's routing; the connection to send `$ch.unsub` on (`None` when a
/// reconnecting client is away: nothing to undo on the server).
fn detach(shared: &Arc<SubShared>, owner: Owner) -> Option<Connection> {
    shared.ended.store(true, Ordering::Release);
    let conn = match owner {
        Owner::Connection(conn) => conn,
        Owner::Reconnecting(resubscribe, link) => {
            resubscribe.forget(shared);
            link().ok()?
        }
    };
    conn.extension::<ClientSubs>().remove(&shared.channel);
    Some(conn)
}

async fn unsubscribe(shared: &Arc<SubShared>, owner: Owner) -> Result<(), Error> {
    match detach(shared, owner) {
        Some(conn) => conn.call::<_, ()>(wire::UNSUBSCRIBE, &shared.channel).await,
        None => Ok(()),
    }
}

/// Dropping a subscription ends it at once on this side and queues `$ch.unsub` at once
/// (not waiting for the answer), so that a new subscription to the same channel right
/// after is queued behind it.
impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        if self.shared.is_ended() {
            return;
        }
        if let Some(conn) = detach(&self.shared, owner) {
            if let Ok(payload) = postcard::to_allocvec(&self.shared.channel) {
                let _ = conn.request(wire::UNSUBSCRIBE).bytes_then(payload, |_| {});
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.as_mut().poll_next(cx)
    }
}

/// The subscriptions a [`ReconnectingClient`](crate::ReconnectingClient) makes again on
/// each new connection.
#[derive(Default)]
pub(crate) struct Resubscribe(Mutex<Vec<Arc<SubShared>>>);

impl Resubscribe {
    pub(crate) fn add(&self, shared: Arc<SubShared>) {
        lock(&self.0).push(shared);
    }

    fn forget(&self, shared: &Arc<SubShared>) {
        lock(&self.0).retain(|s| !Arc::ptr_eq(s, shared));
    }

    /// Subscribes everything again on `conn`, each from its last position. A subscription
    /// the server now refuses ends with [`Event::Unsubscribed`]; a connection that fails
    /// fails the whole attempt.
    pub(crate) async fn again(&self, conn: &Connection) -> Result<(), Error> {
        let live: Vec<Arc<SubShared>> = {
            let mut subs = lock(&self.0);
            subs.retain(|s| !s.is_ended());
            subs.clone()
        };
        for shared in live {
            let since = shared.position();
            match subscribe_on(conn, &shared, since, true).await {
                Ok(_) => {}
                Err(e @ (Error::Closed | Error::Timeout | Error::Io(_) | Error::ShuttingDown)) => {
                    return Err(e)
                }
                Err(e) => {
                    self.forget(&shared);
                    shared.end(e.to_string());
                }
            }
        }
        Ok(())
    }
}

/// A new subscription's shared state and its stream's receiving end.
pub(crate) fn new_shared(channel: &str) -> (Arc<SubShared>, async_channel::Receiver<Event>) {
    let (tx, rx) = async_channel::unbounded();
    let shared = Arc::new(SubShared {
        channel: channel.to_owned(),
        tx,
        last: Mutex::new(None),
        ended: AtomicBool::new(false),
    });
    (shared, rx)
}

/// Channels from a client: subscribe, publish, presence and history, on a
/// [`Connection`], a [`Client`](crate::Client) or a
/// [`ReconnectingClient`](crate::ReconnectingClient) (whose subscriptions are made again,
/// with recovery, on every new connection).
///
/// ```no_run
/// # async fn demo(client: zserver_core::Client) -> Result<(), zserver_core::Error> {
/// use zserver_core::channels::{ChannelCalls, Event};
///
/// let mut lobby = client.subscribe("chat:lobby").await?;
/// client.publish("chat:lobby", b"hello").await?;
/// while let Some(event) = lobby.recv().await {
///     if let Event::Publication(p) = event {
///         println!("{} at {}: {:?}", p.from, p.offset, p.data);
///     }
/// }
/// # Ok(()) }
/// ```
pub trait ChannelCalls: Calls {
    /// Subscribes to `channel`: its publications from now on.
    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
    ) -> impl Future<Output = Result<Subscription, Error>> + Send + 'a {
        self.subscribe_from(channel, None)
    }

    /// Subscribes to `channel` from `since` (a [`Subscription::position`] kept from
    /// before): every publication after it comes first, once each, if the history still
    /// holds them ([`Subscription::recovered`] says whether it did).
    fn subscribe_from<'a>(
        &'a self,
        channel: &'a str,
        since: Option<Position>,
    ) -> impl Future<Output = Result<Subscription, Error>> + Send + 'a {
        async move {
            let conn = self.link()?.into_owned();
            let (shared, rx) = new_shared(channel);
            let answer = subscribe_on(&conn, &shared, since, false).await?;
            Ok(Subscription::new(
                shared,
                rx,
                answer,
                Owner::Connection(conn),
            ))
        }
    }

    /// Publishes `data` to `channel`; its position when the channel keeps history.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: impl AsRef<[u8]> + Send + 'a,
    ) -> impl Future<Output = Result<Option<Position>, Error>> + Send + 'a {
        async move {
            let request = wire::PublishOut {
                channel,
                data: wire::Blob(data.as_ref()),
            };
            self.call(wire::PUBLISH, &request).await
        }
    }

    /// Who is subscribed to `channel` (where its namespace has presence).
    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> impl Future<Output = Result<Vec<Member>, Error>> + Send + 'a {
        self.call(wire::PRESENCE, channel)
    }

    /// Up to `limit` of `channel`'s publications after `since` (from the oldest kept when
    /// `None`), where its namespace keeps history.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<Position>,
        limit: u32,
    ) -> impl Future<Output = Result<HistoryPage, Error>> + Send + 'a {
        async move {
            let request = HistoryRequest {
                channel: channel.to_owned(),
                since,
                limit,
            };
            self.call(wire::HISTORY, &request).await
        }
    }
}

impl ChannelCalls for Connection {}
