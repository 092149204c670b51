//! A client that reconnects with back-off when its connection drops (the server restarted,
//! the network blinked), runs a login hook on every new connection, and reports calls that
//! could not be made while it was away as errors.
//!
//! # What happens to calls
//!
//! A [`ReconnectingClient`] never re-sends a call on its own: whether a call that was in
//! flight ran on the server cannot be known once the link is gone, and only the caller
//! can decide whether running it twice is safe. Exactly:
//!
//! - a call made while a connection is live goes out on that connection, as with a
//!   [`Client`];
//! - a call in flight when that connection drops fails with [`Error::Closed`] (or, when
//!   the link went silent instead of closing, with [`Error::IdleTimeout`] once the
//!   heartbeat gives up on it): it may or may not have run on the server, and it is not
//!   sent again;
//! - a call made while the client is away (reconnecting, or its login hook still running)
//!   fails at once with [`Error::Disconnected`]: nothing was sent;
//! - a call made after [`close`](ReconnectingClient::close), or once the back-off gave up,
//!   fails at once with [`Error::Closed`]: nothing was sent;
//! - a server that is shutting down refuses new calls with [`Error::ShuttingDown`] (they
//!   did not run); the client reconnects once that server has closed the connection.
//!
//! Callers that want to wait for the link instead of failing use
//! [`connected`](ReconnectingClient::connected) (bounded by their own time-out).
//!
//! A server that closes the connection (shutdown, restart, crash with the host up) is
//! noticed at once; one that vanishes silently (host down, cable cut) is noticed by the
//! heartbeat, after [`Config::idle_timeout`](crate::Config::idle_timeout).

use std::borrow::Cow;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_listener::Event;

use crate::calls::Calls;
use crate::channels::{self, ChannelCalls, Owner, Position, Resubscribe, Subscription};
use crate::client::{Client, ClientBuilder};
use crate::connection::Connection;
use crate::error::Error;
use crate::runtime::{BoxFuture, Runtime};
use crate::server::resolve;

/// How long a [`ReconnectingClient`] waits between connection attempts.
///
/// The pause before retry `n` (counted from 0 within one outage) is
/// `initial × factor^n`, at most `max`, shortened by a random fraction of up to `jitter`
/// of itself so that many clients dropped at once by a restarting server do not all come
/// back at the same instant. The defaults are 100 ms doubling up to 10 s, with 20 % jitter,
/// retrying for ever.
///
/// ```
/// use std::time::Duration;
/// use zserver_core::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
///     .with_factor(3.0)
///     .with_jitter(0.0)
///     .give_up_after(10);
/// assert_eq!(backoff.delay(0), Duration::from_millis(50));
/// assert_eq!(backoff.delay(1), Duration::from_millis(150));
/// assert_eq!(backoff.delay(20), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The pause before the first retry after a connection is lost.
    pub initial: Duration,
    /// The longest pause between two attempts.
    pub max: Duration,
    /// How much each pause grows over the previous one (values below 1 count as 1).
    pub factor: f64,
    /// The fraction (0 to 1) by which each pause may be shortened at random; 0 turns
    /// jitter off.
    pub jitter: f64,
    /// Stop after this many failed attempts in a row (the client then ends in
    /// [`LinkState::GaveUp`]); `None` retries for ever. At least one attempt is made per
    /// outage (0 counts as 1).
    pub give_up_after: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            jitter: 0.2,
            give_up_after: None,
        }
    }
}

impl Backoff {
    /// Pauses from `initial` growing up to `max`, with the default factor and jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }

