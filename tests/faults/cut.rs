//! Scenario 2: a cut link. The server is in its namespace, the client in the client
//! namespace, and the [`netem`](crate::netem) forwarder between them drops every packet
//! while cut, silently, as a pulled cable would: neither end gets a RST or a FIN, so each
//! learns of the cut only from its own timers.
//!
//! - With stable sessions, calls in flight across a 1 s and a 10 s cut all complete, each
//!   handler having run exactly once, on one connection. (A 1 s cut is shorter than the
//!   session's dead-link detection, three keepalives of 1 s: TCP's retransmissions carry
//!   the session across it. A 10 s cut is not: the client dials again, and the session
//!   resumes on a new TCP connection.)
//! - Without them, calls in flight fail with [`Error::IdleTimeout`] once the heartbeat's
//!   idle time-out (2 s here) passes, far within the 10 s cut, and a new connection tried
//!   during the cut fails with [`Error::Timeout`]; after the cut a new client works and
//!   nothing was sent twice.
//! - A [`ReconnectingClient`](zserver::ReconnectingClient) notices a 10 s cut through its
//!   heartbeat, fails calls while away with [`Error::Disconnected`], and comes back by
//!   itself once the cut ends.
//!
//! Every case runs on every back end (`cut::<case>::<back end>::run`), each within the
//! suite's 30 s limit; the 10 s cases of the three back ends run side by side (the test
//! harness runs cases in parallel), so the cuts overlap instead of adding up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::zip;

use crate::common::{join_all, shutdown, suite_client, suite_server, until, within, Watch, WAIT};
use crate::netem::{self, Link};
use zserver::{Backoff, Calls, Client, Config, Error, LinkState, Router, StableSession};

/// Per call id: how often its handler started, and how often it finished.
type Runs = Arc<Watch<HashMap<u64, (u32, u32)>>>;

/// `work(id, pause_ms)`: counts its runs per id, waits `pause_ms`, answers `3 × id`.
fn work_router(runs: &Runs) -> Router {
    let runs = runs.clone();
    Router::new().call("work", move |_ctx, (id, pause_ms): (u64, u64)| {
        let runs = runs.clone();
        async move {
            runs.update(|m| m.entry(id).or_default().0 += 1);
            zserver::sleep(Duration::from_millis(pause_ms)).await;
            runs.update(|m| m.entry(id).or_default().1 += 1);
            Ok::<_, Error>(id * 3)
        }
    })
}

/// A call of `work`, with its id.
async fn work(client: &impl Calls, id: u64, pause_ms: u64) -> (u64, Result<u64, Error>) {
    (id, client.call("work", &(id, pause_ms)).await)
}

/// Stable sessions that outlast a 10 s cut: the session waits 20 s for a new link, and
/// takes a link silent for 3 s (three keepalives) for dead. The connection above keeps
/// the default heartbeat (30 s, idle time-out 90 s), longer than the session's.
fn stable_config() -> Config {
    let mut stable = StableSession::default();
    stable.offline_timeout = Duration::from_secs(20);
    stable.keepalive = Duration::from_secs(1);
    let mut config = Config::default();
    config.stable = Some(stable);
    config
}

/// The idle time-out of the connections without stable sessions.
const IDLE: Duration = Duration::from_secs(2);

/// No stable sessions; a heartbeat every 500 ms of silence and a 2 s idle time-out, so
/// that a silent peer is noticed quickly.
fn plain_config() -> Config {
    let mut config = Config::default();
    config.heartbeat = Some(Duration::from_millis(500));
    config.idle_timeout = IDLE;
    config
}

/// Asserts that every id of `ids` started exactly once (and, with `finished`, finished).
fn ran_once(runs: &Runs, ids: impl IntoIterator<Item = u64>, finished: bool) {
    runs.get(|m| {
        for id in ids {
            let (started, done) = m.get(&id).copied().unwrap_or_default();
            assert_eq!(started, 1, "call {id} started {started} times");
            if finished {
                assert_eq!(done, 1, "call {id} finished {done} times");
            }
        }
    });
}

