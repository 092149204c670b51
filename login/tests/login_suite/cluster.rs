//! The cluster through the library: two [`LoginServer`] nodes in one process, each on its own
//! back end's runtime (tokio and smol), sharing a NATS server and a PostgreSQL database.
//! `cli/tests/cluster.rs` runs whole `zserver serve` processes, kills one, and cuts NATS and
//! PostgreSQL. Needs the services: `bash .ci/test` starts them.

use std::time::{Duration, Instant};

use zserver::Error;
use zserver_login::protocol::Incoming;
use zserver_login::{ClusterConfig, Event, LoginClient, LoginConfig, LoginServer};

use crate::support::pg::Postgres;

/// Runs `fut` on `backend`'s runtime and waits for it here.
pub(super) fn run_on<T: Send + 'static>(
    backend: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    crate::support::run_on(backend, Duration::from_secs(60), fut)
}

pub(super) fn node_config(db: &Postgres, dir: &std::path::Path) -> LoginConfig {
    let nats = std::env::var("ZSERVER_TEST_NATS")
        .expect("ZSERVER_TEST_NATS is not set: `source .ci/services.sh start`");
    let mut config = LoginConfig::new(dir);
    config.store = db.url.clone();
    let mut cluster = ClusterConfig::new(nats);
    // A cluster of this test's own: tests run in parallel on one NATS server, and nodes of
    // a shared cluster name would see each other's nodes and users.
    cluster.name = db.db.clone();
    config.cluster = Some(cluster);
    config
}