    /// Sets [`factor`](Self::factor).
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Gives up after `attempts` failed attempts in a row (see
    /// [`give_up_after`](Self::give_up_after)).
    pub fn give_up_after(mut self, attempts: u32) -> Self {
        self.give_up_after = Some(attempts);
        self
    }

    /// The pause before retry `retry` (0-based), before jitter: `initial × factor^retry`,
    /// at most `max`.
    pub fn delay(&self, retry: u32) -> Duration {
        let initial = self.initial.as_secs_f64();
        let max = self.max.as_secs_f64();
        if initial <= 0.0 {
            return Duration::ZERO;
        }
        let factor = if self.factor.is_finite() && self.factor > 1.0 {
            self.factor
        } else {
            1.0
        };
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = (initial * factor.powi(exponent)).min(max);
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }

    /// [`delay`](Self::delay) shortened by up to `jitter` of itself, at random.
    fn pause(&self, retry: u32) -> Duration {
        let base = self.delay(retry);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base.mul_f64(1.0 - jitter * fastrand::f64())
    }
}

/// Where a [`ReconnectingClient`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// No live connection: connecting, waiting out the back-off, or running the login hook.
    /// Calls fail at once with [`Error::Disconnected`].
    Connecting,
    /// A live connection that passed the login hook; calls go out on it.
    Connected,
    /// The back-off's [`give_up_after`](Backoff::give_up_after) limit was reached; the
    /// client no longer tries ([`ReconnectingClient::last_error`] says why the last attempt
    /// failed). Calls fail with [`Error::Closed`].
    GaveUp,
    /// [`close`](ReconnectingClient::close) was called (or every handle dropped). Calls fail
    /// with [`Error::Closed`].
    Closed,
}

type Hook = Arc<dyn Fn(Client) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// Sets up a [`ReconnectingClient`]: made by [`ClientBuilder::reconnecting`] or
/// [`ReconnectingClient::builder`].
pub struct ReconnectingBuilder {
    builder: ClientBuilder,
    addr: SocketAddr,
    backoff: Backoff,
    hook: Option<Hook>,
}

impl ReconnectingBuilder {
    /// The pauses between connection attempts (default: [`Backoff::default`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A login hook, run on every new connection (the first and each reconnect) before it
    /// is offered to callers: [`current`](ReconnectingClient::current) and the call
    /// methods fail with [`Error::Disconnected`] until it returns `Ok`.
    ///
    /// If it fails, that connection is closed, the attempt counts as failed (its error is
    /// [`last_error`](ReconnectingClient::last_error)) and the back-off continues; from
    /// [`connect`](Self::connect), the first attempt's error is returned instead. The hook
    /// should bound its own calls (`request(..).timeout(..)`): a hook that never returns stalls
    /// reconnection until [`close`](ReconnectingClient::close). It should not hold a
    /// [`ReconnectingClient`] of its own: that clone would keep the background task alive
    /// after the application dropped its handles.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |client| Box::pin(hook(client))));
        self
    }

    /// Makes the first connection (and runs the login hook) now, returning its error if it
    /// fails; later drops are reconnected in the background.
    pub async fn connect(self) -> Result<ReconnectingClient, Error> {
        let shared = self.into_shared();
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        let client = shared.attempt().await?;
        shared.publish(client.clone(), false);
        Ok(ReconnectingClient::spawn(shared, Some(client)))
    }

    /// Returns at once and connects in the background (first attempt at once, then per the
    /// back-off); [`connected`](ReconnectingClient::connected) waits for the link.
    pub fn start(self) -> ReconnectingClient {
        ReconnectingClient::spawn(self.into_shared(), None)
    }

    fn into_shared(self) -> Arc<Shared> {
        Arc::new(Shared {
            runtime: self.builder.transport().runtime(),
            builder: self.builder,
            addr: self.addr,
            backoff: self.backoff,
            hook: self.hook,
            link: Mutex::new(Link {
                state: LinkState::Connecting,
                client: None,
                last_error: None,
            }),
            changed: Event::new(),
            stopping: AtomicBool::new(false),
            stop_event: Event::new(),
            finished: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            resubscribe: Arc::default(),
        })
    }
}

impl ClientBuilder {
    /// A [`ReconnectingClient`] to `addr` built from this builder (its transport, handlers,
    /// settings, key pair and pin are used for every connection). The address is resolved
    /// once, now.
    pub fn reconnecting(self, addr: impl ToSocketAddrs) -> Result<ReconnectingBuilder, Error> {
        ReconnectingClient::builder(self, addr)
    }
}

struct Link {
    state: LinkState,
    client: Option<Client>,
    last_error: Option<Error>,
}

