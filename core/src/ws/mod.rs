//! The WebSocket transport: the protocol's byte stream (preamble, Noise handshake,
//! records, frames: exactly as over TCP) carried in binary WebSocket messages, so that
//! browsers can connect. Message boundaries carry no meaning; a receiver concatenates.
//!
//! [`WsTransport`] wraps any back end's [`Transport`] (the WebSocket runs over its TCP
//! streams through futures-io, so one implementation serves tokio, async-std and smol).
//! A server listens on WebSocket beside TCP with [`Server::listen_ws`](crate::Server::listen_ws),
//! one router and one set of sessions for both; a client connects with
//! [`ClientBuilder::connect_ws`](crate::ClientBuilder::connect_ws).
//!
//! On the server side every accepted connection is upgraded in its own task, under the
//! connection limits and [`Config::handshake_timeout`](crate::Config::handshake_timeout)
//! like a TCP connection's preamble: a request head is at most [`MAX_HEAD`] bytes; a
//! browser's `Origin` must be allowed ([`WsOptions::allowed_origins`], else 403); a
//! request that does not ask for a WebSocket gets a file of [`WsOptions::web_root`]
//! (or 426 without one). Incoming messages are limited to [`max_message`] bytes; a text
//! message closes the connection.

mod files;
mod http;
mod stream;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use async_tungstenite::tungstenite::http::Uri;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::Error;
use crate::frame::DEFAULT_MAX_FRAME;
use crate::proxy::{forwarded_client, TrustedProxies};
use crate::runtime::Runtime;
use crate::secure::record::MAX_RECORD_PLAINTEXT;
use crate::transport::{
    BoxRead, BoxWrite, ClientIo, Listener, ServerIo, SplitClient, Transport, Upgrade, Upgraded,
};
use http::{origin_allowed, read_head, respond_text, respond_text_with, HeadError};
pub(crate) use stream::Duplex;
use stream::{halves, io_error};

pub use http::MAX_HEAD;

/// The most bytes zserver puts in one outgoing message: big enough that per-message
/// overhead is negligible, small enough that a receiver can start on a batch early.
pub const MAX_SEND: usize = 256 * 1024;

/// The largest incoming message (and frame) accepted by a side whose
/// [`Config::max_frame`](crate::Config::max_frame) is `max_frame`: room for one whole
/// frame or one whole record and their headers. A larger message closes the connection.
pub fn max_message(max_frame: usize) -> usize {
    max_frame.max(MAX_RECORD_PLAINTEXT) + 1024
}

/// Server-side settings of a WebSocket listener.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct WsOptions {
    /// Origins a browser page may connect from besides the server's own, as a browser
    /// sends them (`https://chat.example.com`, `http://localhost:5173`); `*` allows any.
    /// A request without an `Origin` header (not from a browser) is always allowed; a
    /// page served from this very port (same host and port) always is too.
    pub allowed_origins: Vec<String>,
    /// A directory whose files are served to plain HTTP `GET`s on the same port (a web
    /// page using the TypeScript client); `None` answers them with 426.
    pub web_root: Option<PathBuf>,
    /// Serves TLS (`wss://`, and `https://` for the files) with these certificates
    /// instead of plain `ws://`; the TLS handshake runs under the handshake time-out.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::Certificates>,
}

impl WsOptions {
    /// Same-origin pages only, no files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also allows pages from `origin` (`*` for any).
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// Serves the files of `dir` to plain HTTP requests.
    pub fn web_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.web_root = Some(dir.into());
        self
    }

    /// Serves TLS with `certificates` (see [`WsOptions::tls`]).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, certificates: crate::tls::Certificates) -> Self {
        self.tls = Some(certificates);
        self
    }
}

/// A transport that carries connections in WebSocket over another transport's TCP.
///
/// ```no_run
/// # async fn demo(tcp: std::sync::Arc<dyn zserver_core::Transport>) -> Result<(), zserver_core::Error> {
/// use zserver_core::ws::WsTransport;
/// let ws = std::sync::Arc::new(WsTransport::new(tcp));
/// let client = zserver_core::Client::builder(ws).connect("127.0.0.1:7180").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WsTransport {
    inner: Arc<dyn Transport>,
    options: Arc<WsOptions>,
    max_frame: usize,
    path: String,
    host: Option<String>,
    /// TLS on the client side: the configuration and the server name to verify.
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

