//! The login server's channels: logged-in users only, authors named by the server,
//! presence, and durable history in the store, so that recovery works after a restart.

use std::time::Duration;

use zserver::channels::{ChannelCalls, Event, Subscription};
use zserver::Error;
use zserver_login::{LoginClient, LoginConfig, LoginServer};

use crate::support::within;

async fn next_text(sub: &mut Subscription) -> (u64, String, String) {
    let event = within(Duration::from_secs(10), sub.recv())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is live");
    match event {
        Event::Publication(p) => (p.offset, p.from, String::from_utf8(p.data).unwrap()),
        other => panic!("expected a publication, got {other:?}"),
    }
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let local = "127.0.0.1:0".parse().unwrap();
    let config = LoginConfig::new(dir.join("data"));
    let server = LoginServer::start(transport.clone(), local, config.clone()).await?;
    let pin = server.fingerprint();
    let connect = |addr| LoginClient::connect(transport.clone(), addr, Some(&pin));
    let (ann, bob) = (
        connect(server.local_addr()).await?,
        connect(server.local_addr()).await?,
    );
    // Before logging in: refused.
    let refused = ann.client().subscribe("chat:room").await;
    assert!(matches!(refused, Err(Error::Denied(m)) if m.contains("log in")));
    ann.register("ann", "ann-pw").await?;
    bob.register("bob", "bob-pw").await?;
    ann.login("ann", "ann-pw").await?;
    bob.login("bob", "bob-pw").await?;
    // Outside the configured namespaces: refused.
    assert!(matches!(
        ann.client().subscribe("other:x").await,
        Err(Error::Denied(_))
    ));
    let mut sub = ann.client().subscribe("chat:room").await?;
    bob.client().publish("chat:room", "one").await?;
    bob.client().publish("chat:room", "two").await?;
    assert_eq!(next_text(&mut sub).await, (1, "bob".into(), "one".into()));
    assert_eq!(next_text(&mut sub).await, (2, "bob".into(), "two".into()));
    let users: Vec<String> = bob
        .client()
        .presence("chat:room")
        .await?
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(users, ["ann"]);
    let kept = sub.position().expect("chat: keeps history");
    drop(sub);
    drop(ann);
    // Published while ann is away, then the server restarts on the same data.
    bob.client().publish("chat:room", "three").await?;
    bob.client().publish("chat:room", "four").await?;
    drop(bob);
    server.shutdown().await;
    drop(server);
    let server = LoginServer::start(transport.clone(), local, config).await?;
    let ann = connect(server.local_addr()).await?;
    ann.login("ann", "ann-pw").await?;
    let mut back = ann.client().subscribe_from("chat:room", Some(kept)).await?;
    assert!(back.recovered(), "the history survived the restart");
    assert_eq!(
        next_text(&mut back).await,
        (3, "bob".into(), "three".into())
    );
    assert_eq!(next_text(&mut back).await, (4, "bob".into(), "four".into()));
    // Offsets go on from the stored ones.
    let next = ann.client().publish("chat:room", "five").await?.unwrap();
    assert_eq!((next.epoch, next.offset), (kept.epoch, 5));
    assert_eq!(next_text(&mut back).await, (5, "ann".into(), "five".into()));
    let page = ann.client().history("chat:room", None, 10).await?;
    let texts: Vec<String> = page
        .publications
        .into_iter()
        .map(|p| String::from_utf8(p.data).unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three", "four", "five"]);
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::support::run_on(backend, Duration::from_secs(120), scenario(backend, path)).unwrap();
}

#[test]
fn channels_on_tokio() {
    run("tokio");
}

#[test]
fn channels_on_async_std() {
    run("async-std");
}

#[test]
fn channels_on_smol() {
    run("smol");
}
