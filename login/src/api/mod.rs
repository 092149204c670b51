//! The server API over HTTP, and the admin page on the same listener: what an app's own back
//! end calls to publish, push, disconnect, manage users and read the server's figures
//! (`docs/API.md` lists every call, with curl). Each call is an [`Admin`] method behind a
//! JSON layer, so it works on any node of a cluster.
//!
//! The listener runs on a small tokio runtime of its own (axum on hyper), whatever back end
//! the login server runs on. Every request carries the API key (`Authorization: Bearer
//! KEY`), or the admin page's session cookie.
//!
//! ```no_run
//! # async fn demo(server: &zserver_login::LoginServer) -> Result<(), zserver::Error> {
//! use zserver_login::api::{ApiKey, ApiServer};
//! let key = ApiKey::from_file("api.key".as_ref())?;
//! let api = ApiServer::start(server.admin(), "127.0.0.1:9200".parse().unwrap(), key).await?;
//! println!("API on http://{}/api/, admin page on http://{}/admin", api.local_addr(), api.local_addr());
//! # Ok(()) }
//! ```

mod auth;
mod error;
mod page;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use zserver::Error;

pub use auth::{ApiKey, MIN_KEY_LEN};
pub use routes::MAX_BODY;

use crate::own_runtime::OwnedRuntime;
use crate::server::Admin;

/// Most HTTP connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 1024;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running API listener; it stops when dropped or [shut down](Self::shutdown).
pub struct ApiServer {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    /// Kept for its threads (dropped last).
    _runtime: OwnedRuntime,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Listens on `addr` for the API (`/api/...`) and the admin page (`/admin`), acting
    /// through `admin` (a [`LoginServer::admin`](crate::LoginServer::admin)), every request
    /// checked against `key`.
    pub async fn start(admin: Admin, addr: SocketAddr, key: ApiKey) -> Result<Self, Error> {
        Self::serve(admin, addr, key, None).await
    }

    /// Like [`start`](Self::start), over TLS (`https://`) with `certificates`: a
    /// [reload](zserver::tls::Certificates::reload) of them applies to the next handshake
    /// (the WebSocket listener's, when they are the same). The admin page's session cookie
    /// is then `Secure`.
    pub async fn start_tls(
        admin: Admin,
        addr: SocketAddr,
        key: ApiKey,
        certificates: &zserver::tls::Certificates,
    ) -> Result<Self, Error> {
        let config = certificates.server_config_with_alpn(vec![b"http/1.1".to_vec()]);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self::serve(admin, addr, key, Some(acceptor)).await
    }

    async fn serve(
        admin: Admin,
        addr: SocketAddr,
        key: ApiKey,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Self, Error> {
        let runtime = OwnedRuntime::new(1, "zserver-api")?;
        let handle = runtime.handle();
        let listener = handle
            .spawn(async move { TcpListener::bind(addr).await })
            .await
            .map_err(|e| Error::msg(format!("API runtime failed: {e}")))?
            .map_err(|e| Error::msg(format!("cannot listen for the API on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(auth::Gate {
            key,
            sessions: auth::PageSessions::default(),
            secure: tls.is_some(),
        });
        let app = routes::router(admin, gate);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        handle.spawn(accept_loop(listener, app, tls, stopped));
        Ok(Self {
            addr,
            stop,
            _runtime: runtime,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections (those in progress end with the runtime, when this is
    /// dropped).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// Accepts connections until `stop` says so, each served on a task of its own.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!("API: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, service).await,
                // The handshake counts against the headers' time.
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, service).await,
                    Ok(Err(e)) => tracing::debug!("API: a TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("API: a TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
}

/// Serves HTTP/1.1 on one accepted connection, plain or TLS, until it ends.
async fn serve_connection<S>(stream: S, service: Service)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("API: a connection ended: {e}");
    }
}

/// The router as hyper serves it.
type Service = hyper_util::service::TowerToHyperService<axum::Router>;
