//! Mixed pairs: each compiled-in back end's client against every other back end's server,
//! in one process, encrypted and plain. Calls both ways, one-way sends, a big payload and
//! a graceful shutdown must work whichever runtime drives each end.

use std::time::Duration;

use zserver::{Bytes, ClientBuilder, Config, Error, Router, ServerBuilder};

use crate::common::*;
use zserver::Calls;

/// The ordered pairs (server back end, client back end) of different back ends.
fn pairs() -> Vec<(&'static str, &'static str)> {
    let names = zserver::backends();
    let mut pairs = Vec::new();
    for s in &names {
        for c in &names {
            if s != c {
                pairs.push((*s, *c));
            }
        }
    }
    pairs
}

async fn one_pair(addr: &str, server_on: &str, client_on: &str, config: Config) {
    let what = format!("{client_on} client → {server_on} server");
    let sent = Watch::new(Vec::<String>::new());
    let seen = sent.clone();
    let router = Router::new()
        .console("echo", |_ctx, text: String| async move { Ok(text) })
        .bytes("len", |_ctx, bytes: Bytes| async move {
            Ok(Bytes::from((bytes.len() as u64).to_le_bytes().to_vec()))
        })
        .call("push", |ctx, n: u32| async move {
            let doubled: u32 = ctx.connection().call("double", &n).await?;
            Ok::<_, Error>(doubled + 1)
        })
        .console("note", move |_ctx, text: String| {
            let seen = seen.clone();
            async move {
                seen.update(|v| v.push(text));
                Ok(String::new())
            }
        });
    let server = ServerBuilder::new(zserver::transport(server_on).expect("server back end"))
        .router(router)
        .config(config.clone())
        .bind(addr)
        .await
        .unwrap_or_else(|e| panic!("{what}: bind: {e}"));
    let client_router =
        Router::new().call(
            "double",
            |_ctx, n: u32| async move { Ok::<_, Error>(n * 2) },
        );
    let client = ClientBuilder::new(zserver::transport(client_on).expect("client back end"))
        .router(client_router)
        .config(config)
        .connect(server.local_addr())
        .await
        .unwrap_or_else(|e| panic!("{what}: connect: {e}"));

    assert_eq!(
        client.console("echo", "hi").await,
        Ok("hi".into()),
        "{what}"
    );
    assert_eq!(
        client.call::<_, u32>("push", &20u32).await,
        Ok(41),
        "{what}"
    );
    let big = vec![7u8; 3 << 20];
    let len = client.call_bytes("len", &big).await.expect(&what);
    assert_eq!(len.as_ref(), &(big.len() as u64).to_le_bytes(), "{what}");
    for i in 0..100 {
        client
            .send_bytes("note", format!("n{i}"))
            .await
            .expect(&what);
    }
    sent.wait_for(&what, |v| v.len() == 100).await;
    assert_eq!(sent.snapshot()[99], "n99", "{what}: one-way sends in order");

    within(Duration::from_secs(10), &what, server.shutdown()).await;
    within(Duration::from_secs(10), &what, client.connection().closed()).await;
}

async fn all_pairs(addr: &str, config: Config) {
    let pairs = pairs();
    assert!(
        pairs.len() >= 2,
        "the suite is built with every back end (the workspace enables them): {:?}",
        zserver::backends()
    );
    for (server_on, client_on) in pairs {
        one_pair(addr, server_on, client_on, config.clone()).await;
    }
}

both!(encrypted_pairs);
async fn encrypted_pairs(addr: &str) {
    all_pairs(addr, Config::default()).await;
}

both!(plain_pairs);
async fn plain_pairs(addr: &str) {
    all_pairs(addr, Config::plain_trusted_link()).await;
}