pub(super) async fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        zserver::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Starts two nodes with `config` on loopback: one on tokio, one on smol.
pub(super) fn start_two_nodes(config: LoginConfig) -> (LoginServer, LoginServer) {
    let local: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = run_on("tokio", {
        let config = config.clone();
        async move { LoginServer::start(zserver::transport("tokio").unwrap(), local, config).await }
    })
    .unwrap();
    let b = run_on("smol", async move {
        LoginServer::start(zserver::transport("smol").unwrap(), local, config).await
    })
    .unwrap();
    (a, b)
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn two_nodes_on_two_runtimes_in_one_process() {
    let db = Postgres::new("lib_two_nodes");
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(&db, dir.path());
    let (a, b) = start_two_nodes(config);
    let (a_id, b_id) = (a.node_id().unwrap(), b.node_id().unwrap());
    assert_ne!(a_id, b_id);
    let (a_addr, b_addr, pin) = (a.local_addr(), b.local_addr(), a.fingerprint());
    assert_eq!(pin, b.fingerprint(), "one data directory, one key");

    let a = std::sync::Arc::new(a);
    let a2 = a.clone();
    run_on("tokio", async move {
        until("the nodes see each other", || {
            a2.peers() == [b_id] && b.peers() == [a_id]
        })
        .await;
        let transport = zserver::transport("tokio").unwrap();
        let ann = LoginClient::connect(transport.clone(), a_addr, Some(&pin)).await?;
        ann.register("ann", "pw").await?;
        ann.register("bob", "pw").await?;
        ann.login("ann", "pw").await?;
        let bob = LoginClient::connect(transport, b_addr, Some(&pin)).await?;
        bob.login("bob", "pw").await?;
        until("both users online on both nodes", || {
            a2.online() == ["ann", "bob"] && b.online() == ["ann", "bob"]
        })
        .await;
        let report = ann.push(&["bob"], "across runtimes").await?;
        assert_eq!(report.delivered, ["bob"]);
        let expected = Event::Message(Incoming {
            from: "ann".into(),
            text: "across runtimes".into(),
        });
        assert_eq!(bob.next_event().await, Some(expected));

        // A node that shuts down leaves: the other forgets it and its users at once.
        b.shutdown().await;
        let gone = until("node b left", || a2.peers().is_empty()).await;
        assert!(gone < Duration::from_secs(2), "{gone:?}");
        assert_eq!(a2.online(), ["ann"]);
        let report = ann.push(&["bob"], "later").await?;
        assert_eq!(report.stored, ["bob"]);
        Ok::<_, Error>(())
    })
    .unwrap();
    run_on("tokio", async move { a.shutdown().await });
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn failed_logins_on_one_node_count_on_the_others() {
    let db = Postgres::new("lib_failed_logins");
    let dir = tempfile::tempdir().unwrap();
    let mut config = node_config(&db, dir.path());
    config.max_failed_logins = 3;
    let (a, b) = start_two_nodes(config);
    let (a_addr, b_addr, pin) = (a.local_addr(), b.local_addr(), a.fingerprint());
    run_on("tokio", async move {
        until("the nodes see each other", || {
            !a.peers().is_empty() && !b.peers().is_empty()
        })
        .await;
        let transport = zserver::transport("tokio").unwrap();
        let guesser = LoginClient::connect(transport.clone(), a_addr, Some(&pin)).await?;
        guesser.register("ann", "right").await?;
        for _ in 0..3 {
            assert!(guesser.login("ann", "wrong").await.is_err());
        }
        // Node b never saw a failure itself, yet it refuses too: a guesser gains nothing by
        // moving to another node.
        let elsewhere = LoginClient::connect(transport, b_addr, Some(&pin)).await?;
        let start = Instant::now();
        loop {
            match elsewhere.login("ann", "right").await {
                Err(e) if e.to_string().contains("too many failed logins") => break,
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => elsewhere.logout().await?,
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node b counted node a's failures"
            );
            zserver::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("node b refused after {:?}", start.elapsed());
        a.shutdown().await;
        b.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn a_recipient_who_does_not_read_holds_up_no_push_from_another_node() {
    let db = Postgres::new("lib_slow_reader");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = start_two_nodes(node_config(&db, dir.path()));
    let (a_addr, b_addr, pin) = (a.local_addr(), b.local_addr(), a.fingerprint());
    run_on("tokio", async move {
        let transport = zserver::transport("tokio").unwrap();
        let ann = LoginClient::connect(transport.clone(), a_addr, Some(&pin)).await?;
        for user in ["ann", "bob", "slow"] {
            ann.register(user, "pw").await?;
        }
        ann.login("ann", "pw").await?;
        let bob = LoginClient::connect(transport.clone(), b_addr, Some(&pin)).await?;
        bob.login("bob", "pw").await?;
        // `slow`, on node b, handles one message and never finishes it.
        let slow = crate::support::stuck_client(transport, b_addr, Some(&pin), "slow").await?;
        until("node a sees both users on node b", || {
            a.online() == ["ann", "bob", "slow"]
        })
        .await;

        // Bursts of concurrent pushes from node a to both: they share requests to node b,
        // and every one reaches bob live, however long `slow` has stopped reading.
        let ann = std::sync::Arc::new(ann);
        let text = "x".repeat(64 << 10);
        let mut sent = 0;
        let mut slow_stored = false;
        while !slow_stored {
            assert!(sent < 2000, "slow's buffers never filled");
            let burst: Vec<_> = (0..16)
                .map(|_| {
                    let (ann, text) = (ann.clone(), text.clone());
                    async move { ann.push(&["slow", "bob"], &text).await }
                })
                .collect();
            for report in futures_util::future::join_all(burst).await {
                let report = report?;
                assert!(report.delivered.iter().any(|u| u == "bob"), "{report:?}");
                slow_stored |= report.stored.iter().any(|u| u == "slow");
                sent += 1;
            }
        }
        for _ in 0..sent {
            assert!(matches!(
                crate::support::next_event(&bob).await,
                Event::Message(_)
            ));
        }
        drop(slow);
        a.shutdown().await;
        b.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// The next publication of `sub` within 10 s: (offset, author, text). Join and leave
/// events (of this node's subscribers and the other node's) are passed over.
async fn next_publication(sub: &mut zserver::channels::Subscription) -> (u64, String, String) {
    use zserver::channels::Event;
    loop {
        let event = crate::support::within(Duration::from_secs(10), sub.recv())
            .await
            .expect("a publication within 10 s")
            .expect("the subscription is live");
        match event {
            Event::Publication(p) => return (p.offset, p.from, String::from_utf8(p.data).unwrap()),
            Event::Join(_) | Event::Leave(_) => {}
            other => panic!("expected a publication, got {other:?}"),
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn channels_have_one_order_on_every_node() {
    use zserver::channels::ChannelCalls;
    let db = Postgres::new("lib_channels");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = start_two_nodes(node_config(&db, dir.path()));
    let (a_addr, b_addr, pin) = (a.local_addr(), b.local_addr(), a.fingerprint());
    run_on("tokio", async move {
        let transport = zserver::transport("tokio").unwrap();
        let ann = LoginClient::connect(transport.clone(), a_addr, Some(&pin)).await?;
        ann.register("ann", "pw").await?;
        ann.register("bob", "pw").await?;
        ann.login("ann", "pw").await?;
        let bob = LoginClient::connect(transport.clone(), b_addr, Some(&pin)).await?;
        bob.login("bob", "pw").await?;
        let mut on_a = ann.client().subscribe("chat:x").await?;
        let mut on_b = bob.client().subscribe("chat:x").await?;
        // Both nodes publish at once: offsets 1..=40, each once, the same order everywhere.
        let (a_pubs, b_pubs) = futures_lite::future::zip(
            async {
                for i in 0..20 {
                    ann.client().publish("chat:x", format!("a{i}")).await?;
                }
                Ok::<_, Error>(())
            },
            async {
                for i in 0..20 {
                    bob.client().publish("chat:x", format!("b{i}")).await?;
                }
                Ok::<_, Error>(())
            },
        )
        .await;
        a_pubs?;
        b_pubs?;
        let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
        for _ in 0..40 {
            seen_a.push(next_publication(&mut on_a).await);
            seen_b.push(next_publication(&mut on_b).await);
        }
        let offsets: Vec<u64> = seen_a.iter().map(|p| p.0).collect();
        assert_eq!(offsets, (1..=40).collect::<Vec<_>>());
        assert_eq!(seen_a, seen_b, "one order on both nodes");
        assert_eq!(seen_a.iter().filter(|p| p.1 == "bob").count(), 20);
        // Recovery from the other node: ann leaves node a, bob publishes on node b, ann
        // comes back on node b from her last position.
        let kept = on_a.position().unwrap();
        drop(on_a);
        drop(ann);
        bob.client().publish("chat:x", "while away").await?;
        let ann = LoginClient::connect(transport, b_addr, Some(&pin)).await?;
        ann.login("ann", "pw").await?;
        let mut back = ann.client().subscribe_from("chat:x", Some(kept)).await?;
        assert!(back.recovered());
        assert_eq!(
            next_publication(&mut back).await,
            (41, "bob".into(), "while away".into())
        );
        a.shutdown().await;
        b.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// The next event of `sub` within 10 s.
async fn next_channel_event(sub: &mut zserver::channels::Subscription) -> zserver::channels::Event {
    crate::support::within(Duration::from_secs(10), sub.recv())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is live")
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn channel_presence_and_join_leave_span_the_cluster() {
    use zserver::channels::{ChannelCalls, Event as Ch};
    let db = Postgres::new("lib_ch_presence");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = start_two_nodes(node_config(&db, dir.path()));
    let (a_addr, b_addr, pin) = (a.local_addr(), b.local_addr(), a.fingerprint());
    let users = |members: Vec<zserver::channels::Member>| {
        let mut users: Vec<String> = members.into_iter().map(|m| m.user).collect();
        users.sort();
        users
    };
    let b = run_on("tokio", async move {
        let transport = zserver::transport("tokio").unwrap();
        let ann = LoginClient::connect(transport.clone(), a_addr, Some(&pin)).await?;
        ann.register("ann", "pw").await?;
        ann.register("bob", "pw").await?;
        ann.login("ann", "pw").await?;
        let bob = LoginClient::connect(transport.clone(), b_addr, Some(&pin)).await?;
        bob.login("bob", "pw").await?;
        let mut on_a = ann.client().subscribe("chat:room").await?;
        // bob subscribes on the other node: ann hears him join, and presence on either node
        // lists both (each member once, ids unique).
        let on_b = bob.client().subscribe("chat:room").await?;
        match next_channel_event(&mut on_a).await {
            Ch::Join(m) => assert_eq!(m.user, "bob"),
            other => panic!("bob's join, got {other:?}"),
        }
        for client in [&ann, &bob] {
            let members = client.client().presence("chat:room").await?;
            let mut ids: Vec<u64> = members.iter().map(|m| m.client).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 2, "{members:?}");
            assert_eq!(users(members), ["ann", "bob"]);
        }
        // He leaves: ann hears it, and presence shows her alone.
        on_b.unsubscribe().await?;
        match next_channel_event(&mut on_a).await {
            Ch::Leave(m) => assert_eq!(m.user, "bob"),
            other => panic!("bob's leave, got {other:?}"),
        }
        assert_eq!(users(ann.client().presence("chat:room").await?), ["ann"]);
        // He joins again, and his node stops: he leaves with it.
        let _again = bob.client().subscribe("chat:room").await?;
        assert!(matches!(next_channel_event(&mut on_a).await, Ch::Join(_)));
        Ok::<_, Error>((ann, on_a, b))
    })
    .unwrap();
    let (ann, mut on_a, b) = b;
    run_on("smol", async move { b.shutdown().await });
    run_on("tokio", async move {
        match next_channel_event(&mut on_a).await {
            Ch::Leave(m) => assert_eq!(m.user, "bob"),
            other => panic!("bob's leave with his node, got {other:?}"),
        }
        assert_eq!(users(ann.client().presence("chat:room").await?), ["ann"]);
        a.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}
