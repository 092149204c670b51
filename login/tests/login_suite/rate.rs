//! Rate limits on the login server: a user's bucket is shared by all of their sessions
//! (two devices), for a command and for a namespace's publications; another user has
//! their own; a reload replaces the limits without dropping anyone.

use std::time::Duration;

use zserver::channels::ChannelCalls;
use zserver::rate::{RateLimit, RateLimits, Rule};
use zserver::Error;
use zserver_login::{LoginClient, LoginConfig, LoginServer};

fn refused<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(e @ Error::RateLimited(_)) => assert!(e.retry_after().is_some(), "{e}"),
        other => panic!("expected a rate-limit refusal, got {other:?}"),
    }
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("data"));
    config.rate = RateLimits::default()
        .command("who", Rule::per_user(RateLimit::new(1, 3)))
        .strikes(0, Duration::from_secs(10));
    config.channels[0].publish_rate_per_user = Some(RateLimit::new(1, 1));
    let server = LoginServer::start(
        transport.clone(),
        "127.0.0.1:0".parse().unwrap(),
        config.clone(),
    )
    .await?;
    let pin = server.fingerprint();
    let connect = || LoginClient::connect(transport.clone(), server.local_addr(), Some(&pin));
    let (phone, laptop, bob) = (connect().await?, connect().await?, connect().await?);
    phone.register("ann", "ann-pw").await?;
    bob.register("bob", "bob-pw").await?;
    phone.login("ann", "ann-pw").await?;
    laptop.login("ann", "ann-pw").await?;
    bob.login("bob", "bob-pw").await?;
    // ann's three `who`s, from either device, then none from either.
    phone.who().await?;
    phone.who().await?;
    laptop.who().await?;
    refused(laptop.who().await);
    refused(phone.who().await);
    assert_eq!(bob.who().await?, ["ann", "bob"]);
    // One publication a second for ann, over both devices.
    phone.client().publish("chat:room", "one").await?;
    refused(laptop.client().publish("chat:room", "two").await);
    bob.client().publish("chat:room", "bob's").await?;
    assert!(server.rate_limiter().refused() >= 3);
    // A reload without limits (what SIGHUP does): ann's sessions carry on, no longer
    // limited.
    config.rate = RateLimits::default();
    config.channels[0].publish_rate_per_user = None;
    let report = server.reload(&config);
    assert!(report.complete(), "{report:?}");
    for setting in ["limits.rate", "channels"] {
        assert!(report.applied.iter().any(|s| s == setting), "{report:?}");
    }
    phone.who().await?;
    phone.who().await?;
    laptop.who().await?;
    laptop.who().await?;
    laptop.client().publish("chat:room", "three").await?;
    phone.client().publish("chat:room", "four").await?;
    // And a reload that limits again applies to the next call.
    config.rate = RateLimits::default()
        .command("who", Rule::per_user(RateLimit::new(1, 1)))
        .strikes(0, Duration::from_secs(10));
    assert!(server.reload(&config).complete());
    phone.who().await?;
    refused(laptop.who().await);
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::support::run_on(backend, Duration::from_secs(120), scenario(backend, path)).unwrap();
}

#[test]
fn rate_limits_on_tokio() {
    run("tokio");
}

#[test]
fn rate_limits_on_async_std() {
    run("async-std");
}

#[test]
fn rate_limits_on_smol() {
    run("smol");
}
