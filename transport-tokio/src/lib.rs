//! The tokio back end for zserver: TCP over IPv4 and IPv6 on a tokio runtime.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio_util::compat::TokioAsyncReadCompatExt;
use zserver_core::runtime::{BoxFuture, Runtime};
use zserver_core::transport::{
    bind_tcp_listener, BoxRead, BoxWrite, ClientIo, Listener, ServerIo, Transport,
};

/// A transport whose connections and tasks run on one tokio runtime.
#[derive(Clone, Debug)]
pub struct TokioTransport {
    handle: Handle,
}

impl TokioTransport {
    /// Uses the tokio runtime given by `handle`.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// Uses the runtime the caller is running on, or else a shared background runtime
    /// (a multi-threaded one, started on first use and kept for the life of the process).
    pub fn current_or_background() -> Self {
        Self::new(Handle::try_current().unwrap_or_else(|_| background().handle().clone()))
    }

    /// The runtime's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// The shared background runtime, for programs that have no tokio runtime of their own.
pub fn background() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("zserver-tokio")
            .build()
            .expect("failed to start the tokio runtime")
    })
}

impl Runtime for TokioTransport {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(self.handle.spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Created inside the runtime's context so that it can be polled from any thread.
        let _guard = self.handle.enter();
        Box::pin(tokio::time::sleep(duration))
    }

    fn on_worker_thread(&self) -> bool {
        on_worker_thread()
    }
}

/// Whether the calling thread is inside a tokio runtime (a worker, or in its `block_on`).
pub fn on_worker_thread() -> bool {
    Handle::try_current().is_ok()
}

/// The write half as a futures-io writer. Unlike tokio-util's `Compat`, it forwards
/// vectored writes, so a record's header, body and tag leave in one `writev`.
struct Writer(tokio::net::tcp::OwnedWriteHalf);

impl futures_io::AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct Accepted(TcpStream, SocketAddr);

impl ServerIo for Accepted {
    fn peer_addr(&self) -> SocketAddr {
        self.1
    }
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = self.0.into_split();
        (Box::new(r.compat()), Box::new(Writer(w)))
    }
}

struct Connected {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
}

impl ClientIo for Connected {
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn local_addr(&self) -> SocketAddr {
        self.local
    }
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = self.stream.into_split();
        (Box::new(r.compat()), Box::new(Writer(w)))
    }
}

struct TokioListener(TcpListener);

#[async_trait]
impl Listener for TokioListener {
    async fn accept(&self) -> io::Result<Box<dyn ServerIo>> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(Accepted(stream, peer)))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Runs `fut` on the transport's runtime, so that sockets register with its reactor
/// whichever thread (or runtime) the caller is on.
async fn on_runtime<T: Send + 'static>(
    handle: &Handle,
    fut: impl std::future::Future<Output = io::Result<T>> + Send + 'static,
) -> io::Result<T> {
    handle.spawn(fut).await.map_err(io::Error::other)?
}

#[async_trait]
impl Transport for TokioTransport {
    fn name(&self) -> &'static str {
        "tokio"
    }
    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(self.clone())
    }
    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        let std_listener = bind_tcp_listener(addr)?;
        let listener = on_runtime(
            &self.handle,
            async move { TcpListener::from_std(std_listener) },
        )
        .await?;
        Ok(Box::new(TokioListener(listener)))
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>> {
        connected(on_runtime(&self.handle, TcpStream::connect(addr)).await?)
    }
    async fn connect_from(
        &self,
        addr: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<Box<dyn ClientIo>> {
        let connect = async move {
            let socket = match local {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(local)?;
            socket.connect(addr).await
        };
        connected(on_runtime(&self.handle, connect).await?)
    }
}

/// A connected stream as the core's [`ClientIo`], with Nagle's algorithm off.
fn connected(stream: TcpStream) -> io::Result<Box<dyn ClientIo>> {
    stream.set_nodelay(true)?;
    Ok(Box::new(Connected {
        peer: stream.peer_addr()?,
        local: stream.local_addr()?,
        stream,
    }))
}
