//! The login server behind a proxy, on each back end: the failed-login limit per address
//! counts the client addresses a trusted proxy announces in its PROXY headers, so users
//! behind one proxy do not lock each other out.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use zserver::proxy::{ProxiedTransport, TrustedProxies, Version};
use zserver::transport::BoundTransport;
use zserver::Error;
use zserver_login::store::PasswordParams;
use zserver_login::{LoginClient, LoginConfig, LoginError, LoginServer};

const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

async fn scenario(backend: &'static str, dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.join("data"));
    // The address-wide bound (failures over all accounts from one address) is what a
    // client behind the proxy reaches here.
    config.max_failed_per_address = 2;
    config.password = PasswordParams {
        memory_kib: 8192,
        iterations: 1,
        parallelism: 1,
    };
    config.connection.trusted_proxies = TrustedProxies::new()
        .trust(PROXY.into())
        .with_proxy_protocol(true);
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let (addr, pin) = (server.local_addr(), server.fingerprint());
    let from_proxy = BoundTransport::from_ip(transport.clone(), PROXY);
    let behind = |client: &str| -> std::sync::Arc<dyn zserver::Transport> {
        let client: SocketAddr = client.parse().unwrap();
        std::sync::Arc::new(ProxiedTransport::new(
            from_proxy.clone(),
            Version::V1,
            client,
        ))
    };
    let admin = LoginClient::connect(behind("192.0.2.100:1"), addr, Some(&pin)).await?;
    for user in ["u1", "u2", "u3", "u4"] {
        admin.register(user, "right-pw").await?;
    }

    // Two users behind the same proxy; the first guesses until its address is limited.
    let a = LoginClient::connect(behind("192.0.2.1:5000"), addr, Some(&pin)).await?;
    let b = LoginClient::connect(behind("192.0.2.2:5000"), addr, Some(&pin)).await?;
    for user in ["u1", "u2"] {
        let e = a.login(user, "wrong").await.expect_err("a wrong password");
        assert!(matches!(e, LoginError::WrongPassword), "{e}");
    }
    let e = a.login("u3", "right-pw").await.expect_err("limited");
    assert!(matches!(e, LoginError::Limited { .. }), "{e}");
    // The other, behind the same proxy address, is not.
    b.login("u3", "right-pw").await?;
    let e = LoginClient::connect(behind("192.0.2.2:5001"), addr, Some(&pin))
        .await?
        .login("u4", "wrong")
        .await
        .expect_err("a wrong password");
    assert!(matches!(e, LoginError::WrongPassword), "{e}");
    // A client from the proxy's address without a header is refused.
    let direct = LoginClient::connect(from_proxy.clone(), addr, Some(&pin)).await;
    assert!(direct.is_err(), "no PROXY header from the proxy");
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    crate::support::run_on(backend, Duration::from_secs(60), scenario(backend, path)).unwrap();
}

#[test]
fn limits_behind_a_proxy_count_the_client_on_tokio() {
    run("tokio");
}

#[test]
fn limits_behind_a_proxy_count_the_client_on_async_std() {
    run("async-std");
}

#[test]
fn limits_behind_a_proxy_count_the_client_on_smol() {
    run("smol");
}
