//! The reconnecting client, through the `zserver` facade only, so that the same file runs
//! unchanged on every back end:
//!
//! ```text
//! cargo test --test suite reconnect::                                          # every back end
//! cargo test --test suite -- reconnect:: --skip ::tokio:: --skip ::async_std::  # smol only
//! ```
//!
//! Every case runs over IPv4 loopback (`<case>::<back end>::v4`), binds port 0 and fails within 30 s
//! if anything hangs. Timing checks are loose: timers may fire late, never early.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::future::zip;
use zserver::{Backoff, Client, Config, Error, LinkState, ReconnectingClient, Router, Server};

use crate::common::*;
use zserver::Calls;

/// `v4!(case)`: a test `case::BACKEND::v4` per back end, running `async fn case(addr)`
/// under that back end's `block_on` within the time limit.
macro_rules! v4 {
    ($name:ident) => {
        per_backend!(v4_only, $name, |addr| zserver::block_on(
            super::super::$name(addr)
        ));
    };
}

// ----- fixtures ---------------------------------------------------------------------------

/// Short pauses so that tests reconnect quickly: 20 ms doubling up to 200 ms.
fn quick() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
}

/// `echo`, and `login`, which counts the logins this server has seen.
fn router(logins: &Arc<AtomicUsize>) -> Router {
    let logins = logins.clone();
    Router::new()
        .console("echo", |_ctx, text: String| async move { Ok(text) })
        .console("login", move |_ctx, user: String| {
            let logins = logins.clone();
            async move {
                logins.fetch_add(1, Ordering::SeqCst);
                Ok(format!("welcome, {user}"))
            }
        })
}

async fn start(addr: impl std::net::ToSocketAddrs, router: Router, config: Config) -> Server {
    suite_server()
        .router(router)
        .config(config)
        .bind(addr)
        .await
        .expect("bind")
}

