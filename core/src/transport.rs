//! The transport traits: what a back end provides to carry bytes.
//!
//! A [`Transport`] listens and connects; a [`Listener`] yields [`ServerIo`]s (accepted
//! connections); connecting yields a [`ClientIo`]. Both split into futures-io halves so that
//! one task reads while another writes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, Socket, Type};

use async_trait::async_trait;
use futures_io::{AsyncRead, AsyncWrite};

use crate::proxy::TrustedProxies;
use crate::runtime::Runtime;

/// The read half of a connection.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// The write half of a connection.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// One accepted connection, as the server sees it.
pub trait ServerIo: Send + 'static {
    /// The client's address.
    fn peer_addr(&self) -> SocketAddr;
    /// Splits the connection into independently usable halves.
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite);
}

/// One outgoing connection, as the client sees it.
pub trait ClientIo: Send + 'static {
    /// The server's address.
    fn peer_addr(&self) -> SocketAddr;
    /// This side's address.
    fn local_addr(&self) -> SocketAddr;
    /// Splits the connection into independently usable halves.
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite);
}

/// A bound listening socket.
#[async_trait]
pub trait Listener: Send + Sync {
    /// Waits for the next connection.
    async fn accept(&self) -> io::Result<Box<dyn ServerIo>>;
    /// The address actually bound (useful after binding port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The step every accepted connection takes before the protocol's preamble, such as a
    /// WebSocket upgrade; `None` (the default) when accepted connections carry the
    /// protocol's bytes as they are.
    fn upgrade(&self) -> Option<Arc<dyn Upgrade>> {
        None
    }
}

/// Turns an accepted connection into the protocol's byte stream (a WebSocket upgrade).
/// The server runs it in the connection's own task, under the connection limits and the
/// handshake time-out, so a slow or silent peer holds up nobody else.
#[async_trait]
pub trait Upgrade: Send + Sync {
    /// The halves carrying the protocol's bytes, or `None` when the peer's request was
    /// answered in full (a plain HTTP request for a file) and the connection is done.
    /// `peer` is the connection's client address as known so far (a PROXY header's, else
    /// the socket's); `proxies` are the server's trusted proxies, whose word on the client's
    /// address (such as a `Forwarded` header) the upgrade may report in
    /// [`Upgraded::client`] when `peer` is one of them.
    async fn upgrade(
        &self,
        read: BoxRead,
        write: BoxWrite,
        peer: SocketAddr,
        proxies: &TrustedProxies,
    ) -> io::Result<Option<Upgraded>>;
}

/// A connection an [`Upgrade`] turned into the protocol's byte stream.
pub struct Upgraded {
    /// The read half of the protocol's bytes.
    pub read: BoxRead,
    /// The write half of the protocol's bytes.
    pub write: BoxWrite,
    /// The client's address as a trusted proxy named it during the upgrade (`None`: the
    /// peer's address stands).
    pub client: Option<SocketAddr>,
}

/// A read half that returns bytes already read from it (by a header's parser) first.
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: BoxRead,
}

impl Prefixed {
    /// Reads `prefix`, then `inner`.
    pub(crate) fn new(prefix: Vec<u8>, inner: BoxRead) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.at);
            buf[..n].copy_from_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A client connection already split into halves (to write to it, or upgrade it, first).
pub(crate) struct SplitClient {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) halves: (BoxRead, BoxWrite),
}

impl ClientIo for SplitClient {
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn local_addr(&self) -> SocketAddr {
        self.local
    }
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        self.halves
    }
}