struct Shared {
    builder: ClientBuilder,
    addr: SocketAddr,
    backoff: Backoff,
    hook: Option<Hook>,
    runtime: Arc<dyn Runtime>,
    link: Mutex<Link>,
    /// Fires on every change of `link.state`.
    changed: Event,
    stopping: AtomicBool,
    stop_event: Event,
    /// Set when the background task has ended.
    finished: AtomicBool,
    reconnects: AtomicU64,
    attempts: AtomicU64,
    /// The channel subscriptions made through this client, made again on every new
    /// connection after the login hook.
    resubscribe: Arc<Resubscribe>,
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Completes once [`stop`](Self::stop) has been called.
    async fn stop_requested(&self) {
        while !self.is_stopping() {
            let listener = self.stop_event.listen();
            if self.is_stopping() {
                return;
            }
            listener.await;
        }
    }

    /// Stops reconnecting and closes the live connection, if any.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let client = {
            let mut link = self.link();
            if link.state != LinkState::GaveUp {
                link.state = LinkState::Closed;
            }
            link.client.take()
        };
        if let Some(client) = client {
            client.connection().begin_close();
        }
        self.stop_event.notify(usize::MAX);
        self.changed.notify(usize::MAX);
    }

    /// Connects once and runs the login hook; a connection whose hook fails is closed.
    async fn attempt(&self) -> Result<Client, Error> {
        let client = self.builder.clone().connect(self.addr).await?;
        if let Some(hook) = &self.hook {
            if let Err(e) = hook(client.clone()).await {
                client.connection().begin_close();
                return Err(e);
            }
        }
        if let Err(e) = self.resubscribe.again(client.connection()).await {
            client.connection().begin_close();
            return Err(e);
        }
        Ok(client)
    }

    /// Offers a new connection to callers; false (and the connection closed) if the client
    /// was stopped meanwhile.
    fn publish(&self, client: Client, reconnect: bool) -> bool {
        {
            let mut link = self.link();
            if !self.is_stopping() {
                link.state = LinkState::Connected;
                link.client = Some(client);
                link.last_error = None;
                if reconnect {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                drop(link);
                self.changed.notify(usize::MAX);
                return true;
            }
        }
        client.connection().begin_close();
        false
    }

    /// The live connection was lost: callers are refused until the next one.
    fn lost(&self) {
        let mut link = self.link();
        if link.state == LinkState::Connected {
            link.state = LinkState::Connecting;
        }
        link.client = None;
        link.last_error = Some(Error::Closed);
        drop(link);
        self.changed.notify(usize::MAX);
    }

    fn failed(&self, error: Error, give_up: bool) {
        let mut link = self.link();
        link.last_error = Some(error);
        if give_up && link.state == LinkState::Connecting {
            link.state = LinkState::GaveUp;
        }
        drop(link);
        self.changed.notify(usize::MAX);
    }

    /// Awaits `fut`, or `None` once the client is stopped.
    async fn unless_stopped<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(fut.await) }, async {
            self.stop_requested().await;
            None
        })
        .await
    }

    /// The background task: watches the live connection, reconnects when it drops.
    async fn run(self: Arc<Self>, mut live: Option<Client>) {
        // Pause before the next attempt: not before the very first one of `start()`.
        let mut pause = live.is_some();
        // Whether a connection was offered before: the next one is then a reconnect.
        let mut ever_connected = live.is_some();
        'outer: loop {
            if let Some(client) = live.take() {
                if self
                    .unless_stopped(client.connection().closed())
                    .await
                    .is_none()
                {
                    break;
                }
                drop(client);
                self.lost();
                tracing::info!(addr = %self.addr, "connection lost; reconnecting");
            }
            // Failed attempts in a row, and pauses taken, in this outage.
            let (mut failures, mut retry) = (0u32, 0u32);
            loop {
                if pause {
                    let sleep = self.runtime.sleep(self.backoff.pause(retry));
                    retry = retry.saturating_add(1);
                    if self.unless_stopped(sleep).await.is_none() {
                        break 'outer;
                    }
                }
                pause = true;
                if self.is_stopping() {
                    break 'outer;
                }
                self.attempts.fetch_add(1, Ordering::Relaxed);
                match self.unless_stopped(self.attempt()).await {
                    None => break 'outer,
                    Some(Ok(client)) => {
                        if !self.publish(client.clone(), ever_connected) {
                            break 'outer;
                        }
                        ever_connected = true;
                        tracing::info!(addr = %self.addr, "connected");
                        live = Some(client);
                        continue 'outer;
                    }
                    Some(Err(e)) => {
                        failures = failures.saturating_add(1);
                        let give_up = self.backoff.give_up_after.is_some_and(|n| failures >= n);
                        tracing::debug!(addr = %self.addr, error = %e, failures, "connection attempt failed");
                        self.failed(e, give_up);
                        if give_up {
                            tracing::warn!(addr = %self.addr, failures, "giving up reconnecting");
                            break 'outer;
                        }
                    }
                }
            }
        }
        self.finished.store(true, Ordering::Release);
        self.changed.notify(usize::MAX);
    }
}

