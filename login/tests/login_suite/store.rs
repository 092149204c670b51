//! One behavioural suite for [`Store`], run on both back ends: the embedded SQLite database
//! (`mod sqlite`) and PostgreSQL (`mod postgres`, ignored unless asked for: it needs the server
//! named by `ZSERVER_TEST_POSTGRES`, which `bash .ci/test` or `source .ci/services.sh start`
//! provides). Each PostgreSQL test runs in a fresh database of its own, dropped at the end.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zserver_login::store::{check_name, AccountChange, ChangeKind, Message};
use zserver_login::{Store, StoreError};

use crate::support::pg::{admin, with_db, Postgres};

/// Where the stores of one test live; [`Backend::open`] gives a new [`Store`] on the same data
/// each time (a reopen, or another node).
trait Backend: Sync {
    fn open(&self) -> Store;
}

/// A temporary directory holding the SQLite database.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Backend for Sqlite {
    fn open(&self) -> Store {
        let store = Store::open(self.dir.path()).unwrap();
        assert_eq!(store.backend_name(), "sqlite");
        store
    }
}

impl Backend for Postgres {
    fn open(&self) -> Store {
        let store = Store::connect_postgres(&self.url).unwrap();
        assert_eq!(store.backend_name(), "postgres");
        store
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The shared suite: each listed function becomes a test in `mod sqlite` and an ignored one
/// in `mod postgres`, with a fresh back end.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Sqlite::new());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                #[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
                fn $name() {
                    super::$name(&super::Postgres::new(stringify!($name)));
                }
            )*
        }
    };
}

suite!(
    add_verify_wrong_unknown_duplicate,
    bad_names_and_passwords_refused,
    change_password,
    account_changes_are_recorded_in_order,
    delete_user_removes_messages,
    messages_survive_reopen_in_order,
    users_sorted,
    take_empties_and_unknown_user_has_none,
    concurrent_opens_of_a_new_database,
    two_nodes_deliver_every_message_exactly_once,
    two_nodes_race_to_add_the_same_user,
    two_nodes_race_to_change_a_password,
    one_message_for_many_users_at_once,
    channel_history_has_one_order_for_two_nodes,
    two_nodes_race_to_claim_a_handover,
);

