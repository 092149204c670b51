//! One live connection, in layers: this module is the [`Connection`] handle and the state
//! it shares with its driver; [`calls`] is the call API; [`outbox`] queues frames for the
//! driver to write; [`driver`] is the connection's one task, which reads, dispatches
//! ([`dispatch`]: handlers and hooks) and writes; [`streams`] opens and feeds streams.
//!
//! The handle knows nothing of handlers or hooks: the router is held by the driver, and
//! the one thing the handle asks of it (the send hooks) comes through [`SendCheck`].

mod calls;
pub(crate) mod dispatch;
pub(crate) mod driver;
mod outbox;
mod panics;
mod streams;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

use crate::config::Config;
use crate::error::Error;
use crate::proto::{CommandKind, Packer};
use crate::request::Wake;
use crate::runtime::Runtime;
use crate::sequential::Sequential;
use crate::stats::{Counters, Stats};

use outbox::State;

/// Called once when a connection ends, before anyone waiting on [`Connection::closed`]
/// is woken.
pub(crate) type OnClose = Box<dyn FnOnce(&Connection) + Send>;

/// What the handle asks of the layer above it before a command leaves: the router's
/// send hooks, which may veto it.
pub(crate) trait SendCheck: Send + Sync {
    /// Runs the send hooks on a command about to leave on `conn`; an error vetoes it.
    fn check_send(
        &self,
        conn: &Connection,
        command: &str,
        kind: CommandKind,
        payload_len: usize,
    ) -> Result<(), Error>;
}

struct Shared {
    id: u64,
    peer: SocketAddr,
    proxy: Option<SocketAddr>,
    peer_key: Option<[u8; 32]>,
    /// Compresses what is sent, with the codec negotiated in the handshake (if any).
    packer: Packer,
    runtime: Arc<dyn Runtime>,
    /// The send hooks, when the router has any.
    send_check: Option<Arc<dyn SendCheck>>,
    config: Arc<Config>,
    /// The protocol state (framing, records, the outgoing queue, calls awaiting replies,
    /// timers) and the driver's waker: one lock for handles and driver alike.
    state: Mutex<State>,
    /// Bytes queued to send (mirrored beside the state so back-pressure checks need no lock).
    queued: AtomicUsize,
    /// Set by the reader when it hands the driver's turn to the writer (see
    /// [`Connection::yield_to_writer`]).
    handed_over: AtomicBool,
    /// Set by a handle that registered a call's deadline: the driver re-polls its reader,
    /// which re-arms the one timer if that deadline is the earliest.
    rearm: AtomicBool,
    write_space: Event,
    counters: Arc<Counters>,
    closed: AtomicBool,
    /// Set once closing is complete (owner notified), just before `closed_event` fires.
    ended: AtomicBool,
    closed_event: Event,
    sequential: Option<Sequential>,
    on_close: Mutex<Option<OnClose>>,
    /// Per-connection state of other modules (such as services' remote objects), one
    /// value per type; cleared when the connection closes.
    extensions: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// The `connection` tracing span (id, peer, user): the reader and spawned handlers run
    /// in it.
    span: tracing::Span,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its state valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle to one connection. Cheap to clone; every clone refers to the same connection.
///
/// Calls may be made from any task and any number may be in flight at once: replies are
/// matched by request id and may arrive in any order.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A process-wide unique id for a new connection.
pub(crate) fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Connection {
    /// This connection's id, unique within the process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The peer's address: on a server, the client's. Behind a trusted proxy
    /// ([`Config::trusted_proxies`](crate::Config::trusted_proxies)) it is the client's
    /// address as the proxy announced it (its port 0 if the proxy named none), and the
    /// proxy's own is [`proxy_addr`](Self::proxy_addr).
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The trusted proxy this connection came through, when [`peer_addr`](Self::peer_addr)
    /// is the client's address as that proxy announced it; `None` for a direct connection
    /// (and on a client).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.shared.proxy
    }

    /// The peer's static public key, proven in the handshake (`None` on a plain link).
    pub fn peer_key(&self) -> Option<[u8; 32]> {
        self.shared.peer_key
    }