// ----- with stable sessions ----------------------------------------------------------------

every_backend!(stable_calls_survive_a_one_second_cut);
/// Calls in flight across a 1 s cut all complete, each exactly once.
fn stable_calls_survive_a_one_second_cut() {
    stable_calls_survive(
        "stable_calls_survive_a_one_second_cut",
        Duration::from_secs(1),
    );
}

every_backend!(stable_calls_survive_a_ten_second_cut);
/// Calls in flight across a 10 s cut all complete, each exactly once; the session resumed
/// on a new TCP connection.
fn stable_calls_survive_a_ten_second_cut() {
    stable_calls_survive(
        "stable_calls_survive_a_ten_second_cut",
        Duration::from_secs(10),
    );
}

/// 40 calls whose handlers take 0 to 700 ms; once all have started and ten have answered,
/// the link is cut for `cut_for`, and 20 more calls are made during the cut. So the cut
/// catches replies on the wire, handlers still running, and requests sent into it. Every
/// call must complete with its own answer, every handler having run once, on the one
/// connection the client opened.
fn stable_calls_survive(test: &str, cut_for: Duration) {
    let Some(net) = netem::setup(test) else {
        return;
    };
    let link = net.link().clone();
    zserver::block_on(async {
        let runs: Runs = Watch::new(HashMap::new());
        let config = stable_config();
        let server = net
            .bind_server(
                suite_server()
                    .router(work_router(&runs))
                    .config(config.clone()),
            )
            .expect("bind");
        let client = within(
            WAIT,
            "connect",
            suite_client().config(config).connect(server.local_addr()),
        )
        .await
        .expect("connect");
        assert_eq!(work(&client, 1000, 0).await.1, Ok(3000), "a call before");
        let links_before = link.syns();

        let before = join_all((0..40).map(|id| work(&client, id, (id % 8) * 100)));
        let cut = async {
            runs.wait_for("40 calls started, 10 answered", |m| {
                m.len() == 41 && m.values().filter(|r| r.1 == 1).count() >= 11
            })
            .await;
            link.cut();
            let dropped = link.dropped();
            let during = join_all((40..60).map(|id| work(&client, id, 0)));
            let restore = async {
                zserver::sleep(cut_for).await;
                link.restore();
                (Instant::now(), link.dropped() - dropped)
            };
            zip(during, restore).await
        };
        let (mut results, (during, (restored_at, dropped))) = within(
            cut_for + Duration::from_secs(15),
            "every call to complete",
            zip(before, cut),
        )
        .await;
        let recovered_in = restored_at.elapsed();
        results.extend(during);

        assert_eq!(results.len(), 60);
        for (id, result) in &results {
            assert_eq!(result, &Ok(id * 3), "call {id}");
        }
        ran_once(&runs, 0..60, true);
        assert!(dropped > 0, "the cut dropped nothing");
        assert!(!client.connection().is_closed(), "the connection lives on");
        assert_eq!(server.connection_count(), 1, "one connection throughout");
        assert_eq!(server.stable_sessions(), 1, "one session throughout");
        let new_links = link.syns() - links_before;
        if cut_for >= Duration::from_secs(5) {
            assert!(new_links >= 1, "the session resumed on a new link");
        }
        assert_eq!(work(&client, 1001, 0).await.1, Ok(3003), "a call after");
        eprintln!(
            "{}: {cut_for:?} cut: 60 calls complete, each once; {dropped} packets dropped; \
             {new_links} new TCP SYN(s) (0: the first link carried on); last answer {recovered_in:?} after the cut",
            zserver::default_backend()
        );
        drop(client);
        until("the session ends", || server.stable_sessions() == 0).await;
        shutdown(&server).await;
    });
}

// ----- without stable sessions -------------------------------------------------------------