/// A client that reconnects with back-off when its connection drops, runs a login hook on
/// every new connection, and fails calls it cannot make with an error instead of queueing
/// or repeating them (see the [module documentation](crate::reconnect) for exactly which error when).
///
/// Cheap to clone; every clone shares one connection and one background task. The task
/// (spawned on the transport's runtime) watches the live connection and, when it closes,
/// reconnects per the [`Backoff`]; it ends on [`close`](Self::close), when every clone has
/// been dropped, or when the back-off gives up.
///
/// ```no_run
/// # async fn demo(transport: std::sync::Arc<dyn zserver_core::Transport>) -> Result<(), zserver_core::Error> {
/// use std::time::Duration;
/// use zserver_core::{Backoff, Calls, Client, Error};
///
/// let client = Client::builder(transport)
///     .reconnecting("127.0.0.1:7000")?
///     .backoff(Backoff::new(Duration::from_millis(100), Duration::from_secs(10)))
///     .on_connect(|client: Client| async move {
///         // Runs after every (re)connect, before callers get the connection.
///         client.request("login").timeout(Duration::from_secs(5)).console("ann").await?;
///         Ok(())
///     })
///     .connect()
///     .await?;
/// match client.console("hello", "world").await {
///     Ok(answer) => println!("{answer}"),
///     // Away: nothing was sent. Wait for the link (bounded), or try again later.
///     Err(Error::Disconnected) => println!("reconnecting"),
///     // The link dropped (or went silent) with the call in flight: it may have run;
///     // it is not re-sent.
///     Err(Error::Closed | Error::IdleTimeout(_)) => println!("lost"),
///     Err(e) => println!("failed: {e}"),
/// }
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReconnectingClient {
    handle: Arc<Handle>,
}

/// Stops the background task when the last [`ReconnectingClient`] clone is dropped.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl std::fmt::Debug for ReconnectingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingClient")
            .field("addr", &self.shared().addr)
            .field("state", &self.state())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

impl ReconnectingClient {
    /// A builder for a client that connects with `builder` to `addr` (resolved once, now).
    pub fn builder(
        builder: ClientBuilder,
        addr: impl ToSocketAddrs,
    ) -> Result<ReconnectingBuilder, Error> {
        Ok(ReconnectingBuilder {
            builder,
            addr: resolve(addr)?,
            backoff: Backoff::default(),
            hook: None,
        })
    }

