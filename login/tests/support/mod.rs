//! What the login crate's tests share, and (through `#[path]`) the CLI's cluster tests:
//! running a scenario on a back end's runtime, waiting for a pushed event, and a fresh
//! PostgreSQL database per test.
#![allow(dead_code)]

pub mod pg;

use std::sync::mpsc;
use std::time::Duration;

use zserver_login::{Event, LoginClient};

/// Runs `fut` on `backend`'s runtime and waits here, at most `limit`, for its result.
pub fn run_on<T: Send + 'static>(
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

/// The next event the server pushed to `client`, waiting at most 10 s.
pub async fn next_event(client: &LoginClient) -> Event {
    let event = futures_lite::future::or(async { client.next_event().await }, async {
        zserver::sleep(Duration::from_secs(10)).await;
        None
    });
    event.await.expect("an event within 10 s")
}
