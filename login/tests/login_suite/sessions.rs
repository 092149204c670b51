//! Several sessions of one user (devices), on each back end: each session gets the user's
//! pushes, `who` names the user once, a logout ends that session alone, a login past the
//! most sessions ends the oldest, and with `WhenFull::Refuse` is refused instead.

use std::time::Duration;

use zserver::Error;
use zserver_login::protocol::Incoming;
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer, WhenFull};

use crate::support::{next_event, run_on, within};

fn message(from: &str, text: &str) -> Event {
    Event::Message(Incoming {
        from: from.into(),
        text: text.into(),
    })
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("devices"));
    config.max_sessions = 2;
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), None);
    let ann = connect().await?;
    ann.register("ann", "pw").await?;
    ann.register("bob", "pw").await?;
    ann.login("ann", "pw").await?;
    let (phone, laptop) = (connect().await?, connect().await?);
    phone.login("bob", "pw").await?;
    laptop.login("bob", "pw").await?;

    // Both of bob's sessions get a push to him; he is delivered to, and online, once.
    let report = ann.push(&["bob"], "to both").await?;
    assert_eq!(
        (report.delivered, report.stored),
        (vec!["bob".into()], vec![])
    );
    assert_eq!(next_event(&phone).await, message("ann", "to both"));
    assert_eq!(next_event(&laptop).await, message("ann", "to both"));
    assert_eq!(ann.who().await?, ["ann", "bob"]);
    let report = ann.push_all("to all").await?;
    assert_eq!(report.delivered, ["ann", "bob"]);
    for client in [&ann, &phone, &laptop] {
        assert_eq!(next_event(client).await, message("ann", "to all"));
    }

    // A third session of bob: the oldest (the phone) ends, told why.
    let tablet = connect().await?;
    tablet.login("bob", "pw").await?;
    match next_event(&phone).await {
        Event::Kicked(why) => assert!(why.contains("oldest"), "{why}"),
        other => panic!("the oldest session kicked, got {other:?}"),
    }
    phone.client().connection().closed().await;
    ann.push(&["bob"], "two left").await?;
    assert_eq!(next_event(&laptop).await, message("ann", "two left"));
    assert_eq!(next_event(&tablet).await, message("ann", "two left"));

    // A logout ends that session alone: the other still gets pushes, the first no more.
    laptop.logout().await?;
    let report = ann.push(&["bob"], "tablet only").await?;
    assert_eq!(report.delivered, ["bob"]);
    assert_eq!(next_event(&tablet).await, message("ann", "tablet only"));
    let quiet = within(Duration::from_millis(300), laptop.next_event()).await;
    assert!(quiet.is_none(), "a logged-out session got {quiet:?}");
    assert_eq!(ann.who().await?, ["ann", "bob"]);

    // Offline once the last session ends: stored, and handed to the next login.
    tablet.logout().await?;
    assert_eq!(ann.push(&["bob"], "later").await?.stored, ["bob"]);
    let back = connect().await?;
    let offline = back.login("bob", "pw").await?;
    assert_eq!(offline.len(), 1, "{offline:?}");
    server.shutdown().await;
    Ok(())
}

/// With `WhenFull::Refuse`, a login past the most sessions is refused; one ending makes room.
async fn refused(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("refuse"));
    config.max_sessions = 2;
    config.when_full = WhenFull::Refuse;
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), None);
    let first = connect().await?;
    first.register("cy", "pw").await?;
    first.login("cy", "pw").await?;
    let second = connect().await?;
    second.login("cy", "pw").await?;
    // Logging in again on a connection that holds a session takes no new place.
    second.login("cy", "pw").await?;
    let third = connect().await?;
    let refused = third.login("cy", "pw").await.unwrap_err().to_string();
    assert!(refused.contains("already logged in 2 times"), "{refused}");
    first.logout().await?;
    third.login("cy", "pw").await?;
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(60);
    run_on(backend, limit, scenario(backend, dir.path().to_owned())).unwrap();
    run_on(backend, limit, refused(backend, dir.path().to_owned())).unwrap();
}

#[test]
fn several_sessions_per_user_on_tokio() {
    run("tokio");
}

#[test]
fn several_sessions_per_user_on_async_std() {
    run("async-std");
}

#[test]
fn several_sessions_per_user_on_smol() {
    run("smol");
}
