//! The server API over TLS (`ApiServer::start_tls`), with a certificate the test makes
//! (rcgen): calls over `https://` with the key, the admin page's cookie marked `Secure`, a
//! plain-HTTP request refused at the handshake, and a reload of the certificates serving
//! the new one to the next connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zserver::tls::rustls::pki_types::{CertificateDer, ServerName};
use zserver::tls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use zserver::tls::Certificates;
use zserver::Error;
use zserver_login::api::{ApiKey, ApiServer};
use zserver_login::{LoginConfig, LoginServer};

use crate::api::KEY;
use crate::http::{connect, request, request_on, Reply};

/// A self-signed certificate for 127.0.0.1 written as `NAME.pem`/`NAME.key` under `dir`.
fn make_cert(dir: &Path, name: &str) -> CertificateDer<'static> {
    let names = vec!["localhost".into(), "127.0.0.1".into()];
    let made = rcgen::generate_simple_self_signed(names).expect("make a certificate");
    std::fs::write(dir.join(format!("{name}.pem")), made.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        made.key_pair.serialize_pem(),
    )
    .unwrap();
    made.cert.der().clone()
}

/// A client configuration trusting `cert` alone.
fn trusting(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// `POST path` over TLS with the key, trusting `config`'s roots only.
fn https(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str, body: &str) -> Reply {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = ClientConnection::new(config.clone(), name).unwrap();
    let stream = StreamOwned::new(tls, connect(addr));
    let auth = format!("Bearer {KEY}");
    let headers = [("Authorization", auth.as_str())];
    request_on(stream, addr, "POST", path, &headers, Some(body))
}

/// Whether a TLS handshake trusting `config` alone succeeds.
fn handshake_ok(addr: SocketAddr, config: &Arc<ClientConfig>) -> bool {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = ClientConnection::new(config.clone(), name).unwrap();
    let mut socket = connect(addr);
    while tls.is_handshaking() {
        if tls.complete_io(&mut socket).is_err() {
            return false;
        }
    }
    true
}

async fn scenario(dir: std::path::PathBuf) -> Result<(), Error> {
    let transport = zserver::transport("tokio").unwrap();
    let config = LoginConfig::new(dir.join("data"));
    let server = LoginServer::start(transport, "127.0.0.1:0".parse().unwrap(), config).await?;
    let first = make_cert(&dir, "first");
    let certs = Certificates::load(dir.join("first.pem"), dir.join("first.key")).unwrap();
    let key = ApiKey::new(KEY)?;
    let api =
        ApiServer::start_tls(server.admin(), "127.0.0.1:0".parse().unwrap(), key, &certs).await?;
    let addr = api.local_addr();
    let trust_first = trusting(&first);
    let checks = blocking::unblock(move || {
        let info = https(addr, &trust_first, "/api/info", "{}");
        assert_eq!(info.status, 200, "{info:?}");
        assert!(info.json()["nodes"].is_array(), "{info:?}");
        // The admin page's login over TLS: its cookie is `Secure` (and still HttpOnly).
        let login = https(
            addr,
            &trust_first,
            "/admin/login",
            &format!(r#"{{"key":"{KEY}"}}"#),
        );
        assert_eq!(login.status, 200, "{login:?}");
        let cookie = login.header("set-cookie").unwrap_or_default().to_owned();
        assert!(
            cookie.contains("; Secure") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        // Plain HTTP to the TLS port gets no answer.
        let plain = std::panic::catch_unwind(|| request(addr, "POST", "/api/info", &[], None));
        assert!(
            plain.map_or(true, |r| r.status != 200),
            "plain HTTP was served"
        );
    });
    within(checks).await;
    // A reload serves the new certificate to the next connection.
    let second = make_cert(&dir, "second");
    std::fs::copy(dir.join("second.pem"), dir.join("first.pem")).unwrap();
    std::fs::copy(dir.join("second.key"), dir.join("first.key")).unwrap();
    certs.reload().unwrap();
    let (trust_first, trust_second) = (trusting(&first), trusting(&second));
    within(blocking::unblock(move || {
        assert!(
            !handshake_ok(addr, &trust_first),
            "the old certificate after a reload"
        );
        assert!(
            handshake_ok(addr, &trust_second),
            "the new certificate after a reload"
        );
        let info = https(addr, &trust_second, "/api/info", "{}");
        assert_eq!(info.status, 200, "{info:?}");
    }))
    .await;
    api.shutdown();
    server.shutdown().await;
    Ok(())
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    crate::support::within(Duration::from_secs(60), f)
        .await
        .expect("within 60 s")
}

#[test]
fn the_api_serves_https_with_reloadable_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    crate::support::run_on("tokio", Duration::from_secs(120), scenario(path)).unwrap();
}
