//! The server API over HTTP (`zserver_login::api`): every call with good and bad input,
//! without the key and with a wrong one, against a real server and its API listener on
//! loopback; users logged in over the protocol see what the calls do. On tokio, and on smol
//! (the API keeps its own tokio runtime whatever the server's back end).

use std::time::Duration;

use serde_json::{json, Value};
use zserver::channels::{ChannelCalls, Event as ChannelEvent, Subscription};
use zserver::Error;
use zserver_login::api::{ApiKey, ApiServer, MAX_BODY};
use zserver_login::protocol::Incoming;
use zserver_login::{Event, LoginClient, LoginConfig, LoginServer};

use crate::http::{request, Reply};
use crate::support::{next_event, within};

pub(super) const KEY: &str = "test-api-key-0123456789";

/// A client of one API listener.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) addr: std::net::SocketAddr,
}

impl Api {
    /// `POST /api/CALL` with `body` and the key.
    pub(super) async fn call(&self, call: &str, body: Value) -> Reply {
        let auth = format!("Bearer {KEY}");
        self.send(
            "POST",
            &format!("/api/{call}"),
            &[("Authorization", &auth)],
            Some(body.to_string()),
        )
        .await
    }

    /// `method path` with `headers` and `body`, off the async runtime.
    async fn send(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let (addr, path) = (self.addr, path.to_owned());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        blocking::unblock(move || {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            request(addr, method, &path, &headers, body.as_deref())
        })
        .await
    }
}

/// Asserts `reply` has `status` and a JSON error containing `says`.
fn refused(reply: &Reply, status: u16, says: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(
        reply.error().contains(says),
        "{:?} should say {says:?}",
        reply.error()
    );
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.contains("json")),
        "{reply:?}"
    );
}

async fn next_publication(sub: &mut Subscription) -> ChannelEvent {
    within(Duration::from_secs(10), sub.recv())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is live")
}

async fn start(
    backend: &'static str,
    dir: &std::path::Path,
) -> Result<(LoginServer, ApiServer, Api), Error> {
    let transport = zserver::transport(backend).unwrap();
    let config = LoginConfig::new(dir.join("data"));
    let server = LoginServer::start(transport, "127.0.0.1:0".parse().unwrap(), config).await?;
    let key = ApiKey::new(KEY)?;
    let api = ApiServer::start(server.admin(), "127.0.0.1:0".parse().unwrap(), key).await?;
    let client = Api {
        addr: api.local_addr(),
    };
    Ok((server, api, client))
}

async fn login(server: &LoginServer, user: &str) -> Result<LoginClient, Error> {
    let transport = zserver::transport("tokio").unwrap();
    let client =
        LoginClient::connect(transport, server.local_addr(), Some(&server.fingerprint())).await?;
    client.login(user, &format!("{user}-pw")).await?;
    Ok(client)
}

