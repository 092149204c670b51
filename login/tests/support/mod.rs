//! What the login crate's tests share, and (through `#[path]`) the CLI's cluster tests:
//! running a scenario on a back end's runtime, waiting for a pushed event, and a fresh
//! PostgreSQL database per test.
#![allow(dead_code)]

pub(crate) mod pg;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use zserver::Calls;
use zserver::{Client, ClientBuilder, Config, Error, Router, Transport};
use zserver_login::protocol::{Credentials, Incoming, Welcome};
use zserver_login::{Event, LoginClient};

/// Runs `fut` on `backend`'s runtime and waits here, at most `limit`, for its result.
pub(crate) fn run_on<T: Send + 'static>(
    backend: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let runtime = zserver::transport(backend).unwrap().runtime();
    let (tx, rx) = mpsc::channel();
    runtime.spawn(Box::pin(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv_timeout(limit)
        .expect("the scenario finished in time")
}

/// `fut`'s output, or `None` if it takes longer than `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        zserver::sleep(limit).await;
        None
    })
    .await
}

/// The next event the server pushed to `client`, waiting at most 10 s.
pub(crate) async fn next_event(client: &LoginClient) -> Event {
    within(Duration::from_secs(10), client.next_event())
        .await
        .flatten()
        .expect("an event within 10 s")
}

/// A client logged in as `user` that handles one pushed message and never finishes it, so
/// its connection stops reading: a recipient whose buffers fill up.
pub(crate) async fn stuck_client(
    transport: Arc<dyn Transport>,
    addr: SocketAddr,
    pin: Option<&str>,
    user: &str,
) -> Result<Client, Error> {
    let mut stuck = Config::default();
    stuck.max_handlers_in_flight = 1;
    let router = Router::new().call("message", |_ctx, _m: Incoming| async {
        std::future::pending::<()>().await;
        Ok::<_, Error>(())
    });
    let mut builder = ClientBuilder::new(transport).config(stuck).router(router);
    if let Some(pin) = pin {
        builder = builder.pin_server_fingerprint(pin)?;
    }
    let client = builder.connect(addr).await?;
    let creds = Credentials {
        user: user.into(),
        password: "pw".into(),
    };
    let _: Welcome = client.call("login", &creds).await?;
    Ok(client)
}
