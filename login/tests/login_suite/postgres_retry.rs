//! PostgreSQL operations whose answer is lost after they committed (the connection breaks
//! between the commit and the reply) are retried on a new connection without being applied
//! twice or lost. A proxy in front of the server cuts the connection instead of forwarding
//! the reply that carries a chosen command tag; PostgreSQL sends that reply only after the
//! statement (or the transaction) committed.
//!
//! Ignored unless asked for: they need a server (`bash .ci/test` starts one).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use zserver_login::{Store, StoreError};

use crate::support::pg::Postgres;

/// A TCP proxy to PostgreSQL that cuts the connection carrying the next reply with one of the
/// armed command tags.
struct CutProxy {
    addr: SocketAddr,
    armed: Arc<Mutex<Vec<&'static str>>>,
    cuts: Arc<AtomicUsize>,
}

impl CutProxy {
    fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = CutProxy {
            addr: listener.local_addr().unwrap(),
            armed: Arc::default(),
            cuts: Arc::default(),
        };
        let (armed, cuts) = (proxy.armed.clone(), proxy.cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(upstream).unwrap();
                let (armed, cuts) = (armed.clone(), cuts.clone());
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || relay_replies(server, client, &armed, &cuts));
            }
        });
        proxy
    }

    /// Cuts the connection with the next reply whose command tag is one of `tags`
    /// (`INSERT 0 1`, `UPDATE 3`, `COMMIT`, ...).
    fn arm(&self, tags: &[&'static str]) {
        *self.armed.lock().unwrap() = tags.to_vec();
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Forwards the server's replies to the client, except the one an armed tag marks: then both
/// sockets are shut instead.
fn relay_replies(
    mut server: TcpStream,
    mut client: TcpStream,
    armed: &Mutex<Vec<&'static str>>,
    cuts: &AtomicUsize,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let hit = {
            let mut armed = armed.lock().unwrap();
            let hit = armed.iter().any(|tag| {
                let tag = format!("{tag}\0");
                chunk.windows(tag.len()).any(|w| w == tag.as_bytes())
            });
            if hit {
                armed.clear();
            }
            hit
        };
        if hit {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if client.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// A fresh database, and a store reaching it through a [`CutProxy`].
fn through_proxy(name: &str) -> (Postgres, CutProxy, Store) {
    let pg = Postgres::new(name);
    let config = ::postgres::Config::from_str(&pg.url).unwrap();
    let host = match &config.get_hosts()[0] {
        ::postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test server must be reached over TCP, not {other:?}"),
    };
    let port = config.get_ports()[0];
    let upstream: SocketAddr = format!("{host}:{port}").parse().unwrap();
    let proxy = CutProxy::start(upstream);
    let url = pg
        .url
        .replacen(&format!("{host}:{port}"), &proxy.addr.to_string(), 1);
    let store = Store::connect_postgres(&url).unwrap();
    (pg, proxy, store)
}

fn texts(store: &Store, user: &str) -> Vec<String> {
    let taken = store.take_messages(user).unwrap();
    taken.into_iter().map(|m| m.text).collect()
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn a_queued_message_whose_answer_was_lost_is_stored_once() {
    let (_pg, proxy, store) = through_proxy("retry_queue");
    store.add_user("bob", "pw").unwrap();
    proxy.arm(&["INSERT 0 1"]);
    store.queue_message("bob", "ann", "once").unwrap();
    assert_eq!(proxy.cuts(), 1, "the insert's answer was cut");
    assert_eq!(texts(&store, "bob"), ["once"]);
    // A retry for a user who does not exist still says so.
    proxy.arm(&["INSERT 0 0"]);
    assert_eq!(
        store.queue_message("nobody", "ann", "lost"),
        Err(StoreError::NoSuchUser("nobody".into()))
    );
    assert_eq!(proxy.cuts(), 2);
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn messages_for_many_whose_answer_was_lost_are_stored_once() {
    let (_pg, proxy, store) = through_proxy("retry_queue_many");
    for user in ["bob", "cy"] {
        store.add_user(user, "pw").unwrap();
    }
    let to = ["bob".to_string(), "cy".to_string()];
    // One statement: its answer ends with the tag of its outer SELECT (the two recipients).
    proxy.arm(&["SELECT 2"]);
    store.queue_for_many(&to, "ann", "once each").unwrap();
    assert_eq!(proxy.cuts(), 1, "the statement's answer was cut");
    assert_eq!(texts(&store, "bob"), ["once each"]);
    assert_eq!(texts(&store, "cy"), ["once each"]);
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn messages_taken_whose_answer_was_lost_are_delivered_not_lost() {
    let (_pg, proxy, store) = through_proxy("retry_take");
    store.add_user("bob", "pw").unwrap();
    for text in ["one", "two", "three"] {
        store.queue_message("bob", "ann", text).unwrap();
    }
    // Whichever statement takes the three messages loses its answer.
    proxy.arm(&["UPDATE 3", "DELETE 3"]);
    assert_eq!(texts(&store, "bob"), ["one", "two", "three"]);
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(texts(&store, "bob"), Vec::<String>::new());

    // The claim's delete loses its answer: nothing is delivered twice either.
    store.queue_message("bob", "ann", "four").unwrap();
    proxy.arm(&["DELETE 1"]);
    assert_eq!(texts(&store, "bob"), ["four"]);
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(texts(&store, "bob"), Vec::<String>::new());
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn account_changes_whose_answers_were_lost_report_success() {
    let (_pg, proxy, store) = through_proxy("retry_accounts");
    proxy.arm(&["INSERT 0 1"]);
    store.add_user("cy", "first").unwrap();
    assert_eq!(proxy.cuts(), 1);
    store.verify("cy", "first").unwrap();

    proxy.arm(&["UPDATE 1"]);
    store.change_password("cy", "first", "second").unwrap();
    assert_eq!(proxy.cuts(), 2);
    store.verify("cy", "second").unwrap();

    store
        .queue_message("cy", "ann", "gone with the account")
        .unwrap();
    proxy.arm(&["COMMIT"]);
    store.delete_user("cy").unwrap();
    assert_eq!(proxy.cuts(), 3);
    assert!(!store.exists("cy").unwrap());
    // A name that was never there is still refused.
    assert_eq!(
        store.delete_user("cy"),
        Err(StoreError::NoSuchUser("cy".into()))
    );
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn a_claim_whose_delete_never_came_expires() {
    let pg = Postgres::new("claim_expiry");
    let store = Store::connect_postgres(&pg.url).unwrap();
    store.add_user("bob", "pw").unwrap();
    store.queue_message("bob", "ann", "claimed").unwrap();
    let mut raw = pg.raw();
    // A login elsewhere claimed it just now (and is about to delete it): not taken again.
    raw.batch_execute(
        "UPDATE messages SET taken_by = 'elsewhere',
             taken_unix_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .unwrap();
    assert_eq!(texts(&store, "bob"), Vec::<String>::new());
    // That login failed before its delete, a minute ago: the next login takes the message.
    raw.batch_execute("UPDATE messages SET taken_unix_ms = taken_unix_ms - 61000")
        .unwrap();
    assert_eq!(texts(&store, "bob"), ["claimed"]);
    assert_eq!(texts(&store, "bob"), Vec::<String>::new());
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn a_version_1_database_is_migrated_with_its_messages() {
    let pg = Postgres::new("migrate_v1");
    // The schema as version 1 wrote it, with a user and a queued message.
    pg.raw()
        .batch_execute(
            "CREATE TABLE zserver_schema (version INT NOT NULL);
             INSERT INTO zserver_schema VALUES (1);
             CREATE TABLE users (
                 name TEXT PRIMARY KEY, hash TEXT NOT NULL, created_unix_ms BIGINT NOT NULL);
             CREATE TABLE messages (
                 id BIGSERIAL PRIMARY KEY,
                 to_user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                 from_user TEXT NOT NULL, text TEXT NOT NULL, at_unix_ms BIGINT NOT NULL);
             CREATE INDEX messages_to_user ON messages(to_user, id);
             INSERT INTO users VALUES ('bob', 'not a real hash', 0);
             INSERT INTO messages (to_user, from_user, text, at_unix_ms)
                 VALUES ('bob', 'ann', 'from version 1', 1);",
        )
        .unwrap();
    let store = Store::connect_postgres(&pg.url).unwrap();
    let version: i32 = pg
        .raw()
        .query_one("SELECT version FROM zserver_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    // Accounts made before account changes were recorded are at generation 0.
    let generation: i64 = pg
        .raw()
        .query_one("SELECT generation FROM users WHERE name = 'bob'", &[])
        .unwrap()
        .get(0);
    assert_eq!(generation, 0);
    assert_eq!(store.last_account_change(), Ok(0));
    store.queue_message("bob", "ann", "from version 2").unwrap();
    assert_eq!(texts(&store, "bob"), ["from version 1", "from version 2"]);
}
