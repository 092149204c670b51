//! The login server under a flood of wrong-password logins from several addresses, on each
//! back end: hashing never exceeds its bound, what does not fit is refused as busy, attempts
//! in progress count against the limits before they are hashed, and an honest user from
//! another address still logs in.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use zserver::{Error, Transport};
use zserver_login::store::PasswordParams;
use zserver_login::{LoginClient, LoginConfig, LoginError, LoginServer};

use zserver::transport::BoundTransport;

/// Hashing slots, queue places and attempts per address of the server under test.
const CONCURRENCY: usize = 2;
const QUEUE: usize = 16;
const PER_ADDRESS: usize = 4;
/// Failed logins allowed per (address, account), per address and per account alike.
const MAX_FAILED: usize = 5;
/// Flooding addresses, and concurrent attempts from each.
const ATTACKERS: u8 = 4;
const EACH: usize = 30;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// What became of each attempt of a flood.
#[derive(Debug, Default)]
struct Outcomes {
    wrong: usize,
    busy: usize,
    limited: usize,
}

/// `EACH` concurrent wrong-password logins from each of the addresses `first..first +
/// ATTACKERS`, each on its own connection (all connected first, then all sent at once);
/// `user(a, i)` names the account the `i`th attempt of the `a`th address tries. Their
/// refusals arrive on the channel.
async fn flood(
    transport: &Arc<dyn Transport>,
    server: &LoginServer,
    first: u8,
    user: fn(u8, usize) -> String,
) -> Result<async_channel::Receiver<Result<LoginError, Error>>, Error> {
    let (addr, pin) = (server.local_addr(), server.fingerprint());
    let (connected_tx, connected) = async_channel::unbounded();
    for a in 0..ATTACKERS {
        let from = BoundTransport::from_ip(transport.clone(), ip(first + a));
        for i in 0..EACH {
            let (from, pin, tx) = (from.clone(), pin.clone(), connected_tx.clone());
            let name = user(a, i);
            transport.runtime().spawn(Box::pin(async move {
                let client = LoginClient::connect(from, addr, Some(&pin)).await;
                let _ = tx.send(client.map(|c| (c, name))).await;
            }));
        }
    }
    let mut clients = Vec::new();
    for _ in 0..ATTACKERS as usize * EACH {
        clients.push(connected.recv().await.map_err(|_| Error::Closed)??);
    }
    let (tx, rx) = async_channel::unbounded();
    for (client, name) in clients {
        let tx = tx.clone();
        transport.runtime().spawn(Box::pin(async move {
            let refusal = match client.login(&name, "wrong guess").await {
                Ok(_) => Err(Error::msg("a wrong password logged in")),
                Err(e) => Ok(e),
            };
            let _ = tx.send(refusal).await;
        }));
    }
    Ok(rx)
}

/// Counts the flood's refusals by kind; any other outcome is an error.
async fn outcomes(
    refusals: async_channel::Receiver<Result<LoginError, Error>>,
) -> Result<Outcomes, Error> {
    let mut seen = Outcomes::default();
    for _ in 0..ATTACKERS as usize * EACH {
        let refusal = refusals
            .recv()
            .await
            .map_err(|_| Error::msg("an attempt vanished"))?;
        match refusal? {
            LoginError::WrongPassword => seen.wrong += 1,
            LoginError::Busy { retry_after } => {
                assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");
                seen.busy += 1
            }
            LoginError::Limited { .. } => seen.limited += 1,
            other => return Err(Error::msg(format!("unexpected refusal: {other}"))),
        }
    }
    Ok(seen)
}

/// Waits until the server has hashes queued or running (the flood has arrived).
async fn until_hashing(server: &LoginServer) {
    for _ in 0..2000 {
        let stats = server.hashing();
        if stats.queued > 0 || stats.running >= CONCURRENCY {
            return;
        }
        zserver::sleep(Duration::from_millis(1)).await;
    }
    panic!("the flood never reached the hashing pool");
}

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("data"));
    config.max_failed_logins = MAX_FAILED;
    config.max_failed_per_address = MAX_FAILED;
    config.max_failed_per_account = MAX_FAILED;
    config.hash_concurrency = CONCURRENCY;
    config.hash_queue = QUEUE;
    config.hash_per_address = PER_ADDRESS;
    // Small hashes keep the test fast; the bounds are what is tested.
    config.password = PasswordParams {
        memory_kib: 8192,
        iterations: 2,
        parallelism: 1,
    };
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let pin = server.fingerprint();
    let honest = BoundTransport::from_ip(transport.clone(), ip(2 + ATTACKERS));
    let admin = LoginClient::connect(honest.clone(), server.local_addr(), Some(&pin)).await?;
    admin.register("honest", "honest-pw").await?;
    admin.register("victim", "victim-pw").await?;

    // One account, guessed at from every attacking address at once: at most MAX_FAILED
    // guesses are hashed, because the ones in progress count before any is hashed.
    let before = server.hashing().completed;
    let attempts = flood(&transport, &server, 2, |_, _| "victim".to_owned()).await?;
    let seen = outcomes(attempts).await?;
    let hashed = server.hashing().completed - before;
    assert!(
        hashed <= MAX_FAILED as u64,
        "{hashed} guesses hashed: {seen:?}"
    );
    assert_eq!(seen.wrong, hashed as usize, "{seen:?}");
    assert_eq!(
        seen.wrong + seen.busy + seen.limited,
        ATTACKERS as usize * EACH
    );
    assert!(seen.limited > 0, "{seen:?}");

    // A second flood, from other addresses (the first ones are limited now), each attempt
    // naming an account of its own: only the addresses' limits and the pool hold it back.
    let attempts = flood(&transport, &server, 10, |a, i| format!("a{a}-u{i}")).await?;
    until_hashing(&server).await;
    // An honest user from another address logs in while the flood is being hashed.
    let user = LoginClient::connect(honest, server.local_addr(), Some(&pin)).await?;
    let started = std::time::Instant::now();
    user.login("honest", "honest-pw").await?;
    let honest_took = started.elapsed();
    let seen = outcomes(attempts).await?;
    assert!(seen.busy > 0, "some attempts are refused as busy: {seen:?}");
    assert!(seen.wrong > 0, "{seen:?}");
    // At most MAX_FAILED hashed per address: the rest busy or limited.
    assert!(seen.wrong <= ATTACKERS as usize * MAX_FAILED, "{seen:?}");
    let stats = server.hashing();
    assert!(
        stats.most_concurrent <= CONCURRENCY,
        "{} hashes ran at once",
        stats.most_concurrent
    );
    assert!(stats.most_concurrent >= 1);
    assert_eq!((stats.running, stats.queued), (0, 0));
    eprintln!("{backend}: {seen:?}, honest login took {honest_took:?}, {stats:?}");
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    crate::support::run_on(backend, Duration::from_secs(60), scenario(backend, path)).unwrap();
}

#[test]
fn a_login_flood_is_bounded_on_tokio() {
    run("tokio");
}

#[test]
fn a_login_flood_is_bounded_on_async_std() {
    run("async-std");
}

#[test]
fn a_login_flood_is_bounded_on_smol() {
    run("smol");
}
