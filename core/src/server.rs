//! The server: accepts connections, runs the router's handlers for them, pushes to them,
//! and shuts down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use event_listener::Event;
use serde::Serialize;

use crate::channels::Channels;
use crate::config::Config;
use crate::connection::driver::{Handshaken, Setup};
use crate::connection::{next_connection_id, Connection};
use crate::error::Error;
use crate::handler::{InFlight, Router};
use crate::link;
use crate::proxy;
use crate::rate::RateLimiter;
use crate::runtime::Runtime;
use crate::secure::{Keypair, Negotiation};
use crate::stable::{self, Accepted, Sessions};
use crate::stats::{Counters, ServerStats};
use crate::transport::{BoxRead, BoxWrite, Listener, ServerIo, Transport, Upgrade};

/// How long the accept loop pauses after an accept error (such as running out of file
/// descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long shutdown waits for closing connections to flush before dropping them.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Sets up a [`Server`]: its transport, handlers and settings.
pub struct ServerBuilder {
    transport: Arc<dyn Transport>,
    router: Router,
    config: Config,
    keypair: Option<Keypair>,
    channels: Channels,
    rate: Option<RateLimiter>,
}

impl ServerBuilder {
    /// A server on `transport` with no handlers and default settings.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            router: Router::new(),
            config: Config::default(),
            keypair: None,
            channels: Channels::new(),
            rate: None,
        }
    }

    /// The channels clients may subscribe and publish to (by default none: every channel
    /// is refused). Keep a clone to publish from the app's code, or use
    /// [`Server::channels`].
    pub fn channels(mut self, channels: Channels) -> Self {
        self.channels = channels;
        self
    }

    /// Rate limits on what clients call, send and publish ([`crate::rate`]); keep a clone
    /// of `limiter` to replace them while the server runs. A connection's user, for the
    /// per-user buckets, is the one [`Channels::identify`] set.
    pub fn rate_limits(mut self, limiter: RateLimiter) -> Self {
        self.rate = Some(limiter);
        self
    }

    /// The handlers clients can call.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Connection settings for every accepted connection.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The server's long-term key pair. Without one (and without [`key_file`](Self::key_file))
    /// a new key pair is generated for each start, so clients cannot pin it across restarts.
    pub fn keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// Loads the server's long-term key pair from `path`, creating the file (owner-only)
    /// on first start.
    pub fn key_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        Ok(self.keypair(Keypair::load_or_create(path)?))
    }

    /// Binds `addr` (use port 0 for an ephemeral port) and starts accepting.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<Server, Error> {
        let addr = resolve(addr)?;
        let listener = self.transport.listen(addr).await?;
        let local_addr = listener.local_addr()?;
        let runtime = self.transport.runtime();
        self.channels.bind(&runtime, self.config.max_frame);
        let mut router = self.router.merge(self.channels.router());
        if let Some(rate) = &self.rate {
            rate.bind_users(Arc::new(Channels::user_of));
            self.channels.bind_rate(rate.clone());
            router.rate = Some(rate.clone());
        }
        let shared = Arc::new(ServerShared {
            keypair: self.keypair.unwrap_or_else(Keypair::generate),
            #[cfg(feature = "ws")]
            transport: self.transport.clone(),
            runtime: runtime.clone(),
            local_addr,
            router: Arc::new(router),
            config: Arc::new(self.config),
            channels: self.channels,
            conns: Mutex::new(HashMap::new()),
            retired: Counters::default(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            held: Mutex::new(Held::default()),
            in_flight: Arc::new(InFlight::default()),
            stopping: AtomicBool::new(false),
            stop_event: Event::new(),
            listening: AtomicUsize::new(1),
            listener_closed: Event::new(),
            sessions: Arc::new(Sessions::default()),
        });
        runtime.spawn(Box::pin(shared.clone().accept_loop(listener)));
        tracing::info!(
            addr = %local_addr,
            transport = self.transport.name(),
            key = %shared.keypair.fingerprint(),
            "listening"
        );
        Ok(Server { shared })
    }
}

/// Resolves an address argument to its first socket address.
pub(crate) fn resolve(addr: impl ToSocketAddrs) -> Result<SocketAddr, Error> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::Io("address resolved to nothing".into()))
}

/// A running server. Cheap to clone; it runs until [`shutdown`](Server::shutdown).
#[derive(Clone)]
pub struct Server {
    shared: Arc<ServerShared>,
}

