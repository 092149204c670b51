//! The failed-login limits end to end, on each back end: one user's typos lock out no one
//! else behind the same address, many accounts tried from one address are still stopped, one
//! account guessed at from many addresses is too, and registrations refused for a bad or
//! taken name count against no limit.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use zserver::transport::BoundTransport;
use zserver::{Error, Transport};
use zserver_login::store::PasswordParams;
use zserver_login::{LoginClient, LoginConfig, LoginError, LoginServer};

/// The bounds of the server under test (per pair, per address, per account, registrations).
const PAIR: usize = 5;
const PER_ADDRESS: usize = 12;
const PER_ACCOUNT: usize = 8;
const REGISTRATIONS: usize = 3;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn limited(result: Result<impl std::fmt::Debug, LoginError>) -> bool {
    matches!(result, Err(LoginError::Limited { .. }))
}

fn wrong(result: Result<impl std::fmt::Debug, LoginError>) -> bool {
    matches!(result, Err(LoginError::WrongPassword))
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("data"));
    config.max_failed_logins = PAIR;
    config.max_failed_per_address = PER_ADDRESS;
    config.max_failed_per_account = PER_ACCOUNT;
    config.max_registrations = REGISTRATIONS;
    config.password = PasswordParams {
        memory_kib: 8192,
        iterations: 1,
        parallelism: 1,
    };
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let (addr, pin) = (server.local_addr(), server.fingerprint());
    let from = |last: u8| {
        let bound: Arc<dyn Transport> = BoundTransport::from_ip(transport.clone(), ip(last));
        let pin = pin.clone();
        async move { LoginClient::connect(bound, addr, Some(&pin)).await }
    };

    // Registrations: bad and taken names are refused before any hash and do not count;
    // three that reach the hash do, and a fourth is refused.
    let home = from(2).await?;
    home.register("ann", "ann-pw").await?;
    for _ in 0..5 {
        let bad = home.register("../x", "pw").await.unwrap_err();
        assert!(bad.to_string().contains("bad user name"), "{bad}");
        let taken = home.register("ann", "pw").await.unwrap_err();
        assert!(taken.to_string().contains("already exists"), "{taken}");
    }
    home.register("bob", "bob-pw").await?;
    home.register("carol", "carol-pw").await?;
    let refused = home.register("dave", "dave-pw").await;
    assert!(
        matches!(refused, Err(LoginError::RegistrationsLimited { .. })),
        "{refused:?}"
    );
    // A limited address learns nothing of names either.
    let refused = home.register("ann", "pw").await;
    assert!(matches!(
        refused,
        Err(LoginError::RegistrationsLimited { .. })
    ));

    // Five wrong passwords for bob lock bob out from this address, not ann behind it, nor bob
    // elsewhere.
    for _ in 0..PAIR {
        assert!(wrong(home.login("bob", "typo").await));
    }
    assert!(limited(home.login("bob", "bob-pw").await));
    home.login("ann", "ann-pw").await?;
    from(3).await?.login("bob", "bob-pw").await?;

    // Credential stuffing: one guess each at many accounts from one address is stopped at the
    // address's bound, and then that address is refused for every account.
    let stuffer = from(4).await?;
    for i in 0..PER_ADDRESS {
        assert!(wrong(stuffer.login(&format!("u{i}"), "123456").await));
    }
    assert!(limited(stuffer.login("u99", "123456").await));
    assert!(limited(stuffer.login("ann", "ann-pw").await));
    from(5).await?.login("ann", "ann-pw").await?;

    // One account guessed at from many addresses, each under its pair bound: stopped at the
    // account's bound, from any address; other accounts are not held up.
    let per_address = PER_ACCOUNT / 2;
    assert!(per_address < PAIR);
    for last in [6, 7] {
        let guesser = from(last).await?;
        for _ in 0..per_address {
            assert!(wrong(guesser.login("carol", "guess").await));
        }
    }
    let fresh = from(8).await?;
    assert!(limited(fresh.login("carol", "carol-pw").await));
    fresh.login("ann", "ann-pw").await?;
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    crate::support::run_on(backend, Duration::from_secs(60), scenario(backend, path)).unwrap();
}

#[test]
fn limiter_rules_end_to_end_on_tokio() {
    run("tokio");
}

#[test]
fn limiter_rules_end_to_end_on_async_std() {
    run("async-std");
}

#[test]
fn limiter_rules_end_to_end_on_smol() {
    run("smol");
}
