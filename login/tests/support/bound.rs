//! A transport whose client sockets are bound to a chosen local address (127.0.0.2,
//! 127.0.0.3, ...), so that one process can act as several clients' addresses. It listens
//! and runs tasks like the back end it wraps; its connections are async-io sockets, which
//! work on any back end's runtime.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use zserver::transport::{ClientIo, CloneSplit, Listener};
use zserver::{Runtime, Transport};

/// `inner`, connecting from `from` (an ephemeral port on it).
pub struct BoundTransport {
    inner: Arc<dyn Transport>,
    from: IpAddr,
}

impl BoundTransport {
    /// A transport like `inner` whose connections come from `from`.
    pub fn from_address(inner: Arc<dyn Transport>, from: IpAddr) -> Arc<dyn Transport> {
        Arc::new(Self { inner, from })
    }
}

#[async_trait::async_trait]
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
        let from = SocketAddr::new(self.from, 0);
        let stream = blocking::unblock(move || {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&from.into())?;
            socket.connect(&addr.into())?;
            socket.set_tcp_nodelay(true)?;
            Ok::<_, io::Error>(std::net::TcpStream::from(socket))
        })
        .await?;
        let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
        let stream = async_net::TcpStream::from(async_io::Async::new(stream)?);
        Ok(Box::new(CloneSplit::new(stream, peer, local)))
    }
}
