//! The async-std back end for zserver: TCP over IPv4 and IPv6 on async-std's global executor.
//!
//! async-std is discontinued upstream (RUSTSEC-2025-0052). This back end is kept for
//! existing async-std applications; new ones should pick the tokio or smol back end.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream};
use async_trait::async_trait;
use zserver_core::runtime::{BoxFuture, Runtime};
use zserver_core::transport::{
    bind_tcp_listener, start_tcp_connect, ClientIo, CloneSplit, Listener, ServerIo, Transport,
};

/// A transport on async-std's global executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdTransport;

/// Runs a future to completion on the calling thread (async-std's `block_on`).
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    async_std::task::block_on(fut)
}

impl Runtime for AsyncStdTransport {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(async_std::task::spawn(task));
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async_std::task::sleep(duration))
    }
    fn on_worker_thread(&self) -> bool {
        on_worker_thread()
    }
}

/// Whether the calling thread is running an async-std task (a worker, or in its
/// `block_on`).
pub fn on_worker_thread() -> bool {
    async_std::task::try_current().is_some()
}

/// Turns a connected stream into the core's split adapter, with Nagle's algorithm off.
fn conn(stream: TcpStream) -> io::Result<CloneSplit<TcpStream>> {
    stream.set_nodelay(true)?;
    let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
    Ok(CloneSplit::new(stream, peer, local))
}

struct AsyncStdListener(TcpListener);

#[async_trait]
impl Listener for AsyncStdListener {
    async fn accept(&self) -> io::Result<Box<dyn ServerIo>> {
        let (stream, _) = self.0.accept().await?;
        Ok(Box::new(conn(stream)?))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
impl Transport for AsyncStdTransport {
    fn name(&self) -> &'static str {
        "async-std"
    }
    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(*self)
    }
    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        let listener = TcpListener::from(bind_tcp_listener(addr)?);
        Ok(Box::new(AsyncStdListener(listener)))
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>> {
        Ok(Box::new(conn(TcpStream::connect(addr).await?)?))
    }
    async fn connect_from(
        &self,
        addr: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<Box<dyn ClientIo>> {
        // async-std runs on async-io's reactor: wait there for the connect to finish.
        let stream = async_io::Async::new(start_tcp_connect(addr, local)?)?;
        stream.writable().await?;
        if let Some(e) = stream.get_ref().take_error()? {
            return Err(e);
        }
        Ok(Box::new(conn(TcpStream::from(stream.into_inner()?))?))
    }
}