    /// Whether this connection is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.shared.peer_key.is_some()
    }

    /// The name of the payload codec negotiated in the handshake (such as `"lz4"`), or
    /// `None` when payloads travel as they are.
    pub fn compression(&self) -> Option<&'static str> {
        self.shared.packer.codec_name()
    }

    /// This connection's tracing span, `connection` with fields `id`, `peer`, `proxy`
    /// (only behind a trusted proxy) and `user` (empty until recorded): its reader task and spawned handlers run in it, so every
    /// event they log carries them. A login handler records the user once known:
    /// `conn.span().record("user", name)`.
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// A snapshot of this connection's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the peer announced that it is shutting down.
    pub fn peer_going_away(&self) -> bool {
        lock(&self.shared.state).proto.peer_going_away()
    }

    /// Calls awaiting a reply on this connection.
    pub fn calls_in_flight(&self) -> usize {
        lock(&self.shared.state).proto.calls_in_flight()
    }

    /// Completes when the connection has closed (and its server has forgotten it).
    pub async fn closed(&self) {
        let ended = || self.shared.ended.load(Ordering::Acquire);
        loop {
            if ended() {
                return;
            }
            let listener = self.shared.closed_event.listen();
            if ended() {
                return;
            }
            listener.await;
        }
    }

    /// Closes gracefully: frames already queued are sent, then the connection closes.
    /// Calls still waiting for a reply fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.begin_close();
        self.closed().await;
    }

    /// Starts a graceful close without waiting for it: frames already queued are sent,
    /// then the connection closes.
    pub fn begin_close(&self) {
        let writer = {
            let mut state = lock(&self.shared.state);
            state.proto.close();
            state.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
    }

    /// Whether this side runs its handlers one at a time ([`Config::sequential`]).
    pub(crate) fn is_sequential(&self) -> bool {
        self.shared.sequential.is_some()
    }

    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.shared.runtime
    }

    /// Runs the `on_send` hooks (if any) before a command leaves: an error vetoes it.
    fn check_send(&self, command: &str, kind: CommandKind, payload: &[u8]) -> Result<(), Error> {
        match &self.shared.send_check {
            Some(check) => check.check_send(self, command, kind, payload.len()),
            None => Ok(()),
        }
    }

    /// This connection's value of type `T`, created (with `T::default()`) on first use and
    /// shared by every later call: state that a service built on top keeps with the
    /// connection (a login, a cache, counters), found from any handler through
    /// [`Context::connection`](crate::Context::connection). It is dropped when the
    /// connection closes; after that a fresh, unattached value is returned. Use a type of
    /// your own (a newtype) so that two services do not share one by accident.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use zserver_core::{Error, Router};
    ///
    /// #[derive(Default)]
    /// struct Calls(AtomicU64);
    ///
    /// let router = Router::new().call("count", |ctx, (): ()| async move {
    ///     let calls = ctx.connection().extension::<Calls>();
    ///     Ok::<_, Error>(calls.0.fetch_add(1, Ordering::Relaxed) + 1)
    /// });
    /// # assert!(router.contains("count"));
    /// ```
    pub fn extension<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut extensions = lock(&self.shared.extensions);
        // Found by type first, then one clone: no reference count touched on a miss.
        if let Some(found) = extensions.iter().find(|e| (***e).is::<T>()) {
            if let Ok(found) = found.clone().downcast::<T>() {
                return found;
            }
        }
        let made = Arc::new(T::default());
        if !self.is_closed() {
            // Few per connection, and every connection has its list: no spare capacity.
            extensions.reserve_exact(1);
            extensions.push(made.clone());
        }
        made
    }

    /// This connection's value of type `T`, if [`extension`](Self::extension) made one.
    pub(crate) fn find_extension<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        lock(&self.shared.extensions)
            .iter()
            .find(|e| (***e).is::<T>())
            .and_then(|e| e.clone().downcast::<T>().ok())
    }

    /// Closes at once: pending calls fail, queued frames are dropped, both tasks end.
    pub(crate) fn shut(&self, error: Error) {
        let s = &self.shared;
        if s.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // For calls and streams still waiting, a socket that failed (reset, broken pipe)
        // is the connection closing under them: they get `Closed`, as for a clean close.
        // (The protocol state fails its streams with it, waking their tasks.)
        let error = match error {
            Error::Io(_) => Error::Closed,
            other => other,
        };
        // What the connection owned (remote objects, caches) goes with it.
        drop(std::mem::take(&mut *lock(&s.extensions)));
        let wakes = lock(&s.state).proto.shut(error);
        wakes.into_iter().for_each(Wake::fire);
        self.begin_close();
        s.write_space.notify(usize::MAX);
        // The owner forgets the connection before waiters learn it is closed, so that
        // whoever awaited `closed()` sees it gone.
        let on_close = lock(&s.on_close).take();
        if let Some(on_close) = on_close {
            on_close(self);
        }
        s.ended.store(true, Ordering::Release);
        s.closed_event.notify(usize::MAX);
    }

    /// A handler panicked: its responder was dropped (the caller gets [`Error::NoResponse`]);
    /// the connection and the server carry on.
    pub(crate) fn handler_panicked(&self) {
        tracing::error!(conn = self.id(), "a handler panicked");
        Counters::bump(&self.shared.counters.handler_panics, 1);
    }

    /// A hook panicked: caught and counted; the connection carries on.
    pub(crate) fn hook_panicked(&self, command: &str) {
        tracing::error!(conn = self.id(), command, "a hook panicked");
        Counters::bump(&self.shared.counters.hook_panics, 1);
    }
}
