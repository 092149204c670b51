//! The server API in a cluster: every call made on node A acts on a user logged in on node
//! B (tokio and smol nodes sharing NATS and PostgreSQL): their sessions seen, a push
//! delivered, a publication received, a subscription ended, one connection and then the
//! user disconnected; info shows both nodes. Needs the services: `bash .ci/test` starts
//! them.

use std::time::Duration;

use serde_json::json;
use zserver::channels::{ChannelCalls, Event as ChannelEvent};
use zserver::Error;
use zserver_login::api::{ApiKey, ApiServer};
use zserver_login::protocol::Incoming;
use zserver_login::{Event, LoginClient};

use super::api::{Api, KEY};
use super::cluster::{node_config, run_on, start_two_nodes, until};
use crate::support::pg::Postgres;
use crate::support::{next_event, within};

#[test]
#[ignore = "needs PostgreSQL and NATS: bash .ci/test starts them"]
fn api_calls_on_one_node_reach_a_user_on_another() {
    let db = Postgres::new("lib_api_cluster");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = start_two_nodes(node_config(&db, dir.path()));
    let (a_id, b_id) = (a.node_id().unwrap(), b.node_id().unwrap());
    let (b_addr, pin) = (b.local_addr(), b.fingerprint());
    let b_name = format!("{b_id:016x}");
    let key = ApiKey::new(KEY).unwrap();
    let listener = run_on("tokio", {
        let admin = a.admin();
        async move { ApiServer::start(admin, "127.0.0.1:0".parse().unwrap(), key).await }
    })
    .unwrap();
    let api = Api {
        addr: listener.local_addr(),
    };
    let a = std::sync::Arc::new(a);
    let a2 = a.clone();
    run_on("tokio", async move {
        until("the nodes see each other", || {
            a2.peers() == [b_id] && b.peers() == [a_id]
        })
        .await;
        let added = api
            .call("users/add", json!({ "user": "ann", "password": "ann-pw" }))
            .await;
        assert_eq!(added.status, 201, "{added:?}");
        let transport = zserver::transport("tokio").unwrap();
        let connect = || LoginClient::connect(transport.clone(), b_addr, Some(&pin));
        let (first, second) = (connect().await?, connect().await?);
        first.login("ann", "ann-pw").await?;
        second.login("ann", "ann-pw").await?;
        let mut sub = first.client().subscribe("chat:room").await?;
        until("node a sees ann's sessions on b", || a2.online() == ["ann"]).await;

        // Her sessions, as node b has them.
        let mut sessions = Vec::new();
        for _ in 0..100 {
            sessions = api.call("sessions", json!({ "user": "ann" })).await.json()["sessions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if sessions.len() == 2 {
                break;
            }
            zserver::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sessions.len(), 2, "{sessions:?}");
        assert!(
            sessions.iter().all(|s| s["node"] == b_name.as_str()),
            "{sessions:?}"
        );

        // A push made on a reaches both her sessions on b.
        let pushed = api
            .call("push", json!({ "to": "ann", "text": "via a" }))
            .await;
        assert_eq!(pushed.json()["delivered"], json!(["ann"]), "{pushed:?}");
        let message = Event::Message(Incoming {
            from: "$server".into(),
            text: "via a".into(),
        });
        assert_eq!(next_event(&first).await, message);
        assert_eq!(next_event(&second).await, message);

        // A publication made on a reaches her subscription on b.
        let published = api
            .call(
                "publish",
                json!({ "channel": "chat:room", "data": "from a" }),
            )
            .await;
        assert_eq!(published.status, 200, "{published:?}");
        let event = within(Duration::from_secs(10), sub.recv()).await.flatten();
        match event {
            Some(ChannelEvent::Publication(p)) => assert_eq!(p.data, b"from a"),
            other => panic!("{other:?}"),
        }
        // Presence on a lists her subscriber on b.
        let presence = api
            .call("presence", json!({ "channel": "chat:room" }))
            .await;
        assert_eq!(presence.json()["members"][0]["user"], "ann", "{presence:?}");
        // Unsubscribed from a: the subscription on b ends.
        let unsub = api
            .call(
                "unsubscribe",
                json!({ "user": "ann", "channel": "chat:room" }),
            )
            .await;
        assert_eq!(unsub.json()["unsubscribed"], 1, "{unsub:?}");
        let event = within(Duration::from_secs(10), sub.recv()).await.flatten();
        assert!(
            matches!(event, Some(ChannelEvent::Unsubscribed(_))),
            "{event:?}"
        );

        // Info: both nodes' figures.
        let info = api.call("info", json!({})).await.json();
        let nodes: Vec<&str> = info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, [format!("{a_id:016x}"), b_name.clone()], "{info}");
        assert_eq!(info["nodes"][1]["sessions"], 2, "{info}");

        // One connection on b, named from a; then the rest of her sessions.
        let connection = sessions[0]["connection"].as_u64().unwrap();
        let one = api
            .call(
                "disconnect",
                json!({ "user": "ann", "node": b_name, "connection": connection }),
            )
            .await;
        assert_eq!(one.json()["disconnected"], 1, "{one:?}");
        let kicked = Event::Kicked("disconnected by the server".into());
        // Whichever of her clients it was is kicked; the other stays.
        let (which, event) =
            futures_lite::future::or(async { (0, next_event(&first).await) }, async {
                (1, next_event(&second).await)
            })
            .await;
        assert_eq!(event, kicked);
        let stays = [&second, &first][which];
        let rest = api.call("disconnect", json!({ "user": "ann" })).await;
        assert_eq!(rest.json()["disconnected"], 1, "{rest:?}");
        assert_eq!(next_event(stays).await, kicked);
        until("ann offline everywhere", || a2.online().is_empty()).await;
        let none = api.call("disconnect", json!({ "user": "ann" })).await;
        assert_eq!(none.status, 404, "{none:?}");

        // Deleted through a's API: her new session on b ends at once, and she is gone.
        let third = connect().await?;
        third.login("ann", "ann-pw").await?;
        until("node a sees ann back on b", || a2.online() == ["ann"]).await;
        let deleted = api.call("users/delete", json!({ "user": "ann" })).await;
        assert_eq!(deleted.status, 200, "{deleted:?}");
        assert_eq!(
            next_event(&third).await,
            Event::Kicked("account deleted".into())
        );
        until("ann offline everywhere, deleted", || a2.online().is_empty()).await;
        let users = api.call("users", json!({})).await;
        assert_eq!(users.json()["users"], json!([]), "{users:?}");
        b.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
    listener.shutdown();
    run_on("tokio", async move { a.shutdown().await });
}