/// Channel history through [`HistoryStore`]: two stores on the same data (two nodes) see
/// one history, the store giving each append its offset; the newest `keep` are kept; a
/// second create changes nothing; a channel without history takes no append.
fn channel_history_has_one_order_for_two_nodes(b: &dyn Backend) {
    use zserver::channels::{HistoryStore, StoredPublication};
    let (one, two) = (b.open(), b.open());
    let p = |text: &str| StoredPublication {
        offset: 0,
        at_unix_ms: 1000,
        from: "ann".into(),
        data: text.as_bytes().to_vec(),
    };
    assert_eq!(one.load("chat:a", 10).unwrap(), None);
    assert_eq!(one.append("chat:a", &p("nowhere"), 3).unwrap(), None);
    one.create("chat:a", u64::MAX).unwrap();
    two.create("chat:a", 7).unwrap();
    assert_eq!(two.load("chat:a", 10).unwrap().unwrap().epoch, u64::MAX);
    // Two nodes appending at once: offsets 1..=40, each once.
    let (one, two) = (Arc::new(one), Arc::new(two));
    let appenders: Vec<_> = [one.clone(), two.clone()]
        .into_iter()
        .map(|store| {
            thread::spawn(move || {
                (0..20)
                    .map(|_| store.append("chat:a", &p("x"), 100).unwrap().unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = appenders
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    offsets.sort();
    assert_eq!(offsets, (1..=40).collect::<Vec<_>>());
    assert_eq!(one.append("chat:a", &p("last"), 3).unwrap(), Some(41));
    let loaded = two.load("chat:a", 10).unwrap().unwrap();
    assert_eq!((loaded.epoch, loaded.top), (u64::MAX, 41));
    let kept: Vec<u64> = loaded.publications.iter().map(|p| p.offset).collect();
    assert_eq!(kept, [39, 40, 41], "the newest 3 kept");
    assert_eq!(loaded.publications[2].data, b"last");
    assert_eq!(
        one.load("chat:a", 1).unwrap().unwrap().publications.len(),
        1
    );
}

fn add_verify_wrong_unknown_duplicate(b: &dyn Backend) {
    let store = b.open();
    store.add_user("alice", "s3cret pass").unwrap();
    assert_eq!(store.verify("alice", "s3cret pass"), Ok(()));
    assert_eq!(
        store.verify("alice", "wrong"),
        Err(StoreError::WrongPassword)
    );
    assert_eq!(
        store.verify("nobody", "s3cret pass"),
        Err(StoreError::WrongPassword)
    );
    // Refused before any hashing.
    assert_eq!(store.verify("../x", "x"), Err(StoreError::WrongPassword));
    assert_eq!(store.verify("alice", ""), Err(StoreError::WrongPassword));
    assert_eq!(
        store.add_user("alice", "other"),
        Err(StoreError::Duplicate("alice".into()))
    );
    assert_eq!(store.verify("alice", "s3cret pass"), Ok(()));
    assert!(store.exists("alice").unwrap());
    assert!(!store.exists("Alice").unwrap());
    // Case-sensitive: `Alice` is another user.
    store.add_user("Alice", "other").unwrap();
    assert_eq!(store.verify("Alice", "other"), Ok(()));
    assert_eq!(
        store.verify("Alice", "s3cret pass"),
        Err(StoreError::WrongPassword)
    );
}

fn bad_names_and_passwords_refused(b: &dyn Backend) {
    let store = b.open();
    let long = "a".repeat(33);
    for bad in ["", "../x", ".hidden", long.as_str(), "a/b", "a b", "é"] {
        assert_eq!(check_name(bad), Err(StoreError::BadName(bad.into())));
        assert_eq!(
            store.add_user(bad, "pw"),
            Err(StoreError::BadName(bad.into()))
        );
    }
    for good in ["a", "A.b-c_9", "x.", &"z".repeat(32)] {
        assert_eq!(check_name(good), Ok(()), "{good}");
    }
    assert_eq!(store.add_user("bob", ""), Err(StoreError::BadPassword));
    assert_eq!(
        store.add_user("bob", &"p".repeat(1025)),
        Err(StoreError::BadPassword)
    );
    assert!(store.users().unwrap().is_empty());
    store.add_user("bob", &"p".repeat(1024)).unwrap();
    assert_eq!(store.verify("bob", &"p".repeat(1024)), Ok(()));
}

fn change_password(b: &dyn Backend) {
    let store = b.open();
    store.add_user("carol", "old-pw").unwrap();
    assert_eq!(
        store.change_password("carol", "not-it", "new-pw"),
        Err(StoreError::WrongPassword)
    );
    assert_eq!(
        store.change_password("nobody", "old-pw", "new-pw"),
        Err(StoreError::WrongPassword)
    );
    assert_eq!(
        store.change_password("carol", "old-pw", ""),
        Err(StoreError::BadPassword)
    );
    assert_eq!(
        store.change_password("carol", "old-pw", &"n".repeat(1025)),
        Err(StoreError::BadPassword)
    );
    assert_eq!(store.verify("carol", "old-pw"), Ok(()));
    store.change_password("carol", "old-pw", "new-pw").unwrap();
    assert_eq!(
        store.verify("carol", "old-pw"),
        Err(StoreError::WrongPassword)
    );
    assert_eq!(store.verify("carol", "new-pw"), Ok(()));
    // Another node sees the new password.
    assert_eq!(b.open().verify("carol", "new-pw"), Ok(()));
}

fn account_changes_are_recorded_in_order(b: &dyn Backend) {
    let store = b.open();
    assert_eq!(store.last_account_change(), Ok(0));
    store.add_user("fay", "pw").unwrap();
    assert_eq!(store.check_login("fay", "pw"), Ok(0));
    let kept = "00000000000000ab:7";
    let first = store
        .change_password_keeping("fay", "pw", "pw2", Some(kept))
        .unwrap();
    assert!(first > 0);
    // A login reads the generation the change gave; another node (or the CLI) sees it.
    assert_eq!(store.check_login("fay", "pw2"), Ok(first));
    let other = b.open();
    assert_eq!(other.last_account_change(), Ok(first));
    other.set_password("fay", "reset").unwrap();
    assert_eq!(
        other.set_password("nobody", "x"),
        Err(StoreError::NoSuchUser("nobody".into()))
    );
    other.delete_user_keeping("fay", Some(kept)).unwrap();
    let changes = store.account_changes(0).unwrap();
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let change = |seq, kind| AccountChange {
        seq,
        user: "fay".into(),
        kind,
    };
    assert_eq!(
        changes,
        [
            change(
                first,
                ChangeKind::PasswordChanged {
                    kept: Some(kept.into())
                }
            ),
            change(seqs[1], ChangeKind::PasswordChanged { kept: None }),
            change(
                seqs[2],
                ChangeKind::Deleted {
                    kept: Some(kept.into())
                }
            ),
        ]
    );
    assert_eq!(store.account_changes(seqs[1]).unwrap().len(), 1);
    assert_eq!(store.last_account_change(), Ok(seqs[2]));
    // A new account of the name starts at the deletion's number: older changes are not its.
    store.add_user("fay", "again").unwrap();
    assert_eq!(store.check_login("fay", "again"), Ok(seqs[2]));
    // A wrong password changes nothing and records nothing.
    assert_eq!(
        store.change_password("fay", "wrong", "x"),
        Err(StoreError::WrongPassword)
    );
    assert_eq!(store.last_account_change(), Ok(seqs[2]));
}

fn delete_user_removes_messages(b: &dyn Backend) {
    let store = b.open();
    store.add_user("dave", "pw").unwrap();
    store.add_user("erin", "pw").unwrap();
    store.queue_message("dave", "erin", "hello").unwrap();
    store.queue_message("erin", "dave", "kept").unwrap();
    assert_eq!(store.count_messages(), Ok(2));
    store.delete_user("dave").unwrap();
    assert_eq!(store.count_messages(), Ok(1));
    assert!(!store.exists("dave").unwrap());
    assert_eq!(store.verify("dave", "pw"), Err(StoreError::WrongPassword));
    assert_eq!(
        store.delete_user("dave"),
        Err(StoreError::NoSuchUser("dave".into()))
    );
    assert!(store.take_messages("dave").unwrap().is_empty());
    assert_eq!(
        store.queue_message("dave", "erin", "again"),
        Err(StoreError::NoSuchUser("dave".into()))
    );
    // Registering the name again starts with an empty queue; other users keep theirs.
    store.add_user("dave", "pw2").unwrap();
    assert!(store.take_messages("dave").unwrap().is_empty());
    let kept = store.take_messages("erin").unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].text, "kept");
    assert_eq!(store.count_messages(), Ok(0));
}

fn messages_survive_reopen_in_order(b: &dyn Backend) {
    let before = now_unix_ms();
    {
        let store = b.open();
        store.add_user("frank", "pw").unwrap();
        for (i, from) in ["x", "y", "z"].iter().enumerate() {
            store
                .queue_message("frank", from, &format!("message {i}"))
                .unwrap();
        }
    }
    let store = b.open();
    let got = store.take_messages("frank").unwrap();
    let texts: Vec<_> = got
        .iter()
        .map(|m| (m.from.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [("x", "message 0"), ("y", "message 1"), ("z", "message 2")]
    );
    let after = now_unix_ms();
    assert!(
        got.iter()
            .all(|m| m.at_unix_ms >= before && m.at_unix_ms <= after),
        "{got:?} not within {before}..={after}"
    );
    assert!(got.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms));
    assert!(store.take_messages("frank").unwrap().is_empty());
    drop(store);
    let store = b.open();
    assert!(store.take_messages("frank").unwrap().is_empty());
    assert_eq!(store.verify("frank", "pw"), Ok(()));
}

fn one_message_for_many_users_at_once(b: &dyn Backend) {
    let store = b.open();
    for user in ["gil", "hal"] {
        store.add_user(user, "pw").unwrap();
    }
    store.queue_message("gil", "ann", "before").unwrap();
    let to = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    store
        .queue_for_many(&to(&["gil", "hal", "gil"]), "ann", "to all")
        .unwrap();
    // Stored for those who exist; the first unknown name is the error.
    assert_eq!(
        store.queue_for_many(&to(&["hal", "nobody", "gil", "ghost"]), "bob", "some"),
        Err(StoreError::NoSuchUser("nobody".into()))
    );
    store.queue_for_many(&[], "bob", "none").unwrap();
    let texts = |user| {
        let taken = store.take_messages(user).unwrap();
        taken
            .into_iter()
            .map(|m| format!("{}: {}", m.from, m.text))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts("gil"),
        ["ann: before", "ann: to all", "ann: to all", "bob: some"]
    );
    assert_eq!(texts("hal"), ["ann: to all", "bob: some"]);
}

fn users_sorted(b: &dyn Backend) {
    let store = b.open();
    assert!(store.users().unwrap().is_empty());
    for name in ["mike", "Zed", "alpha", "beta", "_x", "Beta", "1"] {
        store.add_user(name, "pw").unwrap();
    }
    // Byte order on both back ends, whatever PostgreSQL's collation.
    assert_eq!(
        store.users().unwrap(),
        ["1", "Beta", "Zed", "_x", "alpha", "beta", "mike"]
    );
}

fn take_empties_and_unknown_user_has_none(b: &dyn Backend) {
    let store = b.open();
    assert!(store.take_messages("nobody").unwrap().is_empty());
    store.add_user("gina", "pw").unwrap();
    assert!(store.take_messages("gina").unwrap().is_empty());
    let text = "multi\nline ünïcode ✓ and 'quotes' \"too\"";
    store.queue_message("gina", "hal", text).unwrap();
    let got = store.take_messages("gina").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].from.as_str(), got[0].text.as_str()), ("hal", text));
    assert!(store.take_messages("gina").unwrap().is_empty());
    store.queue_message("gina", "hal", "later").unwrap();
    assert_eq!(store.take_messages("gina").unwrap()[0].text, "later");
    assert!(store.take_messages("gina").unwrap().is_empty());
}

