//! The smol back end for zserver: TCP over IPv4 and IPv6 on a smol executor with one
//! worker thread per core.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_executor::Executor;
use async_net::{TcpListener, TcpStream};
use async_trait::async_trait;
use zserver_core::runtime::{BoxFuture, Runtime};
use zserver_core::transport::{
    bind_tcp_listener, start_tcp_connect, ClientIo, CloneSplit, Listener, ServerIo, Transport,
};

/// A transport on a shared smol executor, started on first use.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolTransport;

thread_local! {
    static WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The shared executor: one thread per available core, each running it forever.
fn executor() -> &'static Executor<'static> {
    static EXECUTOR: OnceLock<&'static Executor<'static>> = OnceLock::new();
    EXECUTOR.get_or_init(|| {
        let ex: &'static Executor<'static> = Box::leak(Box::new(Executor::new()));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            std::thread::Builder::new()
                .name(format!("zserver-smol-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(true));
                    async_io::block_on(ex.run(futures_lite::future::pending::<()>()))
                })
                .expect("failed to start a smol worker thread");
        }
        ex
    })
}

/// Runs a future to completion on the calling thread (smol's `block_on`).
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    async_io::block_on(fut)
}

impl Runtime for SmolTransport {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        executor().spawn(task).detach();
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            async_io::Timer::after(duration).await;
        })
    }
    fn on_worker_thread(&self) -> bool {
        on_worker_thread()
    }
}

/// Whether the calling thread is one of the shared executor's worker threads.
pub fn on_worker_thread() -> bool {
    WORKER.with(Cell::get)
}

/// Turns a connected stream into the core's split adapter, with Nagle's algorithm off.
fn conn(stream: TcpStream) -> io::Result<CloneSplit<TcpStream>> {
    stream.set_nodelay(true)?;
    let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
    Ok(CloneSplit::new(stream, peer, local))
}

struct SmolListener(TcpListener);

#[async_trait]
impl Listener for SmolListener {
    async fn accept(&self) -> io::Result<Box<dyn ServerIo>> {
        let (stream, _) = self.0.accept().await?;
        Ok(Box::new(conn(stream)?))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
impl Transport for SmolTransport {
    fn name(&self) -> &'static str {
        "smol"
    }
    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(*self)
    }
    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        let listener = TcpListener::try_from(bind_tcp_listener(addr)?)?;
        Ok(Box::new(SmolListener(listener)))
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>> {
        Ok(Box::new(conn(TcpStream::connect(addr).await?)?))
    }
    async fn connect_from(
        &self,
        addr: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<Box<dyn ClientIo>> {
        let stream = async_io::Async::new(start_tcp_connect(addr, local)?)?;
        stream.writable().await?;
        if let Some(e) = stream.get_ref().take_error()? {
            return Err(e);
        }
        Ok(Box::new(conn(TcpStream::from(stream))?))
    }
}