struct ServerShared {
    keypair: Keypair,
    /// For the listeners added later ([`Server::listen_ws`]).
    #[cfg(feature = "ws")]
    transport: Arc<dyn Transport>,
    runtime: Arc<dyn Runtime>,
    local_addr: SocketAddr,
    router: Arc<Router>,
    config: Arc<Config>,
    channels: Channels,
    conns: Mutex<HashMap<u64, Connection>>,
    retired: Counters,
    accepted: AtomicU64,
    refused: AtomicU64,
    handshakes_failed: AtomicU64,
    /// Connections held, handshaking ones included, in all and per peer address.
    held: Mutex<Held>,
    in_flight: Arc<InFlight>,
    stopping: AtomicBool,
    stop_event: Event,
    /// Accept loops still running (one per listener).
    listening: AtomicUsize,
    listener_closed: Event,
    sessions: Arc<Sessions>,
}

/// Connections a server holds (from accept to close), for its connection limits.
#[derive(Default)]
struct Held {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One held connection's place in the limits; released when dropped.
struct Slot {
    server: Weak<ServerShared>,
    /// The address it counts against; `None` while a trusted proxy's connection has not
    /// said whose it is (counted in the total only).
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            let mut held = server.held.lock().unwrap_or_else(|e| e.into_inner());
            held.total -= 1;
            if let Some(ip) = self.ip {
                if let Some(n) = held.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        held.per_ip.remove(&ip);
                    }
                }
            }
        }
    }
}

impl Held {
    /// Counts one more connection from `ip`, unless it has the most already.
    fn add(&mut self, ip: IpAddr, most: usize) -> bool {
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= most {
            return false;
        }
        *self.per_ip.entry(ip).or_default() += 1;
        true
    }
}

impl ServerShared {
    /// Takes a place for a new connection from `ip` (`None`: not known yet, the total
    /// only), or `None` if a limit is reached.
    fn hold(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.config.max_connections {
            return None;
        }
        if let Some(ip) = ip {
            if !held.add(ip, self.config.max_connections_per_ip) {
                return None;
            }
        }
        held.total += 1;
        Some(Slot {
            server: Arc::downgrade(self),
            ip,
        })
    }