impl WsTransport {
    /// WebSocket over `inner`'s TCP, with default options, the request path `/` and the
    /// default [`Config::max_frame`](crate::Config::max_frame).
    pub fn new(inner: Arc<dyn Transport>) -> Self {
        Self {
            inner,
            options: Arc::default(),
            max_frame: DEFAULT_MAX_FRAME,
            path: "/".into(),
            host: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The options its listeners use.
    pub fn options(mut self, options: WsOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// Sizes the incoming message limit ([`max_message`]) for this `max_frame`.
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// The path (and query) its client requests name, `/` by default.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Host` its client requests name; by default the address connected to.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Connects with TLS (`wss://`), verifying the server's certificate for
    /// `server_name` (a DNS name or an IP address) by `config`.
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: impl Into<String>,
    ) -> Self {
        self.tls = Some((config, server_name.into()));
        self
    }

    fn ws_config(&self) -> WebSocketConfig {
        let limit = max_message(self.max_frame);
        WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            .read_buffer_size(64 * 1024)
    }

    fn max_send(&self) -> usize {
        MAX_SEND.min(self.max_frame)
    }
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("over", &self.inner.name())
            .field("options", &self.options)
            .finish()
    }
}

#[async_trait]
impl Transport for WsTransport {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        self.inner.runtime()
    }

    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(WsListener {
            inner: self.inner.listen(addr).await?,
            acceptor: Arc::new(Acceptor {
                options: self.options.clone(),
                config: self.ws_config(),
                max_send: self.max_send(),
            }),
        }))
    }

    /// Connects over TCP (then TLS, if [`tls`](Self::tls) was given) and upgrades to a
    /// WebSocket; the protocol's own Noise layer secures the bytes inside either way.
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>> {
        let io = self.inner.connect(addr).await?;
        let (peer, local) = (io.peer_addr(), io.local_addr());
        let (read, write) = io.into_halves();
        #[cfg(feature = "tls")]
        let (read, write) = match &self.tls {
            Some((config, name)) => crate::tls::connect(config.clone(), name, read, write).await?,
            None => (read, write),
        };
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        let url = format!("ws://{host}{}", self.path);
        let duplex = Duplex::new(Vec::new(), read, write);
        let (ws, _response) = async_tungstenite::client_async_with_config(
            url.as_str(),
            duplex,
            Some(self.ws_config()),
        )
        .await
        .map_err(io_error)?;
        let (read, write) = halves(ws, self.max_send());
        Ok(Box::new(SplitClient {
            peer,
            local,
            halves: (read, write),
        }))
    }
}

/// A TCP listener whose connections the server upgrades with its [`Acceptor`].
struct WsListener {
    inner: Box<dyn Listener>,
    acceptor: Arc<Acceptor>,
}

