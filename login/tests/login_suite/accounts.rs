//! Accounts deleted, and passwords changed, reach the running server, on each back end:
//! through the server's own commands (`delete`, `passwd`) and from another process writing
//! the same store (as `zserver user del` and `zserver user passwd` do on the data directory).
//! A deletion ends every session of the user; a password change every other one; a login
//! with the new password, or of a new account of the same name, is never ended by the
//! change before it.

use std::time::Duration;

use zserver::Error;
use zserver_login::store::{ChangeKind, Store};
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer};

use crate::support::{next_event, run_on, within};

/// How often the server under test looks in the store.
const WATCH: Duration = Duration::from_millis(100);

/// `client` gets a `kicked` event with `why`, and its connection closes.
async fn kicked(client: &LoginClient, why: &str) {
    match next_event(client).await {
        Event::Kicked(reason) => assert_eq!(reason, why),
        other => panic!("kicked ({why}) expected, got {other:?}"),
    }
    let closed = within(
        Duration::from_secs(5),
        client.client().connection().closed(),
    )
    .await;
    assert!(closed.is_some(), "the kicked connection closed");
}

/// `client` is still logged in some watch intervals later (no event came, `who` answers).
async fn stays(client: &LoginClient) {
    zserver::sleep(WATCH * 4).await;
    assert_eq!(client.try_event(), None);
    assert!(client.who().await.is_ok(), "still logged in");
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let data = dir.join("data");
    let mut config = LoginConfig::new(&data);
    config.account_watch = WATCH;
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), None);
    let hal = connect().await?;
    for name in ["gina", "hal", "ivy"] {
        hal.register(name, "pw").await?;
    }
    hal.login("hal", "pw").await?;
    // The store as another process opens it (the CLI's `zserver user ...`).
    let cli = {
        let data = data.clone();
        blocking::unblock(move || Store::open(&data)).await
    }
    .map_err(|e| Error::msg(e.to_string()))?;
    let cli = std::sync::Arc::new(cli);
    let outside = |f: fn(&Store) -> Result<(), zserver_login::StoreError>| {
        let cli = cli.clone();
        async move { blocking::unblock(move || f(&cli)).await }
    };

    // Deleted from outside: both of gina's sessions end; she is not online, and a push to
    // her finds no user.
    let (phone, laptop) = (connect().await?, connect().await?);
    phone.login("gina", "pw").await?;
    laptop.login("gina", "pw").await?;
    assert_eq!(hal.who().await?, ["gina", "hal"]);
    outside(|s| s.delete_user("gina")).await.unwrap();
    kicked(&phone, "account deleted").await;
    kicked(&laptop, "account deleted").await;
    assert_eq!(hal.who().await?, ["hal"]);
    let push = hal.push(&["gina"], "still there?").await.unwrap_err();
    assert!(push.to_string().contains("no user `gina`"), "{push}");

    // A password change through the server: the other session ends at once, the one that
    // changed it stays, and so does a login with the new password.
    let desk = connect().await?;
    desk.login("hal", "pw").await?;
    desk.change_password("pw", "new-pw").await?;
    kicked(&hal, "password changed").await;
    let again = connect().await?;
    again.login("hal", "new-pw").await?;
    stays(&desk).await;
    stays(&again).await;

    // Reset from outside: every session of hal ends.
    outside(|s| s.set_password("hal", "reset")).await.unwrap();
    kicked(&desk, "password changed").await;
    kicked(&again, "password changed").await;

    // Deleted through the server: the other session ends at once. A new account of the same
    // name is not touched by the old deletion.
    let (one, two) = (connect().await?, connect().await?);
    one.login("ivy", "pw").await?;
    two.login("ivy", "pw").await?;
    one.delete_account("pw").await?;
    kicked(&two, "account deleted").await;
    one.register("ivy", "pw2").await?;
    let three = connect().await?;
    three.login("ivy", "pw2").await?;
    stays(&three).await;
    assert_eq!(three.who().await?, ["ivy"]);

    // The store recorded each change, in order.
    let changes = cli
        .account_changes(0)
        .map_err(|e| Error::msg(e.to_string()))?;
    let kinds: Vec<(&str, bool)> = changes
        .iter()
        .map(|c| {
            (
                c.user.as_str(),
                matches!(c.kind, ChangeKind::Deleted { .. }),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("gina", true),
            ("hal", false),
            ("hal", false),
            ("ivy", true)
        ]
    );
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    run_on(backend, Duration::from_secs(60), scenario(backend, path)).unwrap();
}

#[test]
fn account_changes_end_sessions_on_tokio() {
    run("tokio");
}

#[test]
fn account_changes_end_sessions_on_async_std() {
    run("async-std");
}

#[test]
fn account_changes_end_sessions_on_smol() {
    run("smol");
}