    /// Counts `slot` (held for the total only) against `ip` too, unless `ip` has the most
    /// connections already.
    fn hold_ip(&self, slot: &mut Slot, ip: IpAddr) -> bool {
        debug_assert!(slot.ip.is_none());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let added = held.add(ip, self.config.max_connections_per_ip);
        if added {
            slot.ip = Some(ip);
        }
        added
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    async fn stopped(&self) {
        while !self.is_stopping() {
            let listener = self.stop_event.listen();
            if self.is_stopping() {
                return;
            }
            listener.await;
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: Box<dyn Listener>) {
        let upgrade = listener.upgrade();
        loop {
            let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
                self.stopped().await;
                None
            })
            .await;
            match next {
                None => break,
                Some(Ok(io)) => {
                    let ip = io.peer_addr().ip();
                    // A trusted proxy's connection counts against the client's address,
                    // once known.
                    let ip = (!self.config.trusted_proxies.trusts(ip)).then_some(ip);
                    let Some(slot) = self.hold(ip) else {
                        // Over a limit: closed at once, before any byte is read.
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %io.peer_addr(), "connection limit reached");
                        continue;
                    };
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    let upgrade = upgrade.clone();
                    self.runtime
                        .spawn(Box::pin(self.clone().admit(io, slot, upgrade)));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed");
                    self.runtime.sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
        drop(listener);
        self.listening.fetch_sub(1, Ordering::SeqCst);
        self.listener_closed.notify(usize::MAX);
    }

    /// Handshakes with a new connection (upgrading it first if its listener says so) and,
    /// if that succeeds, starts serving it.
    async fn admit(
        self: Arc<Self>,
        io: Box<dyn ServerIo>,
        mut slot: Slot,
        upgrade: Option<Arc<dyn Upgrade>>,
    ) {
        let peer = io.peer_addr();
        let (read, write) = io.into_halves();
        let deadline = self.runtime.sleep(self.config.handshake_timeout);
        let opening = self.open(read, write, peer, &mut slot, upgrade);
        let shaken = futures_lite::future::or(opening, async {
            deadline.await;
            Err(Error::Timeout)
        });
        let Opened {
            read,
            write,
            handshaken,
            peer,
            proxy,
        } = match shaken.await {
            Ok(Some(opened)) => opened,
            // A new link for a stable session: handed over, nothing more to do here.
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                self.retired.errors_in.fetch_add(1, Ordering::Relaxed);
                self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if self.is_stopping() {
            return;
        }
        let weak = Arc::downgrade(&self);
        let id = next_connection_id();
        let setup = Setup {
            id,
            runtime: self.runtime.clone(),
            router: self.router.clone(),
            config: self.config.clone(),
            in_flight: self.in_flight.clone(),
            proxy,
            on_close: Some(Box::new(move |conn: &Connection| {
                drop(slot);
                if let Some(server) = weak.upgrade() {
                    // Under the map's lock, so that `stats()` never sees the connection
                    // both retired and live, or neither.
                    let mut conns = server.conns();
                    server.retired.absorb(conn.stats());
                    conns.remove(&conn.id());
                }
            })),
        };
        // Held across start so that a connection closing at once is removed after insertion,
        // and checked against shutdown under the same lock that shutdown walks the map with.
        let mut conns = self.conns();
        if self.is_stopping() {
            return;
        }
        let conn = Connection::start(setup, peer, read, write, handshaken);
        conns.insert(id, conn);
    }
}

impl ServerShared {
    /// Opens a new connection from `socket` (held in the limits by `slot`): a trusted
    /// proxy's PROXY header (when expected), the listener's upgrade (WebSocket), the
    /// stable-session hello (when on), the preambles and the handshake. `None` when the
    /// link resumed an existing stable session, the upgrade answered the peer in full, or
    /// the client's address (announced by a proxy) has the most connections already.
    async fn open(
        &self,
        mut read: BoxRead,
        mut write: BoxWrite,
        socket: SocketAddr,
        slot: &mut Slot,
        upgrade: Option<Arc<dyn Upgrade>>,
    ) -> Result<Option<Opened>, Error> {
        let proxies = &self.config.trusted_proxies;
        let mut peer = socket;
        if proxies.expects_header(socket.ip()) {
            let (source, rest) = proxy::read_header(read).await?;
            read = rest;
            peer = source.unwrap_or(socket);
        }
        if let Some(upgrade) = upgrade {
            let Some(upgraded) = upgrade.upgrade(read, write, peer, proxies).await? else {
                return Ok(None);
            };
            (read, write) = (upgraded.read, upgraded.write);
            peer = upgraded.client.unwrap_or(peer);
        }
        if slot.ip.is_none() && !self.hold_ip(slot, peer.ip()) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, proxy = %socket, "connection limit reached");
            return Ok(None);
        }
        let proxy = (peer != socket).then_some(socket);
        let (mut read, mut write, session) = match &self.config.stable {
            Some(stable) => {
                match stable::accept(read, write, &self.sessions, stable, &self.runtime).await? {
                    Accepted::New {
                        read,
                        write,
                        session,
                    } => (read, write, Some(session)),
                    Accepted::Resumed => return Ok(None),
                }
            }
            None => (read, write, None),
        };
        let negotiation = Negotiation::server(&self.config, &self.keypair);
        let shaken = link::establish(
            &mut read,
            &mut write,
            negotiation,
            &|| self.runtime.now(),
            session.as_ref(),
        )
        .await?;
        Ok(Some(Opened {
            read,
            write,
            handshaken: shaken,
            peer,
            proxy,
        }))
    }
}

/// A connection ready to start: its halves, what the handshake settled (keys, codec),
/// the client's address and the proxy's it came through (if any).
struct Opened {
    read: BoxRead,
    write: BoxWrite,
    handshaken: Handshaken,
    peer: SocketAddr,
    proxy: Option<SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.shared.local_addr)
            .field("key", &self.shared.keypair.fingerprint())
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl Server {
    /// A builder for a server on `transport`.
    pub fn builder(transport: Arc<dyn Transport>) -> ServerBuilder {
        ServerBuilder::new(transport)
    }

    /// Also listens for WebSocket connections on `addr` (port 0 for an ephemeral port),
    /// with the same router, sessions, settings and connection limits as the first
    /// listener, so that browser and TCP clients reach each other. Returns the address
    /// bound. Incoming messages are limited by [`Config::max_frame`] (see
    /// [`crate::ws::max_message`]); the upgrade runs under [`Config::handshake_timeout`].
    #[cfg(feature = "ws")]
    pub async fn listen_ws(
        &self,
        addr: impl ToSocketAddrs,
        options: crate::ws::WsOptions,
    ) -> Result<SocketAddr, Error> {
        let s = &self.shared;
        let ws = crate::ws::WsTransport::new(s.transport.clone())
            .options(options)
            .max_frame(s.config.max_frame);
        let listener = ws.listen(resolve(addr)?).await?;
        let local = listener.local_addr()?;
        // Counted before checking for shutdown, which waits for the count to reach 0.
        s.listening.fetch_add(1, Ordering::SeqCst);
        if s.stopping.load(Ordering::SeqCst) {
            s.listening.fetch_sub(1, Ordering::SeqCst);
            s.listener_closed.notify(usize::MAX);
            return Err(Error::ShuttingDown);
        }
        s.runtime.spawn(Box::pin(s.clone().accept_loop(listener)));
        tracing::info!(addr = %local, transport = "websocket", "listening");
        Ok(local)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The server's public key: what clients pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.keypair.public_key()
    }

    /// The server's public key as 64 hex digits.
    pub fn fingerprint(&self) -> String {
        self.shared.keypair.fingerprint()
    }

    /// The connection with this id, if it is open.
    pub fn connection(&self, id: u64) -> Option<Connection> {
        self.shared.conns().get(&id).cloned()
    }

    /// The server's channels: publish from the app's code, presence, history, unsubscribe.
    pub fn channels(&self) -> &Channels {
        &self.shared.channels
    }

    /// Every open connection.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared.conns().values().cloned().collect()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.shared.conns().len()
    }

