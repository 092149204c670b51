//! The login server end to end, on each back end: registration, login, files, push,
//! offline messages across a restart, a second login, bad names, rate limits and quotas.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zserver::Error;
use zserver_login::protocol::Incoming;
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer};

use crate::support::next_event;

/// Runs `fut` on `backend`'s runtime and waits for it here.
fn run_on<T: Send + 'static>(
    backend: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    crate::support::run_on(backend, Duration::from_secs(120), fut)
}

fn write_file(path: &Path, len: usize, seed: u8) -> blake3::Hash {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    std::fs::write(path, &data).unwrap();
    blake3::hash(&data)
}

fn file_hash(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap())
}

fn assert_err(result: Result<impl std::fmt::Debug, impl std::fmt::Display>, needle: &str) {
    match result {
        Err(e) => assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`"),
        Ok(v) => panic!("expected an error with `{needle}`, got {v:?}"),
    }
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let local = "127.0.0.1:0".parse().unwrap();
    let mut config = LoginConfig::new(dir.join("data"));
    // One session per user (sessions.rs covers several).
    config.max_sessions = 1;
    config.quota_bytes = 8 << 20;
    config.max_failed_logins = 3;
    let server = LoginServer::start(transport.clone(), local, config.clone()).await?;
    let pin = server.fingerprint();
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), Some(&pin));
    let (ann, bob) = (connect().await?, connect().await?);

    ann.register("ann", "ann-pw").await?;
    bob.register("bob", "bob-pw").await?;
    assert_err(ann.register("ann", "other").await, "already exists");
    assert_err(ann.register("../root", "pw").await, "bad user name");
    assert_err(
        bob.login("bob", "wrong").await,
        "wrong user name or password",
    );
    assert_err(ann.ls().await, "not logged in");
    assert_eq!(ann.login("ann", "ann-pw").await?, vec![]);
    assert_eq!(bob.login("bob", "bob-pw").await?, vec![]);
    assert_eq!(ann.who().await?, vec!["ann", "bob"]);
    let page = ann.who_page(None, 1).await?;
    assert_eq!(
        (page.users, page.online, page.more),
        (vec!["ann".into()], 2, true)
    );
    let page = ann.who_page(Some("ann".into()), 1).await?;
    assert_eq!((page.users, page.more), (vec!["bob".into()], false));

    // Files: upload, list, download, same hash.
    let source = dir.join("source.bin");
    let expected = write_file(&source, 5 << 20, 1);
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s = seen.clone();
    let stored = ann
        .put(&source, "data.bin", false, move |done, _| {
            s.store(done, std::sync::atomic::Ordering::Relaxed)
        })
        .await?;
    assert_eq!(stored.written, 5 << 20);
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 5 << 20);
    assert_eq!(ann.stat("data.bin").await?.size, 5 << 20);
    assert_eq!(ann.ls().await?.len(), 1);
    let copy = dir.join("copy.bin");
    assert_eq!(
        ann.get("data.bin", &copy, false, |_, _| {}).await?.written,
        5 << 20
    );
    assert_eq!(file_hash(&copy), expected);
    assert_err(bob.stat("data.bin").await, "no file");

    // Names that could leave the user's directory, and symbolic links.
    for bad in ["../evil", "/etc/passwd", "..", ".hidden", "a/b", "a\\b"] {
        assert_err(
            ann.put(&source, bad, false, |_, _| {}).await,
            "bad file name",
        );
        assert_err(ann.rm(bad).await, "bad file name");
        assert_err(ann.get(bad, &copy, false, |_, _| {}).await, "bad file name");
    }
    let user_dir = dir.join("data/files/ann");
    std::os::unix::fs::symlink(&source, user_dir.join("link")).unwrap();
    assert_err(
        ann.get("link", &copy, false, |_, _| {}).await,
        "symbolic link",
    );
    std::fs::remove_file(user_dir.join("link")).unwrap();

    // Quota: 8 MiB each; a second 5 MiB file does not fit.
    assert_err(
        ann.put(&source, "more.bin", false, |_, _| {}).await,
        "quota exceeded",
    );
    assert_eq!(
        ann.ls().await?.len(),
        1,
        "a refused upload leaves nothing behind"
    );

    // Push: delivered live to an online user.
    let report = ann.push(&["bob"], "hello bob").await?;
    assert_eq!(report.delivered, vec!["bob"]);
    let message = Incoming {
        from: "ann".into(),
        text: "hello bob".into(),
    };
    assert_eq!(next_event(&bob).await, Event::Message(message));

    // Offline: bob logs out; messages to him are stored and survive a restart.
    bob.logout().await?;
    assert_eq!(ann.push(&["bob"], "first").await?.stored, vec!["bob"]);
    assert_eq!(ann.push(&["bob"], "second").await?.stored, vec!["bob"]);
    drop((ann, bob));
    server.shutdown().await;
    let server = LoginServer::start(transport.clone(), local, config).await?;
    assert_eq!(
        server.fingerprint(),
        pin,
        "the key file keeps the server's identity"
    );
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), Some(&pin));
    let bob = connect().await?;
    let offline = bob.login("bob", "bob-pw").await?;
    let texts: Vec<&str> = offline.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["first", "second"], "offline messages in order");
    assert_eq!(bob.login("bob", "bob-pw").await?, vec![], "delivered once");

    // The same password works after the restart; a second login kicks the first.
    let ann = connect().await?;
    ann.login("ann", "ann-pw").await?;
    let ann_again = connect().await?;
    ann_again.login("ann", "ann-pw").await?;
    assert!(matches!(next_event(&ann).await, Event::Kicked(_)));
    assert_eq!(ann_again.stat("data.bin").await?.size, 5 << 20);

    // Everyone online gets a broadcast; a password change and an account deletion.
    let report = bob.push_all("to all").await?;
    assert_eq!(report.delivered, vec!["ann", "bob"]);
    assert_eq!((report.delivered_count, report.stored_count), (2, 0));
    bob.change_password("bob-pw", "bob-new").await?;
    let bob2 = connect().await?;
    assert_err(
        bob2.login("bob", "bob-pw").await,
        "wrong user name or password",
    );
    bob.delete_account("bob-new").await?;
    assert_err(
        bob2.login("bob", "bob-new").await,
        "wrong user name or password",
    );
    assert!(!dir.join("data/files/bob").exists());

    // Failed logins are limited per account (and per address).
    // (Failures from this address above count too, so the limit may come sooner.)
    let mut refused = 0;
    loop {
        let e = bob.login("ann", "guess").await.unwrap_err().to_string();
        if e.contains("too many failed logins") {
            break;
        }
        assert!(e.contains("wrong user name or password"), "{e}");
        refused += 1;
        assert!(refused <= 3, "the limit is 3 failures");
    }
    assert_err(bob.login("ann", "ann-pw").await, "too many failed logins");

    // A wrong pin is refused before any command runs.
    let wrong = "00".repeat(32);
    let refused = LoginClient::connect(transport.clone(), server.local_addr(), Some(&wrong)).await;
    assert!(matches!(refused, Err(Error::KeyMismatch { .. })));
    server.shutdown().await;
    Ok(())
}

/// With one session per user and `WhenFull::Refuse`, a second login is refused while the
/// first session lasts.
async fn refuse_second(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("data2"));
    config.max_sessions = 1;
    config.when_full = zserver_login::WhenFull::Refuse;
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let first = LoginClient::connect(transport.clone(), server.local_addr(), None).await?;
    first.register("cy", "pw").await?;
    first.login("cy", "pw").await?;
    let second = LoginClient::connect(transport.clone(), server.local_addr(), None).await?;
    assert_err(second.login("cy", "pw").await, "already logged in");
    drop(first);
    let start = std::time::Instant::now();
    while second.login("cy", "pw").await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "login after the first session ended"
        );
        zserver::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    run_on(backend, scenario(backend, path.clone())).unwrap();
    run_on(backend, refuse_second(backend, path)).unwrap();
}

#[test]
fn login_server_on_tokio() {
    run("tokio");
}

#[test]
fn login_server_on_async_std() {
    run("async-std");
}

#[test]
fn login_server_on_smol() {
    run("smol");
}