/// Several nodes starting at once on an empty database all get a working store.
fn concurrent_opens_of_a_new_database(b: &dyn Backend) {
    let barrier = Barrier::new(4);
    let stores: Vec<Store> = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    b.open()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    stores[0].add_user("ivan", "pw").unwrap();
    for store in &stores {
        assert_eq!(store.verify("ivan", "pw"), Ok(()));
    }
}

/// Two nodes: four threads queue through both while both take at the same time. Every message
/// is delivered exactly once, and each sender's messages arrive in the order sent.
fn two_nodes_deliver_every_message_exactly_once(b: &dyn Backend) {
    const SENDERS: usize = 4;
    const EACH: usize = 40;
    let nodes = [Arc::new(b.open()), Arc::new(b.open())];
    nodes[0].add_user("judy", "pw").unwrap();
    let sending = Arc::new(AtomicUsize::new(SENDERS));
    let start = Arc::new(Barrier::new(SENDERS + 2));

    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let (nodes, sending, start) = (nodes.clone(), sending.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for i in 0..EACH {
                    let node = &nodes[(t + i) % 2];
                    node.queue_message("judy", &format!("s{t}"), &format!("{t}:{i}"))
                        .unwrap();
                }
                sending.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    let takers: Vec<_> = (0..2)
        .map(|k| {
            let (node, sending, start) = (nodes[k].clone(), sending.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut batches: Vec<Vec<Message>> = Vec::new();
                loop {
                    let done = sending.load(Ordering::SeqCst) == 0;
                    let batch = node.take_messages("judy").unwrap();
                    if !batch.is_empty() {
                        batches.push(batch);
                    }
                    if done {
                        return batches;
                    }
                }
            })
        })
        .collect();
    for h in senders {
        h.join().unwrap();
    }
    let batches: Vec<Vec<Message>> = takers.into_iter().flat_map(|h| h.join().unwrap()).collect();

    let mut seen = HashSet::new();
    for batch in &batches {
        // Within a batch, each sender's messages are in the order sent.
        let mut last = [None::<usize>; SENDERS];
        for m in batch {
            assert!(seen.insert(m.text.clone()), "delivered twice: {}", m.text);
            let (t, i) = m.text.split_once(':').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(m.from, format!("s{t}"));
            assert!(
                last[t] < Some(i),
                "{} after {:?} in one batch",
                m.text,
                last[t]
            );
            last[t] = Some(i);
        }
    }
    assert_eq!(seen.len(), SENDERS * EACH, "messages lost");
    for node in &nodes {
        assert!(node.take_messages("judy").unwrap().is_empty());
    }
}