    /// Sends a one-way message to every open connection; returns how many it was queued for.
    pub fn broadcast_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> usize {
        let payload = payload.as_ref();
        self.connections()
            .iter()
            .filter(|c| c.send_now(command, payload).is_ok())
            .count()
    }

    /// Sends a one-way serde value to every open connection.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        command: &str,
        value: &T,
    ) -> Result<usize, Error> {
        Ok(self.broadcast_bytes(command, postcard::to_allocvec(value)?))
    }

    /// Totals over every connection this server has had, and connection counts.
    pub fn stats(&self) -> ServerStats {
        let conns = self.shared.conns();
        let mut totals = self.shared.retired.snapshot();
        for conn in conns.values() {
            totals += conn.stats();
        }
        ServerStats {
            totals,
            connections_accepted: self.shared.accepted.load(Ordering::Relaxed),
            connections_refused: self.shared.refused.load(Ordering::Relaxed),
            connections_open: conns.len() as u64,
            handshakes_failed: self.shared.handshakes_failed.load(Ordering::Relaxed),
        }
    }

    /// Stable sessions alive, connected or waiting for their client to come back
    /// (always 0 without [`Config::stable`]).
    pub fn stable_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Calls being handled right now.
    pub fn calls_in_flight(&self) -> usize {
        self.shared.in_flight.count()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_stopping()
    }

    /// Serves until the process gets Ctrl-C (SIGINT) or SIGTERM, then stops gracefully
    /// ([`shutdown`](Self::shutdown)): the one call a `main` needs after `bind`. The signal
    /// handler is installed when this is called (see [`ctrl_c`](crate::ctrl_c)); a second
    /// Ctrl-C during the shutdown ends the process at once.
    ///
    /// ```no_run
    /// # futures_lite::future::block_on(async {
    /// # let server: zserver_core::Server = unimplemented!();
    /// server.run_until_ctrl_c().await?;
    /// # Ok::<_, zserver_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn run_until_ctrl_c(&self) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let signal = crate::ctrl_c();
        async move {
            signal.await?;
            tracing::info!("Ctrl-C: shutting down");
            self.shutdown().await;
            Ok(())
        }
    }

    /// Stops gracefully: stops accepting, refuses new calls with [`Error::ShuttingDown`],
    /// waits up to `Config::shutdown_grace` for calls in flight to be answered, then closes
    /// every connection after flushing what it has queued.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        // SeqCst, as `listen_ws` counts its loop and then checks this flag.
        if s.stopping.swap(true, Ordering::SeqCst) {
            return self.closed_all().await;
        }
        // Refuse new calls at once, on every connection admitted so far (admission checks
        // `stopping` under the same lock, so none slips in after this walk).
        for conn in self.connections() {
            conn.go_away();
        }
        s.stop_event.notify(usize::MAX);
        while s.listening.load(Ordering::SeqCst) > 0 {
            let listener = s.listener_closed.listen();
            if s.listening.load(Ordering::SeqCst) == 0 {
                break;
            }
            listener.await;
        }
        // Calls in flight get up to the grace period; once every connection has closed no
        // answer can be delivered, so there is nothing left to wait for.
        let grace = s.runtime.sleep(s.config.shutdown_grace);
        let answered = futures_lite::future::or(s.in_flight.idle(), self.closed_all());
        futures_lite::future::or(answered, grace).await;
        for conn in self.connections() {
            conn.begin_close();
        }
        let flush = s.runtime.sleep(FLUSH_GRACE);
        futures_lite::future::or(self.closed_all(), flush).await;
        for conn in self.connections() {
            conn.shut(Error::ShuttingDown);
        }
        tracing::info!(addr = %s.local_addr, "server stopped");
    }

    async fn closed_all(&self) {
        for conn in self.connections() {
            conn.closed().await;
        }
    }
}
