//! A push that finds its recipient offline, but whose message is stored only after the
//! recipient has logged in (and taken their stored messages), is still delivered live, on each
//! back end. The store here holds the push's write until the login is done, so the race that is
//! otherwise a matter of microseconds happens every time.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zserver::channels::{StoredHistory, StoredPublication};

use zserver::Error;
use zserver_login::protocol::Incoming;
use zserver_login::store::Message;
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer};
use zserver_login::{SqliteStorage, Storage, Store, StoreError};

use crate::support::next_event;

/// The next `queue_message` says it has started, then waits for a go before it writes.
struct Gate {
    started: Sender<()>,
    go: Receiver<()>,
}

/// SQLite storage whose `queue_message` can be held at a [`Gate`].
struct GatedStorage {
    inner: SqliteStorage,
    gate: Arc<Mutex<Option<Gate>>>,
}

impl Storage for GatedStorage {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn insert_user(&self, name: &str, hash: &str, at: i64) -> Result<bool, StoreError> {
        self.inner.insert_user(name, hash, at)
    }
    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.user_hash(name)
    }
    fn replace_hash(&self, name: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        self.inner.replace_hash(name, old, new)
    }
    fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_user(name)
    }
    fn users(&self) -> Result<Vec<String>, StoreError> {
        self.inner.users()
    }
    fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.exists(name)
    }
    fn queue_message(&self, to: &str, from: &str, text: &str, at: i64) -> Result<bool, StoreError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.started.send(()).unwrap();
            gate.go.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        self.inner.queue_message(to, from, text, at)
    }
    fn load_channel(
        &self,
        channel: &str,
        keep: usize,
    ) -> Result<Option<StoredHistory>, StoreError> {
        self.inner.load_channel(channel, keep)
    }
    fn create_channel(&self, channel: &str, epoch: u64) -> Result<(), StoreError> {
        self.inner.create_channel(channel, epoch)
    }
    fn append_publication(
        &self,
        channel: &str,
        p: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.append_publication(channel, p, keep)
    }
    fn take_messages(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        self.inner.take_messages(user)
    }
    fn claim_handover(&self, id: &str, claimer: &str, at: i64) -> Result<bool, StoreError> {
        self.inner.claim_handover(id, claimer, at)
    }
    fn forget_handovers(&self, before: i64) -> Result<(), StoreError> {
        self.inner.forget_handovers(before)
    }
}

async fn scenario(backend: &'static str) -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let transport = zserver::transport(backend).unwrap();
    let config = LoginConfig::new(dir.path().join("data"));
    let gate = Arc::new(Mutex::new(None));
    let storage = GatedStorage {
        inner: SqliteStorage::open(&config.data_dir).unwrap(),
        gate: gate.clone(),
    };
    let store = Store::with_storage(Box::new(storage));
    let local = "127.0.0.1:0".parse().unwrap();
    let server = LoginServer::start_with_store(transport.clone(), local, config, store).await?;
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), None);
    let (ann, bob) = (connect().await?, connect().await?);
    ann.register("ann", "ann-pw").await?;
    bob.register("bob", "bob-pw").await?;
    ann.login("ann", "ann-pw").await?;

    let (started_tx, started) = channel();
    let (go, go_rx) = channel();
    *gate.lock().unwrap() = Some(Gate {
        started: started_tx,
        go: go_rx,
    });
    // Ann pushes while Bob is offline; Bob logs in while her message is being stored.
    let push = async { ann.push(&["bob"], "just in time").await };
    let login = async {
        blocking::unblock(move || started.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("the push stores its message");
        let offline = bob.login("bob", "bob-pw").await;
        go.send(()).unwrap();
        offline
    };
    let (report, offline) = futures_lite::future::zip(push, login).await;
    assert_eq!(report?.stored, ["bob"]);
    assert_eq!(
        offline?,
        vec![],
        "the message was not stored yet at the login"
    );
    // Without a second look after storing, it would wait for Bob's next login.
    assert_eq!(
        next_event(&bob).await,
        Event::Message(Incoming {
            from: "ann".into(),
            text: "just in time".into()
        })
    );
    // And it was delivered once: nothing is left for the next login.
    bob.logout().await?;
    assert_eq!(bob.login("bob", "bob-pw").await?, vec![]);
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    crate::support::run_on(backend, Duration::from_secs(60), scenario(backend)).unwrap();
}

#[test]
fn push_during_login_on_tokio() {
    run("tokio");
}

#[test]
fn push_during_login_on_async_std() {
    run("async-std");
}

#[test]
fn push_during_login_on_smol() {
    run("smol");
}
