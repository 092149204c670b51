//! The client: one connection to a server, with its own handlers for calls the server
//! pushes back over the same connection.

use std::borrow::Cow;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::calls::Calls;
use crate::config::Config;
use crate::connection::driver::Setup;
use crate::connection::{next_connection_id, Connection};
use crate::error::Error;
use crate::handler::{InFlight, Router};
use crate::link;
use crate::secure::{unhex, Keypair, Negotiation};
use crate::server::resolve;
use crate::stable;
use crate::transport::{BoundTransport, Transport};

/// How long [`ClientBuilder::connect`] waits for TCP and the handshake by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets up a [`Client`]: its transport, the handlers the server may call, and settings.
/// Cloning it gives a builder for another connection with the same settings.
#[derive(Clone)]
pub struct ClientBuilder {
    transport: Arc<dyn Transport>,
    router: Router,
    config: Config,
    connect_timeout: Duration,
    keypair: Option<Keypair>,
    pin: Option<[u8; 32]>,
    local: Option<SocketAddr>,
    /// Carry connections in WebSocket: the request's path and `Host`.
    #[cfg(feature = "ws")]
    websocket: Option<(String, Option<String>)>,
    /// TLS for WebSocket connections: the configuration and the server name to verify
    /// (set by [`connect_ws`](Self::connect_ws) for a `wss://` URL).
    #[cfg(feature = "tls")]
    tls: (Option<Arc<rustls::ClientConfig>>, Option<String>),
}