    fn spawn(shared: Arc<Shared>, live: Option<Client>) -> Self {
        shared.runtime.spawn(Box::pin(shared.clone().run(live)));
        Self {
            handle: Arc::new(Handle(shared)),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.shared().addr
    }

    /// The live connection, or [`Error::Disconnected`] while away (reconnecting, login hook
    /// running), or [`Error::Closed`] once closed or given up.
    pub fn current(&self) -> Result<Client, Error> {
        let link = self.shared().link();
        match (link.state, &link.client) {
            (LinkState::Connected, Some(client)) if !client.connection().is_closed() => {
                Ok(client.clone())
            }
            (LinkState::Connected | LinkState::Connecting, _) => Err(Error::Disconnected),
            (LinkState::GaveUp | LinkState::Closed, _) => Err(Error::Closed),
        }
    }

    /// Waits for a live connection (one that passed the login hook) and returns it; fails
    /// with [`Error::Closed`] if the client is closed or gives up first. It waits for ever
    /// otherwise: bound it with a time-out.
    pub async fn connected(&self) -> Result<Client, Error> {
        loop {
            let listener = self.shared().changed.listen();
            match self.current() {
                Err(Error::Disconnected) => listener.await,
                done => return done,
            }
        }
    }

    /// Where the client stands now.
    pub fn state(&self) -> LinkState {
        let link = self.shared().link();
        match (link.state, &link.client) {
            (LinkState::Connected, Some(client)) if client.connection().is_closed() => {
                LinkState::Connecting
            }
            (state, _) => state,
        }
    }

    /// Waits until the state is no longer `state` and returns the new one (for example,
    /// `wait_change(LinkState::Connected)` completes when the connection drops).
    pub async fn wait_change(&self, state: LinkState) -> LinkState {
        loop {
            let listener = self.shared().changed.listen();
            let now = self.state();
            if now != state {
                return now;
            }
            listener.await;
        }
    }

    /// Why the last connection attempt failed (or [`Error::Closed`] after a drop); `None`
    /// while connected.
    pub fn last_error(&self) -> Option<Error> {
        self.shared().link().last_error.clone()
    }

    /// How many times a lost connection has been replaced by a new one.
    pub fn reconnects(&self) -> u64 {
        self.shared().reconnects.load(Ordering::Relaxed)
    }

    /// Connection attempts made so far, successful or not (the login hook included).
    pub fn attempts(&self) -> u64 {
        self.shared().attempts.load(Ordering::Relaxed)
    }

    /// Stops reconnecting, closes the live connection (calls in flight on it fail with
    /// [`Error::Closed`]) and waits until the background task has ended. Later calls fail
    /// with [`Error::Closed`]. Dropping every clone does the same without waiting.
    pub async fn close(&self) {
        let shared = self.shared();
        let client = shared.link().client.clone();
        shared.stop();
        if let Some(client) = client {
            client.connection().closed().await;
        }
        while !shared.finished.load(Ordering::Acquire) {
            let listener = shared.changed.listen();
            if shared.finished.load(Ordering::Acquire) {
                break;
            }
            listener.await;
        }
    }
}

/// Calls go over the live connection; while there is none they fail at once with
/// [`Error::Disconnected`] (or [`Error::Closed`] once closed). A send that returned `Ok` was
/// queued, not necessarily delivered: it is lost without an error if the connection drops
/// before it is written.
impl Calls for ReconnectingClient {
    fn link(&self) -> Result<Cow<'_, Connection>, Error> {
        Ok(Cow::Owned(self.current()?.connection().clone()))
    }
}

/// Subscriptions made through a reconnecting client are made again on every new
/// connection (after the login hook), each from its last position: the subscription sees
/// [`Event::Resubscribed`](crate::channels::Event::Resubscribed), then what it missed.
impl ChannelCalls for ReconnectingClient {
    async fn subscribe_from(
        &self,
        channel: &str,
        since: Option<Position>,
    ) -> Result<Subscription, Error> {
        let conn = self.link()?.into_owned();
        let (shared, rx) = channels::new_shared(channel);
        let answer = channels::subscribe_on(&conn, &shared, since, false).await?;
        let resubscribe = self.shared().resubscribe.clone();
        resubscribe.add(shared.clone());
        let client = self.clone();
        let link: channels::Link = Arc::new(move || Ok(client.current()?.connection().clone()));
        let owner = Owner::Reconnecting(resubscribe, link);
        Ok(Subscription::new(shared, rx, answer, owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap() {
        let b = Backoff::default().with_jitter(0.0);
        let ms = |n| b.delay(n).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(6), ms(7)],
            [100, 200, 400, 800, 6400, 10_000]
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
        let flat = Backoff::default().with_factor(0.5);
        assert_eq!(flat.delay(5), Duration::from_millis(100));
        let nan = Backoff::default().with_factor(f64::NAN);
        assert_eq!(nan.delay(3), Duration::from_millis(100));
        let zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.delay(100), Duration::ZERO);
    }

    #[test]
    fn jitter_only_shortens() {
        let b = Backoff::default().with_jitter(0.5);
        for n in 0..10 {
            for _ in 0..100 {
                let p = b.pause(n);
                assert!(
                    p <= b.delay(n) && p >= b.delay(n) / 2,
                    "{p:?} for retry {n}"
                );
            }
        }
        let wild = Backoff::default().with_jitter(7.0);
        assert!(wild.pause(0) <= wild.delay(0));
    }
}