/// The key: none, a wrong one, both schemes; the page's login and its cookie.
async fn keys(api: &Api) {
    let info = |headers: Vec<(&'static str, String)>| {
        let api = api.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            api.send("POST", "/api/info", &headers, Some("{}".into()))
                .await
        }
    };
    let none = info(vec![]).await;
    refused(&none, 401, "missing API key");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    refused(
        &info(vec![(
            "Authorization",
            "Bearer wrong-key-0123456789".into(),
        )])
        .await,
        401,
        "wrong API key",
    );
    refused(
        &info(vec![("Authorization", format!("Bearer {KEY}x"))]).await,
        401,
        "wrong API key",
    );
    refused(
        &info(vec![("Authorization", format!("Basic {KEY}"))]).await,
        401,
        "",
    );
    assert_eq!(
        info(vec![("Authorization", format!("Bearer {KEY}"))])
            .await
            .status,
        200
    );
    assert_eq!(
        info(vec![("Authorization", format!("apikey {KEY}"))])
            .await
            .status,
        200
    );
    // Every call needs it, not only info.
    for call in [
        "publish",
        "broadcast",
        "presence",
        "history",
        "unsubscribe",
        "disconnect",
        "sessions",
        "push",
        "users",
        "users/add",
        "users/delete",
    ] {
        let reply = api
            .send("POST", &format!("/api/{call}"), &[], Some("{}".into()))
            .await;
        refused(&reply, 401, "missing API key");
    }

    // The admin page: a wrong key gets no cookie; the right one an HttpOnly, SameSite=Strict
    // one, which then stands for the key until logout.
    let wrong = api
        .send(
            "POST",
            "/admin/login",
            &[],
            Some(json!({ "key": "nope" }).to_string()),
        )
        .await;
    refused(&wrong, 401, "wrong API key");
    assert!(wrong.header("set-cookie").is_none());
    let good = api
        .send(
            "POST",
            "/admin/login",
            &[],
            Some(json!({ "key": KEY }).to_string()),
        )
        .await;
    assert_eq!(good.status, 200, "{good:?}");
    let set = good
        .header("set-cookie")
        .expect("a session cookie")
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(!cookie.contains(KEY));
    assert_eq!(info(vec![("Cookie", cookie.clone())]).await.status, 200);
    refused(
        &info(vec![("Cookie", "zserver_admin=forged".into())]).await,
        401,
        "",
    );
    let out = api
        .send("POST", "/admin/logout", &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(out.status, 200);
    refused(&info(vec![("Cookie", cookie)]).await, 401, "");
    // The page itself is served to anyone (it holds no secret), with a strict policy.
    let page = api.send("GET", "/admin", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>"), "{}", page.body);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("default-src 'self'")));
}

/// Bodies the API refuses before any call: bad JSON, wrong shapes, no JSON type, too big;
/// unknown paths and methods.
async fn bodies(api: &Api) {
    let auth = format!("Bearer {KEY}");
    let raw = |body: &str, content_type: &str| {
        let (api, auth, body, content_type) = (
            api.clone(),
            auth.clone(),
            body.to_owned(),
            content_type.to_owned(),
        );
        async move {
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", content_type.as_str()),
            ];
            api.send("POST", "/api/publish", &headers, Some(body)).await
        }
    };
    refused(&raw("{not json", "application/json").await, 400, "");
    refused(
        &raw(r#"{"channel": 5, "data": "x"}"#, "application/json").await,
        422,
        "channel",
    );
    refused(
        &raw(r#"{"data": "x"}"#, "application/json").await,
        422,
        "channel",
    );
    refused(
        &raw(
            r#"{"channel": "chat:a", "data": "x", "extra": 1}"#,
            "application/json",
        )
        .await,
        422,
        "extra",
    );
    refused(
        &raw(r#"{"channel": "chat:a", "data": "x"}"#, "text/plain").await,
        415,
        "",
    );
    let big = json!({ "channel": "chat:a", "data": "x".repeat(MAX_BODY) }).to_string();
    refused(&raw(&big, "application/json").await, 413, "");
    refused(
        &api.call("no-such-call", json!({})).await,
        404,
        "no such API call",
    );
    let get = api
        .send("GET", "/api/publish", &[("Authorization", &auth)], None)
        .await;
    refused(&get, 405, "POST");
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let (server, listener, api) = start(backend, &dir).await?;
    let node = server.admin().node();
    keys(&api).await;
    bodies(&api).await;

    // Users: add, list, refusals.
    for user in ["ann", "bob", "cat"] {
        let added = api
            .call(
                "users/add",
                json!({ "user": user, "password": format!("{user}-pw") }),
            )
            .await;
        assert_eq!(added.status, 201, "{added:?}");
        assert_eq!(added.json()["added"], user);
    }
    refused(
        &api.call("users/add", json!({ "user": "ann", "password": "x" }))
            .await,
        409,
        "already exists",
    );
    refused(
        &api.call("users/add", json!({ "user": "no spaces", "password": "x" }))
            .await,
        400,
        "bad user name",
    );
    refused(
        &api.call("users/add", json!({ "user": "dan", "password": "" }))
            .await,
        400,
        "bad password",
    );
    refused(
        &api.call("users/add", json!({ "user": "dan" })).await,
        422,
        "password",
    );
    let users = api.call("users", json!({})).await;
    assert_eq!(users.json()["users"], json!(["ann", "bob", "cat"]));

    // Ann logs in and subscribes.
    let ann = login(&server, "ann").await?;
    let mut sub = ann.client().subscribe("chat:room").await?;
    let users = api.call("users", json!({})).await;
    assert_eq!(users.json()["online"], json!(["ann"]));

    // Publish: text and bytes reach the subscriber, from the server.
    let published = api
        .call(
            "publish",
            json!({ "channel": "chat:room", "data": "hello" }),
        )
        .await;
    assert_eq!(published.status, 200, "{published:?}");
    assert_eq!(published.json()["position"]["offset"], 1);
    match next_publication(&mut sub).await {
        ChannelEvent::Publication(p) => {
            assert_eq!((p.from.as_str(), p.data.as_slice()), ("", &b"hello"[..]))
        }
        other => panic!("{other:?}"),
    }
    let bytes = api
        .call(
            "publish",
            json!({ "channel": "chat:room", "data_base64": "AP8=" }),
        )
        .await;
    assert_eq!(bytes.json()["position"]["offset"], 2);
    match next_publication(&mut sub).await {
        ChannelEvent::Publication(p) => assert_eq!(p.data, [0, 255]),
        other => panic!("{other:?}"),
    }
    refused(
        &api.call("publish", json!({ "channel": "nope:x", "data": "x" }))
            .await,
        404,
        "no namespace",
    );
    refused(
        &api.call("publish", json!({ "channel": "chat:room" })).await,
        400,
        "exactly one of",
    );
    refused(
        &api.call(
            "publish",
            json!({ "channel": "chat:room", "data": "x", "data_base64": "eA==" }),
        )
        .await,
        400,
        "exactly one of",
    );
    refused(
        &api.call(
            "publish",
            json!({ "channel": "chat:room", "data_base64": "!!" }),
        )
        .await,
        400,
        "not base64",
    );
    let too_big = "x".repeat(zserver::channels::DEFAULT_MAX_PUBLICATION + 1);
    refused(
        &api.call(
            "publish",
            json!({ "channel": "chat:room", "data": too_big }),
        )
        .await,
        400,
        "",
    );

    // Broadcast: each channel's outcome.
    let sent = api
        .call(
            "broadcast",
            json!({ "channels": ["chat:room", "chat:other", "nope:x"], "data": "all" }),
        )
        .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    let results = sent.json()["results"].clone();
    assert_eq!(results[0]["position"]["offset"], 3);
    assert_eq!(results[1]["position"]["offset"], 1);
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("no namespace"),
        "{results}"
    );
    match next_publication(&mut sub).await {
        ChannelEvent::Publication(p) => assert_eq!(p.data, b"all"),
        other => panic!("{other:?}"),
    }
    refused(
        &api.call("broadcast", json!({ "channels": [], "data": "x" }))
            .await,
        400,
        "1 to",
    );
    let many: Vec<String> = (0..1001).map(|i| format!("chat:{i}")).collect();
    refused(
        &api.call("broadcast", json!({ "channels": many, "data": "x" }))
            .await,
        400,
        "1 to",
    );

    // Presence and history.
    let presence = api
        .call("presence", json!({ "channel": "chat:room" }))
        .await;
    assert_eq!(presence.status, 200);
    let members = presence.json()["members"].clone();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members[0]["user"], "ann");
    refused(
        &api.call("presence", json!({ "channel": "nope:x" })).await,
        404,
        "no namespace",
    );
    refused(&api.call("presence", json!({})).await, 422, "channel");
    let history = api.call("history", json!({ "channel": "chat:room" })).await;
    assert_eq!(history.status, 200, "{history:?}");
    let h = history.json();
    assert_eq!(h["position"]["offset"], 3);
    assert_eq!(h["publications"][0]["data"], "hello");
    assert_eq!(h["publications"][1]["data_base64"], "AP8=");
    assert_eq!(h["publications"][2]["data"], "all");
    let since = json!({ "epoch": h["position"]["epoch"], "offset": 1 });
    let later = api
        .call(
            "history",
            json!({ "channel": "chat:room", "since": since, "limit": 1 }),
        )
        .await;
    let later = later.json()["publications"].clone();
    assert_eq!(later.as_array().unwrap().len(), 1, "{later}");
    assert_eq!(later[0]["offset"], 2);
    refused(
        &api.call(
            "history",
            json!({ "channel": "chat:room", "since": "yesterday" }),
        )
        .await,
        422,
        "since",
    );
    refused(
        &api.call("history", json!({ "channel": "nope:x" })).await,
        404,
        "no namespace",
    );

    // Sessions: where ann is logged in.
    let sessions = api.call("sessions", json!({ "user": "ann" })).await;
    assert_eq!(sessions.status, 200, "{sessions:?}");
    let list = sessions.json()["sessions"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["node"], node.as_str());
    assert!(list[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let connection = list[0]["connection"].as_u64().unwrap();
    assert_eq!(
        api.call("sessions", json!({ "user": "bob" })).await.json()["sessions"],
        json!([])
    );
    refused(
        &api.call("sessions", json!({ "user": "ghost" })).await,
        404,
        "no user",
    );
    refused(
        &api.call("sessions", json!({ "user": "../x" })).await,
        400,
        "bad user name",
    );

    // Unsubscribe: ann's subscription ends, told why; a second time there is none.
    let unsub = api
        .call(
            "unsubscribe",
            json!({ "user": "ann", "channel": "chat:room" }),
        )
        .await;
    assert_eq!(unsub.json()["unsubscribed"], 1, "{unsub:?}");
    match next_publication(&mut sub).await {
        ChannelEvent::Unsubscribed(why) => assert_eq!(why, "unsubscribed by the server"),
        other => panic!("{other:?}"),
    }
    refused(
        &api.call(
            "unsubscribe",
            json!({ "user": "ann", "channel": "chat:room" }),
        )
        .await,
        404,
        "not subscribed",
    );
    refused(
        &api.call("unsubscribe", json!({ "user": "ann", "channel": "nope:x" }))
            .await,
        404,
        "no namespace",
    );

    // Push: live to ann, stored for bob (offline), refused for nobody.
    let pushed = api
        .call("push", json!({ "to": "ann", "text": "hi ann" }))
        .await;
    assert_eq!(pushed.json()["delivered"], json!(["ann"]), "{pushed:?}");
    let expected = Event::Message(Incoming {
        from: "$server".into(),
        text: "hi ann".into(),
    });
    assert_eq!(next_event(&ann).await, expected);
    let stored = api
        .call(
            "push",
            json!({ "to": ["bob"], "text": "later", "from": "ops" }),
        )
        .await;
    assert_eq!(stored.json()["stored"], json!(["bob"]), "{stored:?}");
    refused(
        &api.call("push", json!({ "to": ["bob", "ghost"], "text": "x" }))
            .await,
        404,
        "no user `ghost`",
    );
    refused(
        &api.call("push", json!({ "to": [], "text": "x" })).await,
        400,
        "1 to",
    );
    refused(
        &api.call("push", json!({ "to": 5, "text": "x" })).await,
        422,
        "",
    );

    // Info: this node's figures.
    let info = api.call("info", json!({})).await;
    assert_eq!(info.status, 200, "{info:?}");
    let i = info.json();
    assert_eq!(i["node"], node.as_str());
    assert_eq!(i["nodes"][0]["node"], node.as_str());
    assert!(i["nodes"][0]["connections"].as_u64().unwrap() >= 1, "{i}");
    assert!(i["nodes"][0]["publications"].as_u64().unwrap() >= 4, "{i}");
    assert!(i["users_online"].as_u64().unwrap() >= 1, "{i}");
    assert_eq!(i["unreachable"], json!([]));

    // Disconnect one connection, then a user; refusals.
    refused(
        &api.call("disconnect", json!({ "user": "ann", "node": node }))
            .await,
        400,
        "both",
    );
    refused(
        &api.call(
            "disconnect",
            json!({ "user": "ann", "node": "00000000000000ff", "connection": 1 }),
        )
        .await,
        404,
        "no node",
    );
    refused(
        &api.call(
            "disconnect",
            json!({ "user": "ann", "node": node, "connection": connection + 1000 }),
        )
        .await,
        404,
        "no session",
    );
    let one = api
        .call(
            "disconnect",
            json!({ "user": "ann", "node": node, "connection": connection }),
        )
        .await;
    assert_eq!(one.json()["disconnected"], 1, "{one:?}");
    assert_eq!(
        next_event(&ann).await,
        Event::Kicked("disconnected by the server".into())
    );
    let again = login(&server, "ann").await?;
    let all = api.call("disconnect", json!({ "user": "ann" })).await;
    assert_eq!(all.json()["disconnected"], 1, "{all:?}");
    assert_eq!(
        next_event(&again).await,
        Event::Kicked("disconnected by the server".into())
    );
    refused(
        &api.call("disconnect", json!({ "user": "ann" })).await,
        404,
        "not logged in",
    );

    // Delete a user: gone from the list; cat's live session ends.
    let cat = login(&server, "cat").await?;
    let deleted = api.call("users/delete", json!({ "user": "cat" })).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(
        next_event(&cat).await,
        Event::Kicked("account deleted".into())
    );
    refused(
        &api.call("users/delete", json!({ "user": "cat" })).await,
        404,
        "no user",
    );
    let users = api.call("users", json!({})).await;
    assert_eq!(users.json()["users"], json!(["ann", "bob"]));

    listener.shutdown();
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::support::run_on(backend, Duration::from_secs(120), scenario(backend, path)).unwrap();
}

#[test]
fn api_calls_on_tokio() {
    run("tokio");
}

#[test]
fn api_calls_on_smol() {
    run("smol");
}