#[async_trait]
impl Listener for WsListener {
    async fn accept(&self) -> io::Result<Box<dyn ServerIo>> {
        self.inner.accept().await
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn upgrade(&self) -> Option<Arc<dyn Upgrade>> {
        Some(self.acceptor.clone())
    }
}

/// The server side of the upgrade: reads the request head, then serves a file, refuses,
/// or completes the WebSocket handshake.
struct Acceptor {
    options: Arc<WsOptions>,
    config: WebSocketConfig,
    max_send: usize,
}

#[async_trait]
impl Upgrade for Acceptor {
    async fn upgrade(
        &self,
        mut read: BoxRead,
        mut write: BoxWrite,
        peer: SocketAddr,
        proxies: &TrustedProxies,
    ) -> io::Result<Option<Upgraded>> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.options.tls {
            (read, write) = crate::tls::accept(certificates, read, write).await?;
        }
        let (head, bytes) = match read_head(&mut read).await {
            Ok(read) => read,
            Err(HeadError::Io(e)) => return Err(e),
            Err(HeadError::Malformed) => {
                respond_text(&mut write, "400 Bad Request", "bad request\n", false).await?;
                return Err(refused("not an HTTP request"));
            }
            Err(HeadError::TooLarge) => {
                let status = "431 Request Header Fields Too Large";
                respond_text(&mut write, status, "request head too large\n", false).await?;
                return Err(refused("request head too large"));
            }
        };
        if !head.websocket {
            files::answer(&head, self.options.web_root.as_deref(), &mut write).await?;
            return Ok(None);
        }
        if !origin_allowed(&head, &self.options.allowed_origins) {
            respond_text(&mut write, "403 Forbidden", "origin not allowed\n", false).await?;
            return Err(refused("WebSocket origin not allowed"));
        }
        // RFC 6455 §4.2.2: a handshake the server cannot take gets an HTTP error, and a
        // version it does not speak says which one it does.
        if head.ws_version.as_deref() != Some("13") {
            let extra = "Sec-WebSocket-Version: 13\r\n";
            let body = "unsupported WebSocket version (this server speaks 13)\n";
            respond_text_with(&mut write, "400 Bad Request", extra, body, false).await?;
            return Err(refused("unsupported WebSocket version"));
        }
        if !head.ws_key || head.method != "GET" {
            let body = "a WebSocket upgrade is a GET with Sec-WebSocket-Key\n";
            respond_text(&mut write, "400 Bad Request", body, false).await?;
            return Err(refused("bad WebSocket upgrade request"));
        }
        // Only a trusted proxy's word on the client's address is taken.
        let client = proxies
            .trusts(peer.ip())
            .then(|| forwarded_client(&head.forwarded, &head.x_forwarded_for, proxies))
            .flatten();
        // The head is parsed again by the WebSocket library, which validates the rest of
        // the handshake and answers 101 (or 400).
        let duplex = Duplex::new(bytes, read, write);
        let ws = async_tungstenite::accept_async_with_config(duplex, Some(self.config))
            .await
            .map_err(io_error)?;
        let (read, write) = halves(ws, self.max_send);
        Ok(Some(Upgraded {
            read,
            write,
            client,
        }))
    }
}

/// A `ws://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsUrl {
    /// The host name or address (an IPv6 address without brackets).
    pub(crate) host: String,
    /// The port (80, or 443 for `wss://`, if the URL has none).
    pub(crate) port: u16,
    /// Whether the URL is `wss://` (TLS).
    pub(crate) tls: bool,
    /// `host[:port]` as written, for the `Host` header.
    pub(crate) authority: String,
    /// The path and query (`/` if the URL has none).
    pub(crate) path: String,
}

impl WsUrl {
    /// Parses `ws://host[:port][/path]` or `wss://...` (`wss://` needs the `tls`
    /// feature).
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Io(format!("bad WebSocket URL `{url}`: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") if cfg!(feature = "tls") => true,
            Some("wss") => return Err(bad("wss:// (TLS) needs zserver's `tls` feature")),
            _ => return Err(bad("the scheme must be ws:// or wss://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Self {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
        })
    }
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = WsUrl::parse("ws://127.0.0.1:7180/chat?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 7180));
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:7180", "/chat?x=1")
        );
        let u = WsUrl::parse("ws://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = WsUrl::parse("ws://example.com").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert_eq!(
            WsUrl::parse("wss://example.com/")
                .map(|u| (u.tls, u.port))
                .ok(),
            cfg!(feature = "tls").then_some((true, 443))
        );
        assert!(WsUrl::parse("http://example.com/").is_err());
        assert!(WsUrl::parse("127.0.0.1:7180").is_err());
    }

    #[test]
    fn message_limit_covers_a_frame_and_a_record() {
        assert!(max_message(DEFAULT_MAX_FRAME) > DEFAULT_MAX_FRAME + 4);
        assert!(max_message(1024) > MAX_RECORD_PLAINTEXT + 21);
        assert!(max_message(16 << 20) > (16 << 20) + 4);
    }
}
