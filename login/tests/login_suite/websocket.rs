//! One login server on TCP and WebSocket at once (`LoginConfig::ws_listen`): a user on a
//! TCP client and a user on a WebSocket client (as a browser page connects) see each other
//! online and push to each other, and a message stored for an offline WebSocket user is
//! delivered at its login. On each back end.

use std::sync::Arc;
use std::time::Duration;

use zserver::{Error, WsTransport};
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer};

async fn scenario(backend: &'static str) -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let tcp = zserver::transport(backend).unwrap();
    let ws: Arc<dyn zserver::Transport> = Arc::new(WsTransport::new(tcp.clone()));
    let mut config = LoginConfig::new(dir.path().join("data"));
    config.ws_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = LoginServer::start(tcp.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let ws_addr = server.ws_addr().expect("listening on WebSocket");
    assert_ne!(ws_addr, server.local_addr());
    let pin = server.fingerprint();

    let ann = LoginClient::connect(tcp.clone(), server.local_addr(), Some(&pin)).await?;
    let web = LoginClient::connect(ws.clone(), ws_addr, Some(&pin)).await?;
    ann.register("ann", "pw").await?;
    web.register("web", "pw").await?;
    web.register("later", "pw").await?;
    ann.login("ann", "pw").await?;
    web.login("web", "pw").await?;
    assert_eq!(ann.who().await?, ["ann", "web"]);

    let report = ann.push(&["web"], "hello browser").await?;
    assert_eq!(report.delivered, ["web"]);
    match crate::support::next_event(&web).await {
        Event::Message(m) => {
            assert_eq!((m.from.as_str(), m.text.as_str()), ("ann", "hello browser"))
        }
        other => panic!("unexpected {other:?}"),
    }
    let report = web.push(&["ann"], "hello tcp").await?;
    assert_eq!(report.delivered, ["ann"]);
    match crate::support::next_event(&ann).await {
        Event::Message(m) => assert_eq!((m.from.as_str(), m.text.as_str()), ("web", "hello tcp")),
        other => panic!("unexpected {other:?}"),
    }

    // Stored for a WebSocket user who is offline, delivered when they log in.
    assert_eq!(
        ann.push(&["later"], "while you were out").await?.stored,
        ["later"]
    );
    let later = LoginClient::connect(ws, ws_addr, Some(&pin)).await?;
    let offline = later.login("later", "pw").await?;
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].text, "while you were out");
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    crate::support::run_on(backend, Duration::from_secs(60), scenario(backend)).unwrap();
}

#[test]
fn tcp_and_websocket_users_push_to_each_other_on_tokio() {
    run("tokio");
}

#[test]
fn tcp_and_websocket_users_push_to_each_other_on_async_std() {
    run("async-std");
}

#[test]
fn tcp_and_websocket_users_push_to_each_other_on_smol() {
    run("smol");
}