every_backend!(without_stable_sessions_a_ten_second_cut_fails_calls_in_flight);
/// Calls in flight when the link is cut for 10 s fail with `IdleTimeout` after the idle
/// time-out, not later; the server drops its end too; a new connection tried during the
/// cut fails with `Timeout`; after the cut a new connection works, and no call ran twice.
fn without_stable_sessions_a_ten_second_cut_fails_calls_in_flight() {
    let Some(net) = netem::setup("without_stable_sessions_a_ten_second_cut_fails_calls_in_flight")
    else {
        return;
    };
    let link = net.link().clone();
    zserver::block_on(async {
        let runs: Runs = Watch::new(HashMap::new());
        let server = net
            .bind_server(
                suite_server()
                    .router(work_router(&runs))
                    .config(plain_config()),
            )
            .expect("bind");
        let addr = server.local_addr();
        let client = within(
            WAIT,
            "connect",
            suite_client().config(plain_config()).connect(addr),
        )
        .await
        .expect("connect");
        assert_eq!(work(&client, 1000, 0).await.1, Ok(3000), "a call before");

        // 20 calls whose handlers take 300 ms: all have started when the link goes.
        let calls = join_all((0..20).map(|id| work(&client, id, 300)));
        let cut = async {
            runs.wait_for("20 calls started", |m| m.len() == 21).await;
            link.cut();
            Instant::now()
        };
        let (results, cut_at) = within(
            IDLE + Duration::from_secs(5),
            "the calls in flight to fail",
            zip(calls, cut),
        )
        .await;
        let failed_in = cut_at.elapsed();
        for (id, result) in &results {
            match result {
                Err(Error::IdleTimeout(silent)) => {
                    assert!(*silent >= IDLE, "call {id}: silent for only {silent:?}")
                }
                other => panic!("call {id}: {other:?}, not an idle time-out"),
            }
        }
        assert!(
            failed_in <= IDLE + Duration::from_millis(1500),
            "the calls failed {failed_in:?} after the cut, the idle time-out is {IDLE:?}"
        );
        assert!(client.connection().is_closed());
        let late = within(
            Duration::from_secs(1),
            "a call on the dead connection",
            async { work(&client, 99, 0).await.1 },
        )
        .await;
        assert_eq!(
            late,
            Err(Error::Closed),
            "a call after the connection failed"
        );
        until("the server drops its end too", || {
            server.connection_count() == 0
        })
        .await;

        // Still cut: a new connection fails within its connect time-out.
        let tried = Instant::now();
        let refused = within(
            WAIT,
            "a connection attempt during the cut",
            suite_client()
                .config(plain_config())
                .connect_timeout(Duration::from_secs(1))
                .connect(addr),
        )
        .await;
        assert_eq!(
            refused.map(drop),
            Err(Error::Timeout),
            "connecting during the cut"
        );
        assert!(tried.elapsed() < Duration::from_secs(3));
        let errors_seen = cut_at.elapsed();

        zserver::sleep(
            (cut_at + Duration::from_secs(10)).saturating_duration_since(Instant::now()),
        )
        .await;
        link.restore();
        let fresh = within(
            WAIT,
            "connect after the cut",
            suite_client().config(plain_config()).connect(addr),
        )
        .await
        .expect("a new connection after the cut");
        assert_eq!(
            work(&fresh, 1001, 0).await.1,
            Ok(3003),
            "a call after the cut"
        );
        assert_eq!(
            work(&client, 98, 0).await.1,
            Err(Error::Closed),
            "the old one stays closed"
        );
        // Each call of the lost connection ran once (their handlers finished on the server)
        // and none was sent again; those made after it failed never reached the server.
        zserver::sleep(Duration::from_millis(200)).await;
        ran_once(&runs, 0..20, true);
        runs.get(|m| assert!(!m.contains_key(&99) && !m.contains_key(&98)));
        eprintln!(
            "{}: 10 s cut, no stable session: 20 calls failed with IdleTimeout {failed_in:?} \
             after the cut; a connect during the cut timed out (all errors within \
             {errors_seen:?}); new connection fine after it",
            zserver::default_backend()
        );
        drop((client, fresh));
        shutdown(&server).await;
    });
}

