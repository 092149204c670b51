//! The transport traits: what a back end provides to carry bytes.
//!
//! A [`Transport`] listens and connects; a [`Listener`] yields [`ServerIo`]s (accepted
//! connections); connecting yields a [`ClientIo`]. Both split into futures-io halves so that
//! one task reads while another writes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures_io::{AsyncRead, AsyncWrite};

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
    async fn upgrade(
        &self,
        read: BoxRead,
        write: BoxWrite,
    ) -> io::Result<Option<(BoxRead, BoxWrite)>>;
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
