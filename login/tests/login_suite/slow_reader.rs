//! A recipient whose client stops reading does not hold up a push to everyone else: once its
//! connection's send buffer is full, a push waits for it at most a moment, then stores the
//! message for that recipient and goes on. Nor does it hold up a login that kicks it. On each
//! back end.

use std::time::Duration;

use zserver::Error;
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer};

/// A push's text: big, so that a few of them fill a connection's buffers.
fn text(i: usize) -> String {
    format!("{i:>6}").repeat(256 << 10 >> 3)
}

async fn scenario(backend: &'static str) -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let transport = zserver::transport(backend).unwrap();
    let config = LoginConfig::new(dir.path().join("data"));
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let addr = server.local_addr();
    let (ann, bob) = (
        LoginClient::connect(transport.clone(), addr, None).await?,
        LoginClient::connect(transport.clone(), addr, None).await?,
    );
    for user in ["ann", "bob", "slow"] {
        ann.register(user, "pw").await?;
    }
    ann.login("ann", "pw").await?;
    bob.login("bob", "pw").await?;

    // `slow` handles one message and never finishes it: its connection stops reading.
    let slow = crate::support::stuck_client(transport.clone(), addr, None, "slow").await?;

    let mut pushes = 0;
    let mut stored_for_slow = false;
    while !stored_for_slow {
        assert!(pushes < 200, "the slow reader never filled its buffers");
        let body = text(pushes);
        let push = ann.push(&["slow", "bob"], &body);
        let report = crate::support::within(Duration::from_secs(10), push)
            .await
            .expect("a push is not held up by a recipient who does not read")?;
        assert!(report.delivered.iter().any(|u| u == "bob"), "{report:?}");
        stored_for_slow = report.stored == ["slow"];
        pushes += 1;
    }
    eprintln!("{backend}: the push stored for the slow reader after {pushes} pushes");
    for i in 0..pushes {
        match crate::support::next_event(&bob).await {
            Event::Message(m) => assert_eq!(m.text, text(i)),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Logging in again elsewhere kicks the stuck session without waiting for it to read,
    // and gets what was stored for it.
    let again = LoginClient::connect(transport.clone(), addr, None).await?;
    let login = again.login("slow", "pw");
    let offline = crate::support::within(Duration::from_secs(10), login)
        .await
        .expect("a login is not held up by the session it kicks")?;
    assert_eq!(offline.last().map(|m| &m.text), Some(&text(pushes - 1)));
    drop(slow);
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    crate::support::run_on(backend, Duration::from_secs(120), scenario(backend)).unwrap();
}

#[test]
fn slow_reader_on_tokio() {
    run("tokio");
}

#[test]
fn slow_reader_on_async_std() {
    run("async-std");
}

#[test]
fn slow_reader_on_smol() {
    run("smol");
}