every_backend!(the_reconnecting_client_comes_back_after_a_ten_second_cut);
/// A reconnecting client whose link is cut for 10 s: the calls in flight fail after the
/// idle time-out, the client goes to `Connecting` and calls fail at once with
/// `Disconnected` while it retries into the cut; once the cut ends it is back by itself
/// within a few back-off pauses, and calls work again, none having run twice.
fn the_reconnecting_client_comes_back_after_a_ten_second_cut() {
    let Some(net) = netem::setup("the_reconnecting_client_comes_back_after_a_ten_second_cut")
    else {
        return;
    };
    let link: Link = net.link().clone();
    zserver::block_on(async {
        let runs: Runs = Watch::new(HashMap::new());
        let server = net
            .bind_server(
                suite_server()
                    .router(work_router(&runs))
                    .config(plain_config()),
            )
            .expect("bind");
        let logins = Watch::new(0u32);
        let hook_logins = logins.clone();
        let client = within(
            WAIT,
            "connect",
            suite_client()
                .config(plain_config())
                .connect_timeout(Duration::from_secs(1))
                .reconnecting(server.local_addr())
                .expect("address")
                .backoff(Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_millis(500),
                ))
                .on_connect(move |c: Client| {
                    let logins = hook_logins.clone();
                    async move {
                        c.call::<_, u64>("work", &(2000u64, 0u64)).await?;
                        logins.update(|n| *n += 1);
                        Ok(())
                    }
                })
                .connect(),
        )
        .await
        .expect("connect");
        assert_eq!(work(&client, 1000, 0).await.1, Ok(3000), "a call before");

        let calls = join_all((0..10).map(|id| work(&client, id, 300)));
        let cut = async {
            runs.wait_for("10 calls started", |m| m.len() == 12).await;
            link.cut();
            Instant::now()
        };
        let (results, cut_at) = within(
            IDLE + Duration::from_secs(5),
            "the calls in flight to fail",
            zip(calls, cut),
        )
        .await;
        for (id, result) in &results {
            assert!(
                matches!(result, Err(Error::IdleTimeout(_))),
                "call {id} in flight: {result:?}"
            );
        }
        let state = within(
            Duration::from_secs(5),
            "the client to notice",
            client.wait_change(LinkState::Connected),
        )
        .await;
        assert_eq!(state, LinkState::Connecting);
        let noticed = cut_at.elapsed();
        let away = within(
            Duration::from_secs(1),
            "a call while away",
            work(&client, 99, 0),
        )
        .await;
        assert_eq!(away.1, Err(Error::Disconnected), "a call while away");
        let attempts_before = client.attempts();

        zserver::sleep(
            (cut_at + Duration::from_secs(10)).saturating_duration_since(Instant::now()),
        )
        .await;
        assert_eq!(
            client.state(),
            LinkState::Connecting,
            "still away at the end of the cut"
        );
        let tried = client.attempts() - attempts_before;
        assert!(tried >= 2, "only {tried} attempts in 8 s of cut link");
        link.restore();
        let restored = Instant::now();
        within(WAIT, "the client to come back", client.connected())
            .await
            .expect("back after the cut");
        let back_in = restored.elapsed();
        assert!(
            back_in < Duration::from_secs(5),
            "back only {back_in:?} after the cut"
        );
        assert_eq!(client.reconnects(), 1);
        assert_eq!(logins.snapshot(), 2, "the login hook ran again");
        for id in 100..110 {
            assert_eq!(
                work(&client, id, 0).await.1,
                Ok(id * 3),
                "call {id} after the cut"
            );
        }
        ran_once(&runs, (0..10).chain(100..110), true);
        runs.get(|m| assert!(!m.contains_key(&99), "a call made while away was sent"));
        eprintln!(
            "{}: 10 s cut, reconnecting client: noticed after {noticed:?}, {tried} attempts \
             into the cut, back {back_in:?} after it",
            zserver::default_backend()
        );
        client.close().await;
        shutdown(&server).await;
    });
}