impl ClientBuilder {
    /// A client on `transport` with no handlers and default settings.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            router: Router::new(),
            config: Config::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keypair: None,
            pin: None,
            local: None,
            #[cfg(feature = "ws")]
            websocket: None,
            #[cfg(feature = "tls")]
            tls: (None, None),
        }
    }

    /// Handlers the server can call on this client (server push).
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Connection settings.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// How long to wait for the TCP connection and the protocol handshake.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Accepts only a server whose public key is `key`; any other is refused with
    /// [`Error::KeyMismatch`] during the handshake, before any command is sent.
    pub fn pin_server_key(mut self, key: [u8; 32]) -> Self {
        self.pin = Some(key);
        self
    }

    /// Like [`pin_server_key`](Self::pin_server_key), from the 64 hex digits a server prints.
    pub fn pin_server_fingerprint(self, hex: &str) -> Result<Self, Error> {
        let key = unhex(hex.trim())
            .ok_or_else(|| Error::Handshake(format!("`{hex}` is not a 64-digit hex key")))?;
        Ok(self.pin_server_key(key))
    }

    /// This client's own static key pair (the server sees its public key as
    /// [`Connection::peer_key`]). Without one, a fresh key pair is made per connection.
    pub fn keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// Connects from the local address `local` (bound before connecting; port 0 lets the
    /// system pick the port), for example to spread many connections over the source
    /// addresses 127.0.0.2, 127.0.0.3, … on loopback. Needs a transport that implements
    /// [`Transport::connect_from`] (the built-in back ends do).
    ///
    /// ```no_run
    /// # async fn demo(transport: std::sync::Arc<dyn zserver_core::Transport>) -> Result<(), zserver_core::Error> {
    /// let client = zserver_core::Client::builder(transport)
    ///     .bind(([127, 0, 0, 2], 0).into())
    ///     .connect("127.0.0.1:7000")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn bind(mut self, local: SocketAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// The transport this builder connects with.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Carries this builder's connections in WebSocket binary messages (over its
    /// transport's TCP) instead of bare TCP, requesting `path` (such as `/`); then
    /// [`connect`](Self::connect) and [`reconnecting`](Self::reconnecting) take the
    /// server's WebSocket address. See [`crate::ws`].
    #[cfg(feature = "ws")]
    pub fn websocket(mut self, path: impl Into<String>) -> Self {
        self.websocket = Some((path.into(), None));
        self
    }

    /// The TLS settings (the certificates to trust) for `wss://` URLs given to
    /// [`connect_ws`](Self::connect_ws).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls.0 = Some(config);
        self
    }

    /// Connects over WebSocket to `url`, `ws://host[:port][/path]` (port 80 by default):
    /// the protocol is the same as over TCP, Noise encryption and key pinning included.
    /// `wss://host[:port][/path]` (port 443 by default; feature `tls`) adds TLS, verified
    /// for `host` by the configuration given to [`tls_config`](Self::tls_config).
    ///
    /// ```no_run
    /// # async fn demo(transport: std::sync::Arc<dyn zserver_core::Transport>) -> Result<(), zserver_core::Error> {
    /// let client = zserver_core::Client::builder(transport).connect_ws("ws://127.0.0.1:7180/").await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "ws")]
    pub async fn connect_ws(mut self, url: &str) -> Result<Client, Error> {
        let target = crate::ws::WsUrl::parse(url)?;
        #[cfg(feature = "tls")]
        if target.tls {
            if self.tls.0.is_none() {
                let why = format!(
                    "{url}: wss:// needs ClientBuilder::tls_config (the certificates to trust)"
                );
                return Err(Error::Io(why));
            }
            self.tls.1 = Some(target.host.clone());
        }
        self.websocket = Some((target.path, Some(target.authority)));
        self.connect((target.host.as_str(), target.port)).await
    }

    /// The transport connections go over: this builder's, or WebSocket over it.
    fn carrier(&self) -> Arc<dyn Transport> {
        let base = match self.local {
            Some(local) => Arc::new(BoundTransport::new(self.transport.clone(), local)),
            None => self.transport.clone(),
        };
        #[cfg(feature = "ws")]
        if let Some(ws) = self.websocket.as_ref().map(|(path, host)| {
            let mut ws = crate::ws::WsTransport::new(base.clone())
                .path(path.clone())
                .max_frame(self.config.max_frame);
            if let Some(host) = host {
                ws = ws.host(host.clone());
            }
            #[cfg(feature = "tls")]
            if let (Some(config), Some(name)) = &self.tls {
                ws = ws.tls(config.clone(), name.clone());
            }
            Arc::new(ws) as Arc<dyn Transport>
        }) {
            return ws;
        }
        base
    }

    /// Connects to `addr` and completes the handshake.
    pub async fn connect(self, addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let addr = resolve(addr)?;
        let transport = self.carrier();
        let runtime = transport.runtime();
        let keypair = self.keypair.clone().unwrap_or_else(Keypair::generate);
        let attempt = async {
            let (peer, mut read, mut write, session) = match &self.config.stable {
                Some(stable) => {
                    let (peer, read, write, session) =
                        stable::connect(&transport, addr, stable).await?;
                    (peer, read, write, Some(session))
                }
                None => {
                    let io = transport.connect(addr).await?;
                    let peer = io.peer_addr();
                    let (read, write) = io.into_halves();
                    (peer, read, write, None)
                }
            };
            let negotiation = Negotiation::client(&self.config, &keypair, self.pin);
            let shaken = link::establish(
                &mut read,
                &mut write,
                negotiation,
                &|| runtime.now(),
                session.as_ref(),
            )
            .await?;
            Ok::<_, Error>((peer, read, write, shaken))
        };
        let timeout = runtime.sleep(self.connect_timeout);
        let (peer, read, write, shaken) = futures_lite::future::or(attempt, async {
            timeout.await;
            Err(Error::Timeout)
        })
        .await?;
        let setup = Setup {
            id: next_connection_id(),
            runtime,
            router: Arc::new(crate::channels::client_router().merge(self.router)),
            config: Arc::new(self.config),
            in_flight: Arc::new(InFlight::default()),
            proxy: None,
            on_close: None,
        };
        Ok(Client {
            inner: Arc::new(ClientInner(Connection::start(
                setup, peer, read, write, shaken,
            ))),
        })
    }
}

/// A connection to a server: calls and sends through [`Calls`], the connection itself
/// (its id, keys, statistics, closing) through [`connection`](Self::connection).
/// Cheap to clone; the connection closes when the last clone is dropped.
///
/// ```no_run
/// # async fn demo(transport: std::sync::Arc<dyn zserver_core::Transport>) -> Result<(), zserver_core::Error> {
/// use zserver_core::Calls;
/// let client = zserver_core::Client::builder(transport).connect("127.0.0.1:7000").await?;
/// let answer = client.console("hello", "world").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner(Connection);

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.0.begin_close();
    }
}

impl Client {
    /// A builder for a client on `transport`.
    pub fn builder(transport: Arc<dyn Transport>) -> ClientBuilder {
        ClientBuilder::new(transport)
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.inner.0
    }
}

impl Calls for Client {
    fn link(&self) -> Result<Cow<'_, Connection>, Error> {
        Ok(Cow::Borrowed(&self.inner.0))
    }
}

impl crate::channels::ChannelCalls for Client {}

impl AsRef<Connection> for Client {
    fn as_ref(&self) -> &Connection {
        &self.inner.0
    }
}
