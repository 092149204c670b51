//! The server's channels: who is subscribed to what, history, and fan-out. A publication
//! is encoded into one frame once and copied into each subscriber's outgoing queue (only
//! sealing is per connection); a subscriber too slow to drain its queue is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::history::{Entry, History};
use super::options::{Identity, Limits, Namespace};
use super::store::{
    HistoryStore, PresenceChange, Relay, Relayed, StoredHistory, StoredPublication,
};
use super::wire::{
    self, Blob, DeliveryOut, HistoryPage, Member, Position, PresenceEvent, Subscribed, Unsubscribed,
};
use crate::connection::Connection;
use crate::error::Error;
use crate::frame::{self, Header, Kind};
use crate::rate::RateLimiter;
use crate::runtime::Runtime;

/// Bytes kept free in a frame for everything but the publications of a subscribe or
/// history answer.
const ANSWER_SLACK: usize = 1024;

/// Namespaces longest prefix first: the first match is the most specific.
fn sorted(mut namespaces: Vec<Namespace>) -> Vec<Arc<Namespace>> {
    namespaces.sort_by_key(|n| std::cmp::Reverse(n.prefix.len()));
    namespaces.into_iter().map(Arc::new).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The channels of one server.
pub(crate) struct Hub {
    /// Longest prefix first; replaced whole by [`Hub::set_namespaces`].
    namespaces: RwLock<Vec<Arc<Namespace>>>,
    pub(crate) limits: Limits,
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    /// Where durable namespaces keep their history.
    store: Option<Arc<dyn HistoryStore>>,
    /// Carries publications to the other servers of a cluster.
    relay: Option<Arc<dyn Relay>>,
    /// Held while a durable channel is loaded or created, so that two cannot race.
    creating: Mutex<()>,
    history_bytes: AtomicUsize,
    /// The server's clock and frame limit, set when it binds.
    bound: OnceLock<Bound>,
    /// The server's rate limits on client publications, if it has any.
    rate: OnceLock<RateLimiter>,
    pub(crate) slow_closed: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
}

struct Bound {
    runtime: Arc<dyn Runtime>,
    max_frame: usize,
}

struct Channel {
    name: Arc<str>,
    state: Mutex<ChannelState>,
}

struct ChannelState {
    subscribers: Vec<Subscriber>,
    history: Option<History>,
    /// Taken out of the map: whoever still holds it looks the channel up again.
    removed: bool,
}

struct Subscriber {
    conn: Connection,
    identity: Arc<Identity>,
}

impl Subscriber {
    fn member(&self) -> Member {
        Member {
            client: self.conn.id(),
            user: self.identity.user.clone(),
            info: self.identity.info.to_vec(),
        }
    }
}

/// A connection's identity for channels (a connection extension, made when the app
/// identifies the connection).
#[derive(Default)]
pub(crate) struct IdentityCell(Mutex<Option<Arc<Identity>>>);

impl IdentityCell {
    pub(crate) fn set(&self, identity: Identity) {
        *lock(&self.0) = Some(Arc::new(identity));
    }
}

/// The identity of `conn`: what the app set, or the empty one (shared, not allocated per
/// connection).
pub(crate) fn identity_of(conn: &Connection) -> Arc<Identity> {
    static NOBODY: OnceLock<Arc<Identity>> = OnceLock::new();
    conn.find_extension::<IdentityCell>()
        .and_then(|cell| lock(&cell.0).clone())
        .unwrap_or_else(|| NOBODY.get_or_init(Arc::default).clone())
}

/// The channels one connection is subscribed to (a connection extension): when the
/// connection closes it is dropped, and takes the subscriptions with it. The names are the
/// channels' own (shared), in a list without spare room: most connections hold a few.
#[derive(Default)]
pub(crate) struct Membership(Mutex<Joined>);

#[derive(Default)]
struct Joined {
    hub: Weak<Hub>,
    conn: u64,
    channels: Vec<Arc<str>>,
}

impl Joined {
    fn contains(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| &**c == channel)
    }

    fn remove(&mut self, channel: &str) -> bool {
        match self.channels.iter().position(|c| &**c == channel) {
            Some(at) => {
                self.channels.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let joined = std::mem::take(&mut *lock(&self.0));
        if let Some(hub) = joined.hub.upgrade() {
            for name in &joined.channels {
                hub.remove_subscriber(name, joined.conn);
            }
        }
    }
}

/// Who does something to a channel: a client connection (its permissions are checked) or
/// the server's own code.
#[derive(Clone, Copy)]
pub(crate) enum Actor<'a> {
    Client(&'a Connection),
    Server,
}

impl Hub {
    pub(crate) fn new(
        namespaces: Vec<Namespace>,
        limits: Limits,
        store: Option<Arc<dyn HistoryStore>>,
        relay: Option<Arc<dyn Relay>>,
    ) -> Self {
        Self {
            namespaces: RwLock::new(sorted(namespaces)),
            limits,
            channels: Mutex::new(HashMap::new()),
            store,
            relay,
            creating: Mutex::new(()),
            history_bytes: AtomicUsize::new(0),
            bound: OnceLock::new(),
            rate: OnceLock::new(),
            slow_closed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    /// Limits client publications with `rate` (once: later calls are ignored).
    pub(crate) fn bind_rate(&self, rate: RateLimiter) {
        let _ = self.rate.set(rate);
    }

    /// Replaces the namespaces: every later call finds its channel's rules here. Channels
    /// open now keep their subscribers and history.
    pub(crate) fn set_namespaces(&self, namespaces: Vec<Namespace>) {
        *self.namespaces.write().unwrap_or_else(|e| e.into_inner()) = sorted(namespaces);
    }

    /// Ties the hub to its server's clock and frame limit (once; later calls are ignored).
    pub(crate) fn bind(&self, runtime: Arc<dyn Runtime>, max_frame: usize) {
        let _ = self.bound.set(Bound { runtime, max_frame });
    }

    fn now(&self) -> Instant {
        self.bound
            .get()
            .map_or_else(Instant::now, |b| b.runtime.now())
    }

    fn max_frame(&self) -> usize {
        self.bound
            .get()
            .map_or(frame::DEFAULT_MAX_FRAME, |b| b.max_frame)
    }

    /// Bytes of history held over every channel.
    pub(crate) fn history_bytes(&self) -> usize {
        self.history_bytes.load(Ordering::Relaxed)
    }

    /// Channels held.
    pub(crate) fn channel_count(&self) -> usize {
        lock(&self.channels).len()
    }

    /// The namespace of `channel`, checking its name.
    fn namespace(&self, channel: &str) -> Result<Arc<Namespace>, Error> {
        if channel.is_empty() || channel.len() > self.limits.max_name {
            return Err(Error::BadRequest(format!(
                "a channel name is 1 to {} bytes",
                self.limits.max_name
            )));
        }
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        namespaces
            .iter()
            .find(|ns| channel.starts_with(ns.prefix.as_str()))
            .cloned()
            .ok_or_else(|| Error::Denied(format!("no namespace for channel `{channel}`")))
    }

    /// The namespace of `channel`, if `actor` may subscribe to it (and so read it).
    fn readable(&self, actor: Actor<'_>, channel: &str) -> Result<Arc<Namespace>, Error> {
        let ns = self.namespace(channel)?;
        if let (Actor::Client(conn), Some(check)) = (actor, &ns.subscribe_check) {
            check(conn, &identity_of(conn), channel)?;
        }
        Ok(ns)
    }

    /// Whether acting on `channel` may touch the history store (blocking I/O): its
    /// namespace is durable and the hub has a store.
    pub(crate) fn is_durable(&self, channel: &str) -> bool {
        self.store.is_some()
            && self
                .namespace(channel)
                .is_ok_and(|ns| ns.durable && ns.keeps_history())
    }

    /// The channel named `name`, made if `create` (and within the limit); a durable one is
    /// loaded from the store, or recorded there with a new epoch.
    fn channel(
        &self,
        name: &str,
        namespace: &Namespace,
        create: bool,
    ) -> Result<Option<Arc<Channel>>, Error> {
        if let Some(found) = lock(&self.channels).get(name) {
            return Ok(Some(found.clone()));
        }
        if !create {
            return Ok(None);
        }
        let store = self
            .store
            .as_ref()
            .filter(|_| namespace.durable && namespace.keeps_history());
        let _creating = store.map(|_| lock(&self.creating));
        if let Some(found) = lock(&self.channels).get(name) {
            return Ok(Some(found.clone()));
        }
        if lock(&self.channels).len() >= self.limits.channels {
            return Err(Error::Limit(format!(
                "the server holds {} channels, its limit",
                self.limits.channels
            )));
        }
        let history = match store {
            Some(store) => Some(self.load(store.as_ref(), name, namespace)?),
            None => namespace
                .keeps_history()
                .then(|| History::new(new_epoch(), namespace.history_size, namespace.history_ttl)),
        };
        if let Some(history) = &history {
            self.history_bytes
                .fetch_add(history.bytes(), Ordering::Relaxed);
        }
        let name: Arc<str> = Arc::from(name);
        let channel = Arc::new(Channel {
            name: name.clone(),
            state: Mutex::new(ChannelState {
                subscribers: Vec::new(),
                history,
                removed: false,
            }),
        });
        let mut channels = lock(&self.channels);
        if let Some(found) = channels.get(&name) {
            // Made meanwhile by a non-durable path: keep that one.
            return Ok(Some(found.clone()));
        }
        channels.insert(name, channel.clone());
        Ok(Some(channel))
    }

    /// A durable channel's history from the store, or a new one recorded there (unless
    /// another server recorded one first: then that one).
    fn load(&self, store: &dyn HistoryStore, name: &str, ns: &Namespace) -> Result<History, Error> {
        let stored = match store.load(name, ns.history_size)? {
            Some(stored) => stored,
            None => {
                store.create(name, new_epoch())?;
                store
                    .load(name, ns.history_size)?
                    .ok_or_else(|| Error::msg(format!("the store did not keep `{name}`")))?
            }
        };
        Ok(self.restore(stored, ns))
    }

    /// A history as the store gave it, its publications' ages on this server's clock.
    fn restore(&self, stored: StoredHistory, ns: &Namespace) -> History {
        let (now, now_unix) = (self.now(), unix_ms());
        let entries = stored
            .publications
            .into_iter()
            .map(|p| {
                let age = u64::try_from(now_unix.saturating_sub(p.at_unix_ms)).unwrap_or(0);
                Entry {
                    offset: p.offset,
                    at: now
                        .checked_sub(std::time::Duration::from_millis(age))
                        .unwrap_or(now),
                    from: Arc::from(p.from.as_str()),
                    data: Bytes::from(p.data),
                }
            })
            .collect();
        let mut history = History::restore(
            stored.epoch,
            stored.top,
            entries,
            ns.history_size,
            ns.history_ttl,
        );
        history.expire(now);
        history
    }

    /// Subscribes `conn` to `channel`, recovering from `since` when given.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        conn: &Connection,
        channel: &str,
        since: Option<Position>,
    ) -> Result<Subscribed, Error> {
        let ns = self.readable(Actor::Client(conn), channel)?;
        let ns = &*ns;
        let identity = identity_of(conn);
        let membership = conn.extension::<Membership>();
        let mut joined = lock(&membership.0);
        if joined.contains(channel) {
            return Err(Error::BadRequest(format!(
                "already subscribed to `{channel}`"
            )));
        }
        if joined.channels.len() >= self.limits.channels_per_connection {
            return Err(Error::Limit(format!(
                "a connection may subscribe to {} channels",
                self.limits.channels_per_connection
            )));
        }
        let now = self.now();
        let (name, answer) = loop {
            let Some(ch) = self.channel(channel, ns, true)? else {
                continue;
            };
            let mut state = lock(&ch.state);
            if state.removed {
                continue;
            }
            if state.subscribers.len() >= self.limits.subscribers_per_channel {
                return Err(Error::Limit(format!(
                    "`{channel}` has {} subscribers, its limit",
                    state.subscribers.len()
                )));
            }
            let subscriber = Subscriber {
                conn: conn.clone(),
                identity: identity.clone(),
            };
            if ns.join_leave {
                self.announce(&ch.name, &state, wire::JOIN, &subscriber.member());
            }
            self.relay_presence(ns, &ch.name, &subscriber, true);
            state.subscribers.push(subscriber);
            let answer = match &mut state.history {
                None => Subscribed {
                    position: None,
                    recovered: since.is_none(),
                    publications: Vec::new(),
                },
                Some(history) => {
                    let freed = history.expire(now);
                    self.history_bytes.fetch_sub(freed, Ordering::Relaxed);
                    let position = Some(history.position());
                    match since {
                        None => Subscribed {
                            position,
                            recovered: true,
                            publications: Vec::new(),
                        },
                        Some(since) => {
                            let recovery = history.recover(since);
                            let fits = fits(&recovery.entries, self.max_frame());
                            Subscribed {
                                position,
                                recovered: recovery.recovered && fits,
                                publications: if fits {
                                    recovery.entries.iter().map(Entry::publication).collect()
                                } else {
                                    Vec::new()
                                },
                            }
                        }
                    }
                }
            };
            break (ch.name.clone(), answer);
        };
        if joined.hub.upgrade().is_none() {
            joined.hub = Arc::downgrade(self);
            joined.conn = conn.id();
        }
        joined.channels.reserve_exact(1);
        joined.channels.push(name);
        Ok(answer)
    }

    /// Unsubscribes `conn` from `channel`; whether it was subscribed.
    pub(crate) fn unsubscribe(&self, conn: &Connection, channel: &str) -> bool {
        let Some(membership) = conn.find_extension::<Membership>() else {
            return false;
        };
        let was = lock(&membership.0).remove(channel);
        if was {
            self.remove_subscriber(channel, conn.id());
        }
        was
    }

    /// Ends `conn`'s subscription to `channel` from the server's side and tells it why.
    pub(crate) fn kick(&self, conn: &Connection, channel: &str, reason: &str) -> bool {
        let was = self.unsubscribe(conn, channel);
        if was {
            let notice = Unsubscribed {
                channel: channel.to_owned(),
                reason: reason.to_owned(),
            };
            if let Ok(payload) = postcard::to_allocvec(&notice) {
                let _ = conn.send_now(wire::UNSUBSCRIBED, &payload);
            }
        }
        was
    }

    /// Takes connection `conn` off `channel`'s subscribers (telling the others, if the
    /// namespace says so), and forgets the channel once it holds nothing.
    fn remove_subscriber(&self, channel: &str, conn: u64) {
        let Some(ch) = lock(&self.channels).get(channel).cloned() else {
            return;
        };
        // A namespace removed by a reload sends no more events.
        let ns = self.namespace(&ch.name).ok();
        let now_empty = {
            let mut state = lock(&ch.state);
            let Some(at) = state.subscribers.iter().position(|s| s.conn.id() == conn) else {
                return;
            };
            let gone = state.subscribers.swap_remove(at);
            if let Some(ns) = &ns {
                if ns.join_leave {
                    self.announce(&ch.name, &state, wire::LEAVE, &gone.member());
                }
                self.relay_presence(ns, &ch.name, &gone, false);
            }
            state.subscribers.is_empty() && state.history.as_ref().is_none_or(History::is_empty)
        };
        if now_empty {
            self.forget_if_idle(&ch);
        }
    }

    /// Removes `ch` from the map if it has no subscribers and no history left.
    fn forget_if_idle(&self, ch: &Arc<Channel>) {
        let mut channels = lock(&self.channels);
        let mut state = lock(&ch.state);
        let idle =
            state.subscribers.is_empty() && state.history.as_ref().is_none_or(History::is_empty);
        if idle && !state.removed {
            state.removed = true;
            channels.remove(&ch.name);
        }
    }

    /// Tells the relay (if any) that `who` joined or left `channel`, when its namespace has
    /// presence or join and leave events.
    fn relay_presence(&self, ns: &Namespace, channel: &str, who: &Subscriber, joined: bool) {
        if let Some(relay) = self.relay.as_ref().filter(|_| ns.presence || ns.join_leave) {
            relay.relay_presence(PresenceChange {
                channel: channel.to_owned(),
                member: who.member(),
                joined,
            });
        }
    }

    /// Applies another server's presence change: the join or leave event for this server's
    /// subscribers of the channel, if its namespace sends them.
    pub(crate) fn apply_remote_presence(&self, change: &PresenceChange) {
        let Ok(ns) = self.namespace(&change.channel) else {
            return;
        };
        let ns = &*ns;
        if !ns.join_leave {
            return;
        }
        let Some(ch) = lock(&self.channels).get(change.channel.as_str()).cloned() else {
            return;
        };
        let state = lock(&ch.state);
        let command = if change.joined {
            wire::JOIN
        } else {
            wire::LEAVE
        };
        self.announce(&ch.name, &state, command, &change.member);
    }

    /// Sends a join or leave event to every subscriber of a channel but the member's own
    /// connection, encoded once.
    fn announce(&self, channel: &str, state: &ChannelState, command: &str, member: &Member) {
        let event = PresenceEvent {
            channel: channel.to_owned(),
            member: member.clone(),
        };
        let Ok(encoded) = encode_send(command, &event, self.max_frame()) else {
            return;
        };
        for s in state
            .subscribers
            .iter()
            .filter(|s| s.conn.id() != member.client)
        {
            let _ = s
                .conn
                .send_encoded(command, &encoded.frame, encoded.payload_len);
        }
    }

    /// Publishes `data` to `channel` from `actor`; the new publication's position when the
    /// channel keeps history.
    pub(crate) fn publish(
        &self,
        actor: Actor<'_>,
        channel: &str,
        data: Bytes,
    ) -> Result<Option<Position>, Error> {
        let ns = self.namespace(channel)?;
        let ns = &*ns;
        let from = match actor {
            Actor::Client(conn) => {
                let identity = identity_of(conn);
                if !ns.client_publish {
                    return Err(Error::Denied(format!(
                        "clients may not publish to `{channel}`"
                    )));
                }
                if let Some(check) = &ns.publish_check {
                    check(conn, &identity, channel)?;
                }
                if let Some(rate) = self.rate.get() {
                    rate.check_publication(conn, &ns.prefix)?;
                }
                identity
            }
            Actor::Server => Arc::new(Identity::default()),
        };
        if data.len() > ns.max_publication {
            return Err(Error::Limit(format!(
                "a publication to `{channel}` is at most {} bytes, not {}",
                ns.max_publication,
                data.len()
            )));
        }
        let from_name: Arc<str> = Arc::from(from.user.as_str());
        let at_unix_ms = unix_ms();
        let mut after = AfterUnlock::default();
        let relayed = self
            .relay
            .as_ref()
            .filter(|_| !ns.keeps_history() || self.durable(ns));
        let position = loop {
            let Some(ch) = self.channel(channel, ns, ns.keeps_history())? else {
                // Nobody subscribed here and no history kept: only the other nodes may care.
                if let Some(relay) = relayed {
                    relay.relay(relayed_publication(
                        channel, 0, 0, at_unix_ms, &from_name, &data,
                    ));
                }
                self.published.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            };
            let mut state = lock(&ch.state);
            if state.removed {
                continue;
            }
            let (offset, delivered) = match state.history.is_some() {
                true => self.keep(
                    channel, ns, &mut state, at_unix_ms, &from_name, &data, &mut after,
                )?,
                false => (0, false),
            };
            let position = state.history.as_ref().map(|h| Position {
                offset,
                ..h.position()
            });
            if !delivered {
                self.fan_out(
                    channel,
                    &state.subscribers,
                    offset,
                    &from_name,
                    &data,
                    &mut after,
                )?;
            }
            if let Some(relay) = relayed {
                let epoch = position.map_or(0, |p| p.epoch);
                relay.relay(relayed_publication(
                    channel, epoch, offset, at_unix_ms, &from_name, &data,
                ));
            }
            break position;
        };
        self.published.fetch_add(1, Ordering::Relaxed);
        self.finish(channel, after);
        Ok(position)
    }

    /// Whether `ns` keeps its history in the store.
    fn durable(&self, ns: &Namespace) -> bool {
        ns.durable && ns.keeps_history() && self.store.is_some()
    }

    /// Keeps a new publication in the channel's history (stored first in a durable
    /// namespace, which gives its offset); its offset, and whether it was delivered here
    /// already. When other servers sharing the store published since this one last heard,
    /// it catches up from the store, delivering theirs and then this one, in order.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        channel: &str,
        ns: &Namespace,
        state: &mut ChannelState,
        at_unix_ms: i64,
        from: &Arc<str>,
        data: &Bytes,
        after: &mut AfterUnlock,
    ) -> Result<(u64, bool), Error> {
        if let Some(store) = self.store.as_ref().filter(|_| self.durable(ns)) {
            let stored = StoredPublication {
                offset: 0,
                at_unix_ms,
                from: from.to_string(),
                data: data.to_vec(),
            };
            let Some(offset) = store.append(channel, &stored, ns.history_size)? else {
                return Err(Error::msg(format!(
                    "the store has no history for `{channel}`"
                )));
            };
            let next = state.history.as_ref().map_or(1, History::next_offset);
            if offset != next {
                self.catch_up(store.as_ref(), channel, ns, state, after)?;
                let top = state.history.as_ref().map_or(0, |h| h.position().offset);
                if top < offset {
                    return Err(Error::msg(format!(
                        "`{channel}`: publication {offset} was stored but is not in the store's history"
                    )));
                }
                return Ok((offset, true));
            }
        }
        let now = self.now();
        let Some(history) = &mut state.history else {
            return Err(Error::msg(format!("`{channel}` keeps no history")));
        };
        let before = history.bytes();
        let offset = history.push(now, from.clone(), data.clone());
        history.expire(now);
        self.account(history, before);
        Ok((offset, false))
    }

    /// Brings a durable channel's history up to the store's, delivering here, in order,
    /// what other servers published. If the store's history is another (made anew) or has
    /// moved on by more than it keeps, this channel's subscribers cannot be caught up: the
    /// history is replaced and they are unsubscribed, to subscribe again from their
    /// position (and be told `recovered: false`).
    fn catch_up(
        &self,
        store: &dyn HistoryStore,
        channel: &str,
        ns: &Namespace,
        state: &mut ChannelState,
        after: &mut AfterUnlock,
    ) -> Result<(), Error> {
        let Some(stored) = store.load(channel, ns.history_size)? else {
            return Ok(());
        };
        let Some(history) = &mut state.history else {
            return Ok(());
        };
        let (epoch, top) = (history.position().epoch, history.position().offset);
        let missed: Vec<StoredPublication> = stored
            .publications
            .iter()
            .filter(|p| p.offset > top)
            .cloned()
            .collect();
        let contiguous = missed.first().is_none_or(|p| p.offset == top + 1) && stored.top >= top;
        if stored.epoch != epoch || !contiguous {
            let before = history.bytes();
            *history = self.restore(stored, ns);
            self.account(history, before);
            after
                .reset
                .extend(state.subscribers.iter().map(|s| s.conn.clone()));
            return Ok(());
        }
        for p in missed {
            self.apply(channel, state, &p, after)?;
        }
        Ok(())
    }

    /// Keeps and delivers a publication another server made (its offset the next here).
    fn apply(
        &self,
        channel: &str,
        state: &mut ChannelState,
        p: &StoredPublication,
        after: &mut AfterUnlock,
    ) -> Result<(), Error> {
        let from: Arc<str> = Arc::from(p.from.as_str());
        let data = Bytes::copy_from_slice(&p.data);
        if let Some(history) = &mut state.history {
            let now = self.now();
            let before = history.bytes();
            history.push(now, from.clone(), data.clone());
            history.expire(now);
            self.account(history, before);
        }
        self.fan_out(channel, &state.subscribers, p.offset, &from, &data, after)
    }

    /// Applies a publication another server of the cluster made and relayed. Channels not
    /// held here are left alone (their history is in the store); a gap is filled from the
    /// store. May read the store: call it from a blocking thread.
    pub(crate) fn apply_remote(&self, relayed: &Relayed) -> Result<(), Error> {
        let Ok(ns) = self.namespace(&relayed.channel) else {
            return Ok(());
        };
        let ns = &*ns;
        if ns.keeps_history() && !self.durable(ns) {
            // History in each server's memory: offsets are per server, nothing is relayed.
            return Ok(());
        }
        let Some(ch) = self.channel(&relayed.channel, ns, false)? else {
            return Ok(());
        };
        let mut after = AfterUnlock::default();
        {
            let mut state = lock(&ch.state);
            if state.removed {
                return Ok(());
            }
            let p = &relayed.publication;
            let here = state.history.as_ref().map(History::position);
            match (here, self.store.as_ref()) {
                (None, _) => self.apply(&ch.name, &mut state, p, &mut after)?,
                (Some(here), _) if here.epoch == relayed.epoch && p.offset <= here.offset => {}
                (Some(here), _) if here.epoch == relayed.epoch && p.offset == here.offset + 1 => {
                    self.apply(&ch.name, &mut state, p, &mut after)?;
                }
                (Some(_), Some(store)) => {
                    self.catch_up(store.as_ref(), &ch.name, ns, &mut state, &mut after)?;
                }
                (Some(_), None) => {}
            }
        }
        self.finish(&relayed.channel, after);
        Ok(())
    }

    /// Encodes one delivery once and queues it for every subscriber, noting the slow ones.
    fn fan_out(
        &self,
        channel: &str,
        subscribers: &[Subscriber],
        offset: u64,
        from: &str,
        data: &[u8],
        after: &mut AfterUnlock,
    ) -> Result<(), Error> {
        let delivery = DeliveryOut {
            channel,
            offset,
            from,
            data: Blob(data),
        };
        let encoded = encode_send(wire::DELIVERY, &delivery, self.max_frame())?;
        for s in subscribers {
            match s
                .conn
                .send_encoded(wire::DELIVERY, &encoded.frame, encoded.payload_len)
            {
                Ok(queued) if queued > self.limits.subscriber_queue => {
                    after.slow.push((s.conn.clone(), queued));
                }
                _ => {}
            }
        }
        self.delivered
            .fetch_add(subscribers.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// What waits for the channel's lock to be released: closing subscribers too slow to
    /// keep up, and unsubscribing those whose history was replaced.
    fn finish(&self, channel: &str, after: AfterUnlock) {
        for (conn, queued) in after.slow {
            tracing::info!(
                conn = conn.id(),
                queued,
                channel,
                "closing a subscriber too slow to read its channels"
            );
            self.slow_closed.fetch_add(1, Ordering::Relaxed);
            conn.shut(Error::Limit(format!(
                "slow subscriber: {queued} bytes queued unsent"
            )));
        }
        for conn in after.reset {
            self.kick(
                &conn,
                channel,
                "the channel's history was replaced: subscribe again",
            );
        }
    }

    /// Counts what a publication changed in the history held (`before`: bytes this
    /// history held before it), then drops this channel's oldest publications while the
    /// total is over [`Limits::history_bytes`].
    fn account(&self, history: &mut History, before: usize) {
        let after = history.bytes();
        if after >= before {
            self.history_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.history_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        while self.history_bytes.load(Ordering::Relaxed) > self.limits.history_bytes
            && !history.is_empty()
        {
            let freed = history.pop_oldest();
            self.history_bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// The members of `channel` (each subscribed connection once).
    pub(crate) fn presence(&self, actor: Actor<'_>, channel: &str) -> Result<Vec<Member>, Error> {
        let ns = self.readable(actor, channel)?;
        let ns = &*ns;
        if matches!(actor, Actor::Client(_)) && !ns.presence {
            return Err(Error::Denied(format!("`{channel}` has no presence")));
        }
        let mut members = match lock(&self.channels).get(channel).cloned() {
            Some(ch) => lock(&ch.state)
                .subscribers
                .iter()
                .map(Subscriber::member)
                .collect(),
            None => Vec::new(),
        };
        if let Some(relay) = &self.relay {
            members.extend(relay.remote_members(channel));
        }
        Ok(members)
    }

    /// The connections subscribed to `channel`.
    pub(crate) fn subscribers(&self, channel: &str) -> Vec<Connection> {
        let Some(ch) = lock(&self.channels).get(channel).cloned() else {
            return Vec::new();
        };
        let state = lock(&ch.state);
        state.subscribers.iter().map(|s| s.conn.clone()).collect()
    }

    /// Up to `limit` publications of `channel` after `since` (the oldest kept when `None`).
    pub(crate) fn history(
        &self,
        actor: Actor<'_>,
        channel: &str,
        since: Option<Position>,
        limit: usize,
    ) -> Result<HistoryPage, Error> {
        let ns = self.readable(actor, channel)?;
        let ns = &*ns;
        if !ns.keeps_history() {
            return Err(Error::Denied(format!("`{channel}` keeps no history")));
        }
        let loaded = self.channel(channel, ns, self.is_durable(channel))?;
        let Some(ch) = loaded else {
            return Ok(HistoryPage {
                position: Position {
                    epoch: 0,
                    offset: 0,
                },
                publications: Vec::new(),
            });
        };
        let mut state = lock(&ch.state);
        let now = self.now();
        let Some(history) = &mut state.history else {
            return Err(Error::Denied(format!("`{channel}` keeps no history")));
        };
        let freed = history.expire(now);
        self.history_bytes.fetch_sub(freed, Ordering::Relaxed);
        let position = history.position();
        let after = match since {
            Some(since) if since.epoch == position.epoch => since.offset,
            _ => 0,
        };
        let mut budget = self.max_frame().saturating_sub(ANSWER_SLACK);
        let publications = history
            .after(after, limit)
            .into_iter()
            .take_while(|e| {
                let cost = e.data.len() + e.from.len() + 32;
                let fits = cost <= budget;
                budget = budget.saturating_sub(cost);
                fits
            })
            .map(|e| e.publication())
            .collect();
        Ok(HistoryPage {
            position,
            publications,
        })
    }

    /// Drops expired history from channels nobody is subscribed to, and forgets those
    /// left empty.
    pub(crate) fn sweep(&self) {
        let now = self.now();
        let idle: Vec<Arc<Channel>> = lock(&self.channels).values().cloned().collect();
        for ch in idle {
            let empty = {
                let mut state = lock(&ch.state);
                if let Some(history) = &mut state.history {
                    let freed = history.expire(now);
                    self.history_bytes.fetch_sub(freed, Ordering::Relaxed);
                }
                state.subscribers.is_empty() && state.history.as_ref().is_none_or(History::is_empty)
            };
            if empty {
                self.forget_if_idle(&ch);
            }
        }
    }
}

/// Whether a recovery's publications fit one answer frame.
fn fits(entries: &[Entry], max_frame: usize) -> bool {
    let bytes: usize = entries
        .iter()
        .map(|e| e.data.len() + e.from.len() + 32)
        .sum();
    bytes <= max_frame.saturating_sub(ANSWER_SLACK)
}

/// A one-way frame encoded once, to be copied into many connections' queues.
pub(crate) struct Encoded {
    pub(crate) frame: Bytes,
    pub(crate) payload_len: usize,
}

/// Encodes a `Send` of `command` with `value` as its postcard payload.
pub(crate) fn encode_send<T: Serialize>(
    command: &str,
    value: &T,
    max_frame: usize,
) -> Result<Encoded, Error> {
    let payload = postcard::to_allocvec(value)?;
    let header = Header {
        kind: Kind::Send,
        flags: 0,
        id: 0,
        command,
    };
    let mut out =
        BytesMut::with_capacity(frame::LENGTH_PREFIX + frame::header_len(&header) + payload.len());
    frame::encode(&mut out, &header, &payload, max_frame)?;
    Ok(Encoded {
        frame: out.freeze(),
        payload_len: payload.len(),
    })
}

/// What waits for a channel's lock to be released ([`Hub::finish`]).
#[derive(Default)]
struct AfterUnlock {
    slow: Vec<(Connection, usize)>,
    reset: Vec<Connection>,
}

fn relayed_publication(
    channel: &str,
    epoch: u64,
    offset: u64,
    at_unix_ms: i64,
    from: &str,
    data: &[u8],
) -> Relayed {
    Relayed {
        channel: channel.to_owned(),
        epoch,
        publication: StoredPublication {
            offset,
            at_unix_ms,
            from: from.to_owned(),
            data: data.to_vec(),
        },
    }
}

/// Now, in milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A new history's epoch: random, so that a restarted server's positions are never
/// mistaken for the old ones.
fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return fastrand::u64(1..);
    }
    u64::from_le_bytes(bytes).max(1)
}