/// Binds a new server on `target`, the address an earlier one (now shut down) had; retries
/// for a while in case the port is not free again at once.
async fn rebind(target: SocketAddr, router: Router, config: Config) -> Server {
    let deadline = Instant::now() + WAIT;
    loop {
        match suite_server()
            .router(router.clone())
            .config(config.clone())
            .bind(target)
            .await
        {
            Ok(server) => return server,
            Err(e) => {
                assert!(Instant::now() < deadline, "rebinding {target}: {e}");
                zserver::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A raw listener that accepts connections and drops them at once (so every connection
/// attempt fails its handshake), recording when each one arrived.
struct Refuser {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Refuser {
    fn new(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).expect("bind the refuser");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        a.lock().unwrap().push(Instant::now());
                        drop(socket);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Self {
            addr,
            accepted,
            stop,
        }
    }

    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    fn times(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ----- (a) the server restarts on the same port ------------------------------------------

v4!(reconnects_after_server_restart_on_same_port);
async fn reconnects_after_server_restart_on_same_port(addr: &str) {
    let server_logins = Arc::new(AtomicUsize::new(0));
    let hook_runs = Arc::new(AtomicUsize::new(0));
    let mut server = start(addr, router(&server_logins), Config::default()).await;
    let target = server.local_addr();
    let runs = hook_runs.clone();
    let client = within(
        WAIT,
        "first connect",
        suite_client()
            .reconnecting(target)
            .expect("address")
            .backoff(quick())
            .on_connect(move |client: Client| {
                let runs = runs.clone();
                async move {
                    let welcome = client.console("login", "ann").await?;
                    assert_eq!(welcome, "welcome, ann");
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .connect(),
    )
    .await
    .expect("first connect");
    assert_eq!(client.state(), LinkState::Connected);
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);
    assert_eq!(client.reconnects(), 0);
    assert_eq!(client.console("echo", "before").await, Ok("before".into()));

    for restart in 1..=2 {
        shutdown(&server).await;
        let state = within(
            WAIT,
            "the client notices the drop",
            client.wait_change(LinkState::Connected),
        )
        .await;
        assert_eq!(state, LinkState::Connecting, "restart {restart}");
        // Away: calls fail at once, nothing is sent.
        let away = within(
            Duration::from_secs(1),
            "a call while away",
            client.console("echo", "away"),
        )
        .await;
        assert_eq!(away, Err(Error::Disconnected), "restart {restart}");
        assert_eq!(client.current().map(|_| ()), Err(Error::Disconnected));

        server_logins.store(0, Ordering::SeqCst);
        server = rebind(target, router(&server_logins), Config::default()).await;
        let live = within(WAIT, "reconnect", client.connected())
            .await
            .expect("reconnected");
        assert_eq!(live.connection().peer_addr(), target);
        assert_eq!(hook_runs.load(Ordering::SeqCst), 1 + restart, "hook re-ran");
        assert_eq!(
            server_logins.load(Ordering::SeqCst),
            1,
            "the new server saw the login"
        );
        assert_eq!(client.reconnects(), restart as u64);
        assert_eq!(client.console("echo", "again").await, Ok("again".into()));
        assert_eq!(
            client.call_bytes("echo", "b").await.as_deref(),
            Ok(&b"b"[..])
        );
    }

    within(WAIT, "client close", client.close()).await;
    assert_eq!(client.state(), LinkState::Closed);
    assert_eq!(client.console("echo", "x").await, Err(Error::Closed));
    until("the server forgets the client", || {
        server.connection_count() == 0
    })
    .await;
    shutdown(&server).await;
}

// ----- (b) calls in flight fail once, calls while away fail at once ----------------------

v4!(calls_in_flight_fail_and_are_never_resent);
async fn calls_in_flight_fail_and_are_never_resent(addr: &str) {
    const CALLS: u64 = 60;
    const LONG: Duration = Duration::from_secs(3);
    // Executions per request id (started, finished), across both servers.
    let runs: Arc<Watch<HashMap<u64, (u32, u32)>>> = Watch::new(HashMap::new());
    let work = {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            Router::new().call("work", move |_ctx, (id, long): (u64, bool)| {
                let runs = runs.clone();
                async move {
                    runs.update(|m| m.entry(id).or_default().0 += 1);
                    let pause = if long {
                        LONG
                    } else {
                        Duration::from_millis(id % 5)
                    };
                    zserver::sleep(pause).await;
                    runs.update(|m| m.entry(id).or_default().1 += 1);
                    Ok::<_, Error>(id)
                }
            })
        }
    };
    let mut config = Config::default();
    config.shutdown_grace = Duration::from_millis(200);
    let server = start(addr, work(), config.clone()).await;
    let target = server.local_addr();
    let client = suite_client()
        .reconnecting(target)
        .unwrap()
        .backoff(quick())
        .connect()
        .await
        .expect("connect");

    // Even ids are long (cut off by the shutdown), odd ones short (answered in its grace).
    let calls = (0..CALLS).map(|id| {
        let client = &client;
        async move {
            let r: Result<u64, Error> = client.call("work", &(id, id % 2 == 0)).await;
            (id, r)
        }
    });
    let (results, ()) = zip(
        within(WAIT, "every call in flight to end", join_all(calls)),
        async {
            runs.wait_for("every call to start on the server", |m| {
                m.len() == CALLS as usize
            })
            .await;
            shutdown(&server).await;
        },
    )
    .await;

    let finished = runs.snapshot();
    for (id, result) in &results {
        let (started, done) = finished[id];
        assert_eq!(started, 1, "call {id} ran {started} times");
        match result {
            Ok(got) => {
                assert_eq!(got, id);
                assert_eq!(done, 1, "call {id} is Ok but its handler never returned");
            }
            Err(Error::Closed) => assert!(id % 2 == 0, "short call {id} cut off"),
            Err(e) => panic!("call {id}: unexpected error {e:?}"),
        }
        if id % 2 == 1 {
            assert_eq!(result, &Ok(*id), "short call {id} ends within the grace");
        }
    }

    // While away: calls fail at once with `Disconnected`, and nothing reaches a server.
    within(
        WAIT,
        "the drop is noticed",
        client.wait_change(LinkState::Connected),
    )
    .await;
    for id in 1000..1010u64 {
        let r: Result<u64, Error> = within(
            Duration::from_secs(1),
            "a call while away",
            client.call("work", &(id, false)),
        )
        .await;
        assert_eq!(r, Err(Error::Disconnected));
    }

    // Back: new calls work, and nothing from before was sent again.
    let server2 = rebind(target, work(), config).await;
    within(WAIT, "reconnect", client.connected())
        .await
        .expect("reconnected");
    for id in 2000..2010u64 {
        let r: Result<u64, Error> = client.call("work", &(id, false)).await;
        assert_eq!(r, Ok(id));
    }
    zserver::sleep(Duration::from_millis(200)).await;
    runs.get(|m| {
        for id in (0..CALLS).chain(1000..1010) {
            let started = m.get(&id).map_or(0, |r| r.0);
            assert!(
                started == u32::from(id < CALLS),
                "call {id} ran {started} times"
            );
        }
    });
    drop(client);
    shutdown(&server2).await;
}

// ----- (c) back-off ---------------------------------------------------------------------------

v4!(attempts_are_spaced_by_the_backoff);
async fn attempts_are_spaced_by_the_backoff(addr: &str) {
    let refuser = Refuser::new(addr);
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400))
        .with_factor(2.0)
        .with_jitter(0.0);
    let client = suite_client()
        .reconnecting(refuser.addr)
        .unwrap()
        .backoff(backoff.clone())
        .start();
    // At about 0, 100, 300, 700, 1100, 1500 ms.
    until("six attempts", || refuser.count() >= 6).await;
    let times = refuser.times();
    assert_eq!(client.state(), LinkState::Connecting);
    assert_eq!(client.current().map(|_| ()), Err(Error::Disconnected));
    assert!(client.last_error().is_some());
    assert!(client.attempts() >= 6);
    assert_eq!(client.reconnects(), 0);
    for (i, pair) in times.windows(2).take(5).enumerate() {
        let gap = pair[1] - pair[0];
        let want = backoff.delay(i as u32);
        // Timers fire late, never early (a few ms of slack for the accept poll).
        assert!(
            gap + Duration::from_millis(10) >= want,
            "gap {i} was {gap:?}, the back-off says {want:?}"
        );
        assert!(
            gap <= want + Duration::from_secs(2),
            "gap {i} was {gap:?}, far over {want:?}"
        );
    }
    drop(client);
}

v4!(gives_up_after_the_limit);
async fn gives_up_after_the_limit(addr: &str) {
    let refuser = Refuser::new(addr);
    let client = suite_client()
        .reconnecting(refuser.addr)
        .unwrap()
        .backoff(quick().give_up_after(3))
        .start();
    let gave_up = within(WAIT, "giving up", client.connected()).await;
    assert_eq!(gave_up.map(|_| ()), Err(Error::Closed));
    assert_eq!(client.state(), LinkState::GaveUp);
    assert!(client.last_error().is_some());
    assert_eq!(client.attempts(), 3);
    zserver::sleep(Duration::from_millis(300)).await;
    assert_eq!(refuser.count(), 3, "no attempt after giving up");
    assert_eq!(client.console("echo", "x").await, Err(Error::Closed));
}

// ----- (d) dropping or closing stops the background task ------------------------------------

/// Waits until the refuser has seen a few attempts, runs `stop`, then checks that no more
/// attempts arrive (one already under way may still land just after).
async fn stops_attempting(addr: &str, stop: impl AsyncFnOnce(ReconnectingClient)) {
    let refuser = Refuser::new(addr);
    let flat = Backoff::new(Duration::from_millis(20), Duration::from_millis(20)).with_jitter(0.0);
    let client = suite_client()
        .reconnecting(refuser.addr)
        .unwrap()
        .backoff(flat)
        .start();
    until("three attempts", || refuser.count() >= 3).await;
    stop(client).await;
    zserver::sleep(Duration::from_millis(100)).await;
    let settled = refuser.count();
    // At one attempt per 20 ms, a live task would make about 25 more.
    zserver::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        refuser.count(),
        settled,
        "attempts after the client stopped"
    );
}

v4!(dropping_stops_reconnecting);
async fn dropping_stops_reconnecting(addr: &str) {
    stops_attempting(addr, async |client| {
        let clone = client.clone();
        drop(client);
        // One clone still holds it: the task keeps going.
        assert_eq!(clone.state(), LinkState::Connecting);
        drop(clone);
    })
    .await;

    // Dropping a connected client closes its connection too.
    let logins = Arc::new(AtomicUsize::new(0));
    let server = start(addr, router(&logins), Config::default()).await;
    let client = suite_client()
        .reconnecting(server.local_addr())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    until("the server holds the connection", || {
        server.connection_count() == 1
    })
    .await;
    drop(client);
    until("the server sees the connection closed", || {
        server.connection_count() == 0
    })
    .await;
    zserver::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.stats().connections_accepted, 1, "no reconnect");
    shutdown(&server).await;
}

v4!(close_stops_reconnecting);
async fn close_stops_reconnecting(addr: &str) {
    let keep = Arc::new(Mutex::new(None));
    let k = keep.clone();
    stops_attempting(addr, async move |client| {
        within(WAIT, "close", client.close()).await;
        assert_eq!(client.state(), LinkState::Closed);
        assert_eq!(client.current().map(|_| ()), Err(Error::Closed));
        assert_eq!(
            within(WAIT, "connected after close", client.connected())
                .await
                .map(|_| ()),
            Err(Error::Closed)
        );
        // Kept alive: closing, not dropping, stopped it.
        *k.lock().unwrap() = Some(client);
    })
    .await;
    assert!(keep.lock().unwrap().is_some());
}

// ----- the login hook ---------------------------------------------------------------------------

v4!(failing_login_hook_retries_with_backoff);
async fn failing_login_hook_retries_with_backoff(addr: &str) {
    let logins = Arc::new(AtomicUsize::new(0));
    let server = start(addr, router(&logins), Config::default()).await;
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let client = suite_client()
        .reconnecting(server.local_addr())
        .unwrap()
        .backoff(quick())
        .on_connect(move |client: Client| {
            let t = t.clone();
            async move {
                client.console("login", "ann").await?;
                if t.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(Error::msg("wrong password"));
                }
                Ok(())
            }
        })
        .start();
    let live = within(WAIT, "login on the third try", client.connected())
        .await
        .expect("connected");
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    assert_eq!(client.attempts(), 3);
    assert_eq!(client.reconnects(), 0, "the first link, not a reconnect");
    assert_eq!(live.console("echo", "in").await, Ok("in".into()));
    until("the failed logins' connections are closed", || {
        server.connection_count() == 1
    })
    .await;
    assert_eq!(server.stats().connections_accepted, 3);

    // From `connect()`, a failing hook is the caller's error.
    let refused = suite_client()
        .reconnecting(server.local_addr())
        .unwrap()
        .on_connect(|_client: Client| async { Err(Error::msg("no")) })
        .connect()
        .await;
    assert_eq!(refused.map(|_| ()), Err(Error::Remote("no".into())));
    drop(client);
    shutdown(&server).await;
}