/// A network back end: listens, connects, and runs tasks on its runtime.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and benchmarks, such as `"tokio"`.
    fn name(&self) -> &'static str;
    /// The runtime this transport's connections run on.
    fn runtime(&self) -> Arc<dyn Runtime>;
    /// Binds a TCP listener (IPv4 or IPv6).
    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>>;
    /// Opens a TCP connection with Nagle's algorithm off (the engine coalesces writes itself).
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>>;
    /// Like [`connect`](Self::connect), from the local address `local` (bound before
    /// connecting; port 0 lets the system pick the port), such as 127.0.0.2 to act as
    /// another host on loopback. The default refuses with [`io::ErrorKind::Unsupported`].
    async fn connect_from(
        &self,
        addr: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<Box<dyn ClientIo>> {
        let _ = (addr, local);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the {} transport cannot choose a local address",
                self.name()
            ),
        ))
    }
}

/// Backlog asked for by [`bind_tcp_listener`]: connections the system queues before the
/// server accepts them. The kernel caps it (on Linux at `net.core.somaxconn`, 4096 by
/// default since 5.4).
pub const LISTEN_BACKLOG: i32 = 65_535;

/// Binds a non-blocking TCP listener on `addr` with a backlog of [`LISTEN_BACKLOG`], for a
/// back end to adopt. A reconnect storm (every client at once after a restart) then waits
/// in the queue instead of having its SYNs dropped, which costs each dropped client a
/// retransmit about a second later. `SO_REUSEADDR` is set as the standard library does.
pub fn bind_tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Starts a non-blocking TCP connect to `addr` from the local address `local`, for a back
/// end to adopt: the connection is established once the socket turns writable and
/// `take_error` reports nothing (back ends without a bind-before-connect of their own).
pub fn start_tcp_connect(addr: SocketAddr, local: SocketAddr) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&local.into())?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// A transport whose connections leave from one local address
/// ([`ClientBuilder::bind`](crate::ClientBuilder::bind)): `connect` is the inner
/// transport's [`connect_from`](Transport::connect_from). Useful where a transport is
/// passed on, such as to the login client, to act as several client addresses.
pub struct BoundTransport {
    inner: Arc<dyn Transport>,
    local: SocketAddr,
}

impl BoundTransport {
    /// Connections over `inner`, from `local` (port 0: an ephemeral one).
    pub fn new(inner: Arc<dyn Transport>, local: SocketAddr) -> Self {
        Self { inner, local }
    }

    /// `inner`, shared, with its connections leaving from `ip` (an ephemeral port on it):
    /// one process acting as another client address.
    pub fn from_ip(inner: Arc<dyn Transport>, ip: IpAddr) -> Arc<dyn Transport> {
        Arc::new(Self::new(inner, SocketAddr::new(ip, 0)))
    }
}

#[async_trait]
impl Transport for BoundTransport {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.inner.runtime()
    }
    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        self.inner.listen(addr).await
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>> {
        self.inner.connect_from(addr, self.local).await
    }
    async fn connect_from(
        &self,
        addr: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<Box<dyn ClientIo>> {
        self.inner.connect_from(addr, local).await
    }
}

/// Adapts a stream whose clones share one socket (async-std's and smol's `TcpStream`)
/// into both [`ServerIo`] and [`ClientIo`]: one clone reads while the other writes.
pub struct CloneSplit<S> {
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
}

impl<S> CloneSplit<S>
where
    S: AsyncRead + AsyncWrite + Clone + Send + Unpin + 'static,
{
    /// Wraps `stream`, whose addresses the caller has looked up.
    pub fn new(stream: S, peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            stream,
            peer,
            local,
        }
    }

    fn halves(self) -> (BoxRead, BoxWrite) {
        (Box::new(self.stream.clone()), Box::new(self.stream))
    }
}

impl<S> ServerIo for CloneSplit<S>
where
    S: AsyncRead + AsyncWrite + Clone + Send + Unpin + 'static,
{
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        self.halves()
    }
}

impl<S> ClientIo for CloneSplit<S>
where
    S: AsyncRead + AsyncWrite + Clone + Send + Unpin + 'static,
{
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn local_addr(&self) -> SocketAddr {
        self.local
    }
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        self.halves()
    }
}