/// Runs `op(k, node)` on both nodes at the same moment and checks that exactly one succeeds
/// and the other fails with `loser`; returns the winner's index.
fn race(
    nodes: &[Store; 2],
    loser: StoreError,
    op: impl Fn(usize, &Store) -> Result<(), StoreError> + Sync,
) -> usize {
    let barrier = Barrier::new(2);
    let results: Vec<Result<(), StoreError>> = thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(k, node)| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    op(k, node)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    match results.as_slice() {
        [Ok(()), Err(e)] if *e == loser => 0,
        [Err(e), Ok(())] if *e == loser => 1,
        _ => panic!("want one Ok and one {loser:?}: {results:?}"),
    }
}

/// Two nodes claim the same hand-overs at the same moment: exactly one holds each, both
/// agree which, and asking again (a retry) changes nothing.
fn two_nodes_race_to_claim_a_handover(b: &dyn Backend) {
    let nodes = [b.open(), b.open()];
    for round in 0..20 {
        let id = format!("node-a-{round}");
        let barrier = Barrier::new(2);
        let won: Vec<bool> = thread::scope(|s| {
            let handles: Vec<_> = ["a", "b"]
                .iter()
                .zip(&nodes)
                .map(|(me, node)| {
                    let (barrier, id) = (&barrier, &id);
                    s.spawn(move || {
                        barrier.wait();
                        node.claim_handover(id, me).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        for (me, was) in ["a", "b"].iter().zip(&won) {
            for node in &nodes {
                assert_eq!(node.claim_handover(&id, me).unwrap(), *was);
            }
        }
    }
}

/// Two nodes register the same name at the same moment: exactly one wins.
fn two_nodes_race_to_add_the_same_user(b: &dyn Backend) {
    let nodes = [b.open(), b.open()];
    for round in 0..3 {
        let name = format!("race{round}");
        let winner = race(&nodes, StoreError::Duplicate(name.clone()), |k, node| {
            node.add_user(&name, &format!("pw{k}"))
        });
        // The winner's password is the one stored.
        assert_eq!(
            nodes[1 - winner].verify(&name, &format!("pw{winner}")),
            Ok(())
        );
    }
    assert_eq!(nodes[0].users().unwrap(), ["race0", "race1", "race2"]);
}

/// Two nodes change the same password at once from the same old one: exactly one wins.
fn two_nodes_race_to_change_a_password(b: &dyn Backend) {
    let nodes = [b.open(), b.open()];
    nodes[0].add_user("kim", "old").unwrap();
    let winner = race(&nodes, StoreError::WrongPassword, |k, node| {
        node.change_password("kim", "old", &format!("new{k}"))
    });
    assert_eq!(nodes[0].verify("kim", &format!("new{winner}")), Ok(()));
    assert_eq!(
        nodes[1].verify("kim", "old"),
        Err(StoreError::WrongPassword)
    );
}

// ---- Back-end selection and PostgreSQL specifics -------------------------------------------

#[test]
fn open_spec_picks_sqlite_and_refuses_unknown_specs() {
    let dir = tempfile::tempdir().unwrap();
    for spec in ["", "embedded", "  embedded "] {
        let store = Store::open_spec(spec, dir.path()).unwrap();
        assert_eq!(store.backend_name(), "sqlite", "{spec:?}");
    }
    assert!(dir.path().join("zserver.db").exists());
    for spec in ["mysql://x", "sqlite", "postgres:/x", "user:secret@host"] {
        let Err(StoreError::Db(msg)) = Store::open_spec(spec, dir.path()) else {
            panic!("{spec:?} accepted");
        };
        for accepted in ["embedded", "postgres://", "postgresql://"] {
            assert!(msg.contains(accepted), "{spec:?}: {msg}");
        }
        assert!(!msg.contains("secret"), "{msg}");
    }
}

#[test]
fn postgres_not_listening_fails_promptly() {
    let started = Instant::now();
    for spec in [
        "postgres://zserver@127.0.0.1:1/zs",
        "postgresql://zserver:pw@127.0.0.1:1/zs?connect_timeout=3",
    ] {
        let dir = PathBuf::from("/nonexistent/never-created");
        match Store::open_spec(spec, &dir) {
            Err(StoreError::Db(msg)) => assert!(msg.contains("PostgreSQL"), "{msg}"),
            Err(other) => panic!("{spec}: {other:?}"),
            Ok(_) => panic!("{spec}: connected to port 1"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        Store::connect_postgres("postgres://127.0.0.1:notaport/x"),
        Err(StoreError::Db(_))
    ));
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn postgres_open_spec_and_tables() {
    let pg = Postgres::new("open_spec_and_tables");
    let store = Store::open_spec(&pg.url, &PathBuf::from("/nonexistent")).unwrap();
    assert_eq!(store.backend_name(), "postgres");
    let alt = pg.url.replacen("postgres://", "postgresql://", 1);
    assert_eq!(
        Store::open_spec(&alt, &PathBuf::from("/nonexistent"))
            .unwrap()
            .backend_name(),
        "postgres"
    );
    store.add_user("alice", "s3cret pass").unwrap();
    let mut raw = pg.raw();
    let hash: String = raw
        .query_one("SELECT hash FROM users WHERE name = 'alice'", &[])
        .unwrap()
        .get(0);
    assert!(!hash.contains("s3cret"));
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let version: i32 = raw
        .query_one("SELECT version FROM zserver_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    let created: i64 = raw
        .query_one("SELECT created_unix_ms FROM users", &[])
        .unwrap()
        .get(0);
    assert!((now_unix_ms() - created).abs() < 60_000);
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn postgres_newer_schema_refused() {
    let pg = Postgres::new("newer_schema_refused");
    drop(pg.open());
    pg.raw()
        .batch_execute("UPDATE zserver_schema SET version = 6")
        .unwrap();
    assert!(matches!(
        Store::connect_postgres(&pg.url),
        Err(StoreError::Db(msg)) if msg.contains("version 6")
    ));
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn postgres_reconnects_after_backends_are_terminated() {
    let pg = Postgres::new("reconnects");
    let store = Arc::new(pg.open());
    store.add_user("lee", "pw").unwrap();
    // Open several pooled connections by using the store from a few threads at once.
    thread::scope(|s| {
        for i in 0..4 {
            let store = &store;
            s.spawn(move || {
                store.queue_message("lee", "x", &format!("m{i}")).unwrap();
                assert!(store.exists("lee").unwrap());
            });
        }
    });
    for round in 0..3 {
        assert!(pg.terminate_backends() >= 1, "round {round}: no backend");
        // Give the backends a moment to go, so the clients see closed sockets.
        thread::sleep(Duration::from_millis(100));
        for _ in 0..8 {
            assert!(store.exists("lee").unwrap());
        }
        store
            .queue_message("lee", "y", &format!("after {round}"))
            .unwrap();
        assert_eq!(store.verify("lee", "pw"), Ok(()));
    }
    let texts: HashSet<String> = store
        .take_messages("lee")
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    let want: HashSet<String> = ["m0", "m1", "m2", "m3", "after 0", "after 1", "after 2"]
        .map(String::from)
        .into();
    assert_eq!(texts, want);

    // Terminated in the middle of use by other threads: operations keep succeeding.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                let mut ok = 0;
                while !stop.load(Ordering::SeqCst) {
                    assert!(store.exists("lee").unwrap());
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    // Far enough apart that one operation meets at most one break: the store retries an
    // operation once, on a new connection, which a second termination could also end.
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(300));
        pg.terminate_backends();
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
}

#[test]
#[ignore = "needs PostgreSQL: bash .ci/test starts it (or source .ci/services.sh start)"]
fn postgres_down_then_back_fails_promptly_then_recovers() {
    // The store's database is dropped under it (as if the server lost it): operations fail
    // with Db, quickly, and never panic; once it exists again (a new, empty one) they succeed.
    let pg = Postgres::new("down_then_back");
    let store = pg.open();
    store.add_user("mo", "pw").unwrap();
    admin()
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", pg.db))
        .unwrap();
    let started = Instant::now();
    assert!(matches!(store.exists("mo"), Err(StoreError::Db(_))));
    assert!(matches!(
        store.queue_message("mo", "x", "y"),
        Err(StoreError::Db(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
    admin()
        .batch_execute(&format!("CREATE DATABASE \"{}\"", pg.db))
        .unwrap();
    // The tables are gone with the old database: a new store recreates them.
    let again = pg.open();
    assert!(!again.exists("mo").unwrap());
    again.add_user("mo", "pw").unwrap();
    assert!(store.exists("mo").unwrap());
}

#[test]
fn with_db_replaces_the_database_name() {
    assert_eq!(
        with_db("postgres://u@h:1/postgres", "zs_1"),
        "postgres://u@h:1/zs_1"
    );
    assert_eq!(with_db("postgres://u@h:1", "zs_1"), "postgres://u@h:1/zs_1");
    assert_eq!(
        with_db("postgresql://u@h/postgres?sslmode=disable", "d"),
        "postgresql://u@h/d?sslmode=disable"
    );
}
