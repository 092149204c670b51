//! Three `zserver serve --cluster ... --store postgres://...` processes as one service, one
//! on each back end: users on different nodes see and push to each other, a user's sessions
//! on two nodes each get their pushes, a login past the most sessions kicks the oldest on
//! another node, a killed node's users leave presence while the others keep
//! working, and messages stored meanwhile are delivered after the node restarts.
//!
//! Needs PostgreSQL and NATS on loopback: `bash .ci/test` starts them (or
//! `source .ci/services.sh start`), which sets `ZSERVER_TEST_POSTGRES` and `ZSERVER_TEST_NATS`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::{Error, Transport};
use zserver_login::protocol::Incoming;
use zserver_login::{Event, LoginClient};

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the services with `source .ci/services.sh start`")
    })
}

mod common;
use common::free_addr;
#[path = "../../login/tests/support/mod.rs"]
mod support;
use support::next_event;
use support::pg::Postgres as Database;

/// The cluster's shared settings.
struct Cluster {
    dir: PathBuf,
    store: String,
    nats: String,
    name: String,
    extra: Vec<&'static str>,
}

/// One node: a `zserver serve` process.
struct Node {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    fn new(tag: &str, db: &Database, extra: &[&'static str]) -> Self {
        let dir = std::env::temp_dir().join(format!("zserver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            store: db.url.clone(),
            nats: env("ZSERVER_TEST_NATS"),
            name: format!("{tag}{}", std::process::id()),
            extra: extra.to_vec(),
        }
    }

    /// Starts a node on `backend` and waits until it has joined (its log: `node-N.log`).
    fn start(&self, n: usize, backend: &str) -> Node {
        let addr = free_addr();
        let log = File::create(self.dir.join(format!("node-{n}.log"))).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string(), "--backend", backend])
            .args(["--store", &self.store, "--cluster", &self.nats])
            .args(["--cluster-name", &self.name])
            .args(&self.extra)
            .arg("--data")
            .arg(self.dir.join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut fingerprint = String::new();
        let mut joined = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(fp) = line.strip_prefix("server key fingerprint: ") {
                fingerprint = fp.to_owned();
            }
            if line.starts_with("cluster `") {
                joined = true;
                break;
            }
        }
        assert!(
            joined,
            "node {n} did not join; see {}",
            self.dir.join(format!("node-{n}.log")).display()
        );
        // Keep reading its output so it never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Node {
            child,
            addr,
            fingerprint,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `fut` on the tokio back end and waits for it here.
fn run<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    support::run_on("tokio", Duration::from_secs(120), fut)
}

fn transport() -> Arc<dyn Transport> {
    zserver::transport("tokio").unwrap()
}

async fn user(node: (SocketAddr, String), name: &str) -> Result<LoginClient, Error> {
    let client = LoginClient::connect(transport(), node.0, Some(&node.1)).await?;
    client.login(name, "pw").await?;
    Ok(client)
}

/// Registers `names` (password `pw`) through `node`.
async fn register(node: &(SocketAddr, String), names: &[&str]) -> Result<(), Error> {
    let admin = LoginClient::connect(transport(), node.0, Some(&node.1)).await?;
    for name in names {
        admin.register(name, "pw").await?;
    }
    Ok(())
}

fn at(node: &Node) -> (SocketAddr, String) {
    (node.addr, node.fingerprint.clone())
}

fn message(from: &str, text: &str) -> Event {
    Event::Message(Incoming {
        from: from.into(),
        text: text.into(),
    })
}

/// Polls `who` until it lists exactly `expected`; how long that took.
async fn until_who(client: &LoginClient, expected: &[&str]) -> Duration {
    let start = Instant::now();
    loop {
        let who = client.who().await.unwrap();
        if who == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "who is {who:?}, expected {expected:?}"
        );
        zserver::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn three_nodes_push_kick_survive_a_killed_node_and_deliver_after_restart() {
    let db = Database::new("three");
    let cluster = Cluster::new("three", &db, &["--single-session"]);
    let n1 = cluster.start(1, "tokio");
    let n2 = cluster.start(2, "async-std");
    let mut n3 = cluster.start(3, "smol");
    assert_eq!(n1.fingerprint, n3.fingerprint, "nodes share the key");
    let (a1, a2, a3) = (at(&n1), at(&n2), at(&n3));

    let (ann, bob2) = run(async move {
        register(&a1, &["ann", "bob", "cid", "dan"]).await?;
        let ann = user(a1.clone(), "ann").await?;
        let bob = user(a2.clone(), "bob").await?;
        let cid = user(a3.clone(), "cid").await?;
        for client in [&ann, &bob, &cid] {
            until_who(client, &["ann", "bob", "cid"]).await;
        }

        // Pushes across nodes, one way and another.
        let report = ann.push(&["bob"], "hi bob").await?;
        assert_eq!(report.delivered, ["bob"]);
        assert_eq!(next_event(&bob).await, message("ann", "hi bob"));
        let report = bob.push(&["cid", "ann"], "hi both").await?;
        assert_eq!(report.stored, Vec::<String>::new());
        assert_eq!(next_event(&cid).await, message("bob", "hi both"));
        assert_eq!(next_event(&ann).await, message("bob", "hi both"));
        // A broadcast reaches everyone online, on every node.
        let report = cid.push_all("hello all").await?;
        assert_eq!(report.delivered.len(), 3, "{report:?}");
        for client in [&ann, &bob, &cid] {
            assert_eq!(next_event(client).await, message("cid", "hello all"));
        }

        // A second login on another node kicks the first session.
        let bob2 = user(a3.clone(), "bob").await?;
        assert!(matches!(next_event(&bob).await, Event::Kicked(_)));
        bob.client().connection().closed().await;
        until_who(&ann, &["ann", "bob", "cid"]).await;
        ann.push(&["bob"], "which bob?").await?;
        assert_eq!(next_event(&bob2).await, message("ann", "which bob?"));
        drop(cid);
        Ok::<_, Error>((ann, bob2))
    })
    .unwrap();

    // Node 3 dies without a word: its users leave presence, the others carry on.
    n3.child.kill().unwrap();
    n3.child.wait().unwrap();
    let a2 = at(&n2);
    let ann = run(async move {
        let gone = until_who(&ann, &["ann"]).await;
        eprintln!("a killed node's users left presence after {gone:?}");
        assert!(gone < Duration::from_secs(10), "presence took {gone:?}");
        // The users of the dead node lost their connection.
        bob2.client().connection().closed().await;
        let report = ann
            .push(&["cid", "bob", "dan"], "while you were out")
            .await?;
        assert!(report.delivered.is_empty(), "{report:?}");
        assert_eq!(report.stored, ["cid", "bob", "dan"]);
        // dan logs in on node 2 and gets his message; node 2 works on.
        let dan = user(a2.clone(), "dan").await?;
        until_who(&ann, &["ann", "dan"]).await;
        ann.push(&["dan"], "welcome").await?;
        assert_eq!(next_event(&dan).await, message("ann", "welcome"));
        Ok::<_, Error>(ann)
    })
    .unwrap();

    // Node 3 comes back (a new node to the others); its users get what was stored.
    drop(n3);
    let n3 = cluster.start(3, "smol");
    let a3 = at(&n3);
    run(async move {
        let cid = LoginClient::connect(transport(), a3.0, Some(&a3.1)).await?;
        let offline = cid.login("cid", "pw").await?;
        assert_eq!(
            offline,
            [Incoming {
                from: "ann".into(),
                text: "while you were out".into()
            }]
        );
        until_who(&ann, &["ann", "cid"]).await;
        ann.push(&["cid"], "back?").await?;
        assert_eq!(next_event(&cid).await, message("ann", "back?"));
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn one_user_on_two_nodes_gets_each_push_on_each_session() {
    let db = Database::new("devices");
    let cluster = Cluster::new("devices", &db, &["--max-sessions", "2"]);
    let n1 = cluster.start(1, "tokio");
    let n2 = cluster.start(2, "smol");
    let (a1, a2) = (at(&n1), at(&n2));
    run(async move {
        register(&a1, &["ann", "bob"]).await?;
        let ann = user(a1.clone(), "ann").await?;
        let phone = user(a1.clone(), "bob").await?;
        let laptop = user(a2.clone(), "bob").await?;
        until_who(&ann, &["ann", "bob"]).await;
        // Pushes from either node reach both sessions; bob is delivered to once.
        let report = ann.push(&["bob"], "from node 1").await?;
        assert_eq!(report.delivered, ["bob"], "{report:?}");
        assert!(report.stored.is_empty(), "{report:?}");
        assert_eq!(next_event(&phone).await, message("ann", "from node 1"));
        assert_eq!(next_event(&laptop).await, message("ann", "from node 1"));
        let eve = LoginClient::connect(transport(), a2.0, Some(&a2.1)).await?;
        eve.register("eve", "pw").await?;
        eve.login("eve", "pw").await?;
        let report = eve.push(&["bob"], "from node 2").await?;
        assert_eq!(report.delivered, ["bob"], "{report:?}");
        assert_eq!(next_event(&phone).await, message("eve", "from node 2"));
        assert_eq!(next_event(&laptop).await, message("eve", "from node 2"));
        // Named once however many sessions.
        until_who(&eve, &["ann", "bob", "eve"]).await;
        // A third session, on node 2: the oldest, on node 1, is kicked by its node.
        let tablet = user(a2.clone(), "bob").await?;
        assert!(matches!(next_event(&phone).await, Event::Kicked(_)));
        phone.client().connection().closed().await;
        // The two left get pushes (node 1 may not yet know the phone is gone: no matter).
        let report = ann.push(&["bob"], "two left").await?;
        assert_eq!(report.delivered, ["bob"], "{report:?}");
        assert_eq!(next_event(&laptop).await, message("ann", "two left"));
        assert_eq!(next_event(&tablet).await, message("ann", "two left"));
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn refused_second_login_and_graceful_leave_across_nodes() {
    let db = Database::new("refuse");
    let cluster = Cluster::new("refuse", &db, &["--single-session", "--refuse-extra-login"]);
    let n1 = cluster.start(1, "tokio");
    let mut n2 = cluster.start(2, "smol");
    let (a1, a2) = (at(&n1), at(&n2));
    let ann = run(async move {
        register(&a1, &["ann", "eve"]).await?;
        let ann = user(a1.clone(), "ann").await?;
        let eve = user(a2.clone(), "eve").await?;
        until_who(&eve, &["ann", "eve"]).await;
        let again = LoginClient::connect(transport(), a2.0, Some(&a2.1)).await?;
        let refused = again.login("ann", "pw").await.unwrap_err();
        assert!(
            refused.to_string().contains("already logged in"),
            "{refused}"
        );
        until_who(&ann, &["ann", "eve"]).await;
        Ok::<_, Error>(ann)
    })
    .unwrap();
    // A node stopped with Ctrl-C says it leaves: its users go at once, not after a time-out.
    let stopped = Command::new("kill")
        .args(["-INT", &n2.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    n2.child.wait().unwrap();
    run(async move {
        let gone = until_who(&ann, &["ann"]).await;
        eprintln!("a leaving node's users left presence after {gone:?}");
        assert!(
            gone < Duration::from_secs(2),
            "a leaving node took {gone:?}"
        );
    });
}

/// `zserver serve` with these arguments fails; its error message.
fn serve_fails(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data")
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_cluster_refuses_the_embedded_store() {
    let dir = std::env::temp_dir().join(format!("zserver-cluster-bad-{}", std::process::id()));
    let stderr = serve_fails(&dir, &["--cluster", "nats://127.0.0.1:1"]);
    assert!(stderr.contains("postgres://"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it"]
fn an_unreachable_nats_fails_the_start_clearly() {
    let db = Database::new("nonats");
    let dir = std::env::temp_dir().join(format!("zserver-nonats-{}", std::process::id()));
    let stderr = serve_fails(
        &dir,
        &["--store", &db.url, "--cluster", "nats://127.0.0.1:1"],
    );
    assert!(
        stderr.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `nats-server` of the test's own on loopback, so the test can stop and restart it.
struct Nats(Child);

impl Nats {
    fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, &[])
    }

    /// Starts a `nats-server` at `addr` with these extra arguments.
    fn start_with(addr: SocketAddr, args: &[&str]) -> Self {
        let mut child = Command::new("nats-server")
            .args(["-a", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (bash .ci/services.sh install)");
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nats-server at {addr} exited ({status}) before listening");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "nats-server up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two nodes (tokio, smol) on a nats-server of the test's own, with `ann` logged in on the
/// first and `bob` on the second, each seeing the other.
#[allow(clippy::type_complexity)]
fn ann_and_bob_apart(
    tag: &str,
) -> (
    Database,
    SocketAddr,
    Nats,
    Cluster,
    Node,
    Node,
    LoginClient,
    LoginClient,
) {
    let db = Database::new(tag);
    let nats_addr = free_addr();
    let nats = Nats::start(nats_addr);
    let mut cluster = Cluster::new(tag, &db, &[]);
    cluster.nats = format!("nats://{nats_addr}");
    let n1 = cluster.start(1, "tokio");
    let n2 = cluster.start(2, "smol");
    let (a1, a2) = (at(&n1), at(&n2));
    let (ann, bob) = run(async move {
        register(&a1, &["ann", "bob"]).await?;
        let ann = user(a1.clone(), "ann").await?;
        let bob = user(a2.clone(), "bob").await?;
        until_who(&ann, &["ann", "bob"]).await;
        Ok::<_, Error>((ann, bob))
    })
    .unwrap();
    (db, nats_addr, nats, cluster, n1, n2, ann, bob)
}

/// The texts `client` receives before one that says `last`, and any that come in the two
/// seconds after it.
async fn texts_before(client: &LoginClient, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let Event::Message(m) = next_event(client).await else {
            panic!("kicked")
        };
        if m.text == last {
            break;
        }
        got.push(m.text);
    }
    zserver::sleep(Duration::from_secs(2)).await;
    while let Some(Event::Message(m)) = client.try_event() {
        got.push(m.text);
    }
    got
}

#[test]
#[ignore = "needs PostgreSQL and nats-server: bash .ci/test starts them"]
fn a_nats_outage_falls_back_to_stored_messages_and_heals() {
    let (_db, nats_addr, nats, _cluster, _n1, n2, ann, bob) = ann_and_bob_apart("outage");

    // NATS goes away: each node soon sees only its own users; a push to a user on the other
    // node is stored for their next login; clients stay connected.
    drop(nats);
    let (ann, bob) = run(async move {
        let alone = until_who(&ann, &["ann"]).await;
        eprintln!("without NATS, the other node's users left presence after {alone:?}");
        until_who(&bob, &["bob"]).await;
        let report = ann.push(&["bob"], "sent during the outage").await?;
        assert_eq!(report.stored, ["bob"]);
        Ok::<_, Error>((ann, bob))
    })
    .unwrap();

    // NATS comes back on the same address: the nodes reconnect and presence heals.
    let _nats = Nats::start(nats_addr);
    let a2 = at(&n2);
    run(async move {
        let healed = until_who(&ann, &["ann", "bob"]).await;
        eprintln!("after NATS came back, presence healed in {healed:?}");
        ann.push(&["bob"], "live again").await?;
        // The message stored during the outage reaches bob exactly once: live, if the node
        // that stored it could tell his node once NATS was back, or else at his next login.
        let live = texts_before(&bob, "live again").await;
        let again = LoginClient::connect(transport(), a2.0, Some(&a2.1)).await?;
        let offline = again.login("bob", "pw").await?;
        let mut all: Vec<String> = offline.into_iter().map(|m| m.text).collect();
        eprintln!(
            "stored during the outage: {} live, {} at the next login",
            live.len(),
            all.len()
        );
        all.extend(live);
        assert_eq!(all, ["sent during the outage"]);
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// Sends SIGSTOP or SIGCONT to `child`.
fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal}");
}

#[test]
#[ignore = "needs PostgreSQL and nats-server: bash .ci/test starts them"]
fn a_push_through_a_stalled_nats_arrives_exactly_once() {
    let (_db, _, nats, _cluster, _n1, n2, ann, bob) = ann_and_bob_apart("stall");
    // nats-server stops (not gone: its sockets stay open) while ann pushes to bob on the
    // other node; the push is answered after the cluster's request time-out, then NATS
    // goes on and the request it held reaches bob's node late.
    signal(&nats.0, "-STOP");
    let (ann, report) = run(async move {
        let report = ann.push(&["bob"], "through a stall").await;
        Ok::<_, Error>((ann, report?))
    })
    .unwrap();
    signal(&nats.0, "-CONT");
    eprintln!("the push during the stall was answered {report:?}");
    assert!(report.delivered.is_empty(), "{report:?}");
    assert_eq!(
        [report.stored.clone(), report.unconfirmed.clone()].concat(),
        ["bob"]
    );
    let a2 = at(&n2);
    run(async move {
        // Whatever happened, bob gets it once: live once NATS is back, or at his next login.
        until_who(&ann, &["ann", "bob"]).await;
        ann.push(&["bob"], "after the stall").await?;
        let mut got = texts_before(&bob, "after the stall").await;
        let again = LoginClient::connect(transport(), a2.0, Some(&a2.1)).await?;
        got.extend(again.login("bob", "pw").await?.into_iter().map(|m| m.text));
        assert_eq!(got, ["through a stall"]);
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn a_postgres_outage_fails_logins_and_storing_but_live_pushes_go_on() {
    let db = Database::new("pgdown");
    let cluster = Cluster::new("pgdown", &db, &[]);
    let n1 = cluster.start(1, "tokio");
    let n2 = cluster.start(2, "async-std");
    let (a1, a2) = (at(&n1), at(&n2));
    let (ann, bob) = run(async move {
        register(&a1, &["ann", "bob", "dan"]).await?;
        let ann = user(a1.clone(), "ann").await?;
        let bob = user(a2.clone(), "bob").await?;
        until_who(&ann, &["ann", "bob"]).await;
        Ok::<_, Error>((ann, bob))
    })
    .unwrap();

    db.set_reachable(false);
    let (a1, a2) = (at(&n1), at(&n2));
    let (ann, bob) = run(async move {
        // Sessions and live pushes need no database.
        let report = ann.push(&["bob"], "still here").await?;
        assert_eq!(report.delivered, ["bob"]);
        assert_eq!(next_event(&bob).await, message("ann", "still here"));
        assert_eq!(ann.who().await?, ["ann", "bob"]);
        // Storing for someone offline, and logging in, fail with a clear error.
        let stored = ann.push(&["dan"], "for later").await.unwrap_err();
        assert!(stored.to_string().contains("storage error"), "{stored}");
        let dan = LoginClient::connect(transport(), a2.0, Some(&a2.1)).await?;
        let login = dan.login("dan", "pw").await.unwrap_err();
        assert!(login.to_string().contains("storage error"), "{login}");
        Ok::<_, Error>((ann, bob))
    })
    .unwrap();

    db.set_reachable(true);
    run(async move {
        let report = ann.push(&["dan"], "for later").await?;
        assert_eq!(report.stored, ["dan"]);
        let dan = LoginClient::connect(transport(), a1.0, Some(&a1.1)).await?;
        let offline = dan.login("dan", "pw").await?;
        assert_eq!(offline.len(), 1);
        drop(bob);
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it"]
fn user_commands_work_on_the_postgres_store() {
    let db = Database::new("usercmd");
    let dir = std::env::temp_dir().join(format!("zserver-usercmd-{}", std::process::id()));
    let zserver = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("user")
            .args(["--store", &db.url, "--data"])
            .arg(&dir)
            .args(args)
            .env("ZSERVER_PASSWORD", "pw")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    assert!(zserver(&["add", "zed"]).0);
    assert!(zserver(&["add", "amy"]).0);
    let (ok, dup) = zserver(&["add", "amy"]);
    assert!(!ok && dup.contains("already exists"), "{dup}");
    assert_eq!(zserver(&["list"]), (true, "amy\nzed\n".to_owned()));
    assert!(zserver(&["del", "zed"]).0);
    assert_eq!(zserver(&["list"]), (true, "amy\n".to_owned()));
    // Nothing went to an embedded database in the data directory.
    assert!(!dir.join("zserver.db").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn concurrent_pushes_to_another_node_all_arrive_in_order_with_right_reports() {
    let db = Database::new("burst");
    let cluster = Cluster::new("burst", &db, &[]);
    let n1 = cluster.start(1, "tokio");
    let n2 = cluster.start(2, "async-std");
    let (a1, a2) = (at(&n1), at(&n2));
    run(async move {
        register(&a1, &["ann", "bob", "cid", "dan"]).await?;
        let ann = Arc::new(user(a1.clone(), "ann").await?);
        let bob = user(a2.clone(), "bob").await?;
        let cid = user(a2.clone(), "cid").await?;
        until_who(&ann, &["ann", "bob", "cid"]).await;
        // 16 tasks × 60 pushes, in flight together, to two users on node 2 and one offline
        // user: pushes share NATS requests, and each must get its own report.
        let (tasks, each) = (16, 60);
        let (done_tx, done_rx) = async_channel::unbounded();
        for t in 0..tasks {
            let (ann, done) = (ann.clone(), done_tx.clone());
            zserver::spawn(async move {
                let mut result = Ok(());
                for i in 0..each {
                    let to = ["bob", "cid", "dan"][i % 3];
                    let report = match ann.push(&[to], &format!("{t}:{i}")).await {
                        Ok(report) => report,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    };
                    let expected = if to == "dan" {
                        (vec![], vec![to.to_owned()])
                    } else {
                        (vec![to.to_owned()], vec![])
                    };
                    if (&report.delivered, &report.stored) != (&expected.0, &expected.1) {
                        result = Err(Error::msg(format!("push {t}:{i} to {to}: {report:?}")));
                        break;
                    }
                }
                let _ = done.send(result).await;
            });
        }
        for _ in 0..tasks {
            done_rx.recv().await.unwrap()?;
        }
        // Every message arrived once, and each task's messages in the order it sent them.
        for client in [&bob, &cid] {
            let mut last: Vec<Option<usize>> = vec![None; tasks];
            for _ in 0..tasks * each / 3 {
                let Event::Message(m) = next_event(client).await else {
                    panic!("expected a message")
                };
                let (t, i) = m.text.split_once(':').unwrap();
                let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
                assert!(
                    last[t].is_none_or(|prev| prev < i),
                    "task {t}: {i} after {last:?}"
                );
                last[t] = Some(i);
            }
            assert!(client.try_event().is_none());
        }
        let dan = LoginClient::connect(transport(), a1.0, Some(&a1.1)).await?;
        assert_eq!(dan.login("dan", "pw").await?.len(), tasks * each / 3);
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn a_push_from_a_node_that_does_not_know_the_user_yet_is_still_delivered_live() {
    let db = Database::new("race");
    let cluster = Cluster::new("race", &db, &[]);
    let n2 = cluster.start(2, "smol");
    let a2 = at(&n2);
    let bob = run(async move {
        register(&a2, &["ann", "bob"]).await?;
        user(a2.clone(), "bob").await
    })
    .unwrap();
    // A node that has just started learns the others' users within a heartbeat; a push it
    // makes before that is stored, and the node holding the user takes it from the store.
    let n1 = cluster.start(1, "tokio");
    let a1 = at(&n1);
    run(async move {
        let ann = user(a1.clone(), "ann").await?;
        let report = ann.push(&["bob"], "are you there?").await?;
        eprintln!("pushed from a fresh node: {report:?}");
        assert_eq!(report.delivered.len() + report.stored.len(), 1);
        assert_eq!(next_event(&bob).await, message("ann", "are you there?"));
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and nats-server: bash .ci/test starts them"]
fn a_nats_password_in_the_url_is_used_and_never_shown() {
    let db = Database::new("nats_auth");
    let nats_addr = free_addr();
    let _nats = Nats::start_with(nats_addr, &["--user", "zs", "--pass", "p@ss w/rd"]);
    // Credentials with reserved characters are percent-encoded in the URL.
    let mut cluster = Cluster::new("natsauth", &db, &[]);
    cluster.nats = format!("nats://zs:p%40ss%20w%2Frd@{nats_addr}");
    let node = cluster.start(1, "tokio");
    drop(node);

    let wrong = format!("nats://zs:not-the-password@{nats_addr}");
    let dir = cluster.dir.join("wrong-password");
    let stderr = serve_fails(&dir, &["--store", &db.url, "--cluster", &wrong]);
    assert!(stderr.contains("authorization violation"), "{stderr}");
    assert!(
        stderr.contains(&format!("nats://***@{nats_addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

/// The next event of `client` is a kick for `why`, and its connection closes.
async fn kicked(client: &LoginClient, why: &str) {
    match next_event(client).await {
        Event::Kicked(reason) => assert_eq!(reason, why),
        other => panic!("kicked ({why}) expected, got {other:?}"),
    }
    client.client().connection().closed().await;
}

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn a_deleted_user_and_a_changed_password_end_sessions_on_every_node() {
    let db = Database::new("accounts");
    let cluster = Cluster::new("accounts", &db, &[]);
    let n1 = cluster.start(1, "tokio");
    let n2 = cluster.start(2, "smol");
    let (a1, a2) = (at(&n1), at(&n2));
    let store = db.url.clone();
    run(async move {
        register(&a1, &["ann", "gina", "hal"]).await?;
        let ann = user(a1.clone(), "ann").await?;
        let (phone, laptop) = (
            user(a1.clone(), "gina").await?,
            user(a2.clone(), "gina").await?,
        );
        until_who(&ann, &["ann", "gina"]).await;

        // `zserver user del` against the shared store: gina's sessions on both nodes end.
        let started = Instant::now();
        let (done, out) = async_channel::bounded(1);
        std::thread::spawn(move || {
            let out = Command::new(BIN)
                .args(["user", "--store", &store, "del", "gina"])
                .output();
            let _ = done.send_blocking(out.unwrap());
        });
        let out = out.recv().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        kicked(&phone, "account deleted").await;
        kicked(&laptop, "account deleted").await;
        eprintln!(
            "both sessions ended {:?} after `user del`",
            started.elapsed()
        );
        until_who(&ann, &["ann"]).await;
        let push = ann.push(&["gina"], "there?").await.unwrap_err();
        assert!(push.to_string().contains("no user `gina`"), "{push}");

        // hal changes his password on node 1: his session on node 2 ends, this one stays.
        let (desk, away) = (
            user(a1.clone(), "hal").await?,
            user(a2.clone(), "hal").await?,
        );
        until_who(&ann, &["ann", "hal"]).await;
        desk.change_password("pw", "new-pw").await?;
        kicked(&away, "password changed").await;
        assert_eq!(
            desk.who().await?,
            ["ann", "hal"],
            "the session that changed it stays"
        );

        // hal deletes his account through node 2's `delete`: his session on node 1 ends.
        let again = LoginClient::connect(transport(), a2.0, Some(&a2.1)).await?;
        again.login("hal", "new-pw").await?;
        let started = Instant::now();
        again.delete_account("new-pw").await?;
        kicked(&desk, "account deleted").await;
        eprintln!(
            "node 1's session ended {:?} after `delete` on node 2",
            started.elapsed()
        );
        until_who(&ann, &["ann"]).await;
        Ok::<_, Error>(())
    })
    .unwrap();
}
