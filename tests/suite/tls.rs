//! `wss://`: TLS on the WebSocket listener with certificates the tests make (rcgen), the
//! Noise layer still inside; a reload serves a new certificate to new connections while
//! open ones stay; bad or missing PEM files are refused with messages naming them.
#![cfg(feature = "tls")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zserver::tls::rustls::pki_types::CertificateDer;
use zserver::tls::rustls::{self, ClientConfig, RootCertStore};
use zserver::tls::{Certificates, TlsError};
use zserver::ws::WsOptions;
use zserver::{Calls, Client, Config, Error, Router, Server};

use crate::common::*;

/// A self-signed certificate for the loopback names, written as `NAME.pem` and
/// `NAME.key` under `dir`; returns the two paths and the certificate's DER.
pub(crate) fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let made = rcgen::generate_simple_self_signed(names).expect("make a certificate");
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert, key, made.cert.der().clone())
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

/// A server with `echo`, listening on TCP `addr` and `wss://` on the same host.
async fn tls_server(addr: &str, certificates: &Certificates) -> (Server, String) {
    let router = Router::new().console("echo", |_ctx, text: String| async move { Ok(text) });
    let server = start_server(addr, router, Config::default()).await;
    let ws = server
        .listen_ws(addr, WsOptions::new().tls(certificates.clone()))
        .await
        .expect("listen on wss");
    (server, format!("wss://{ws}/"))
}

async fn wss_client(url: &str, cert: &CertificateDer<'static>) -> Result<Client, Error> {
    zserver::client()
        .tls_config(trusting(cert))
        .connect_timeout(Duration::from_secs(5))
        .connect_ws(url)
        .await
}

/// A client trusting the certificate calls over `wss://` and pins the server's Noise key
/// as over `ws://`; one trusting another certificate, a plain `ws://` one, and a `wss://`
/// one without TLS settings are refused.
async fn calls_go_over_wss(addr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = make_cert(dir.path(), "a");
    let (_, _, other) = make_cert(dir.path(), "b");
    let certificates = Certificates::load(&cert, &key).unwrap();
    let (server, url) = tls_server(addr, &certificates).await;

    let client = zserver::client()
        .tls_config(trusting(&der))
        .pin_server_key(server.public_key())
        .connect_ws(&url)
        .await
        .expect("wss connect");
    assert_eq!(
        client.console("echo", "over tls").await.unwrap(),
        "over tls"
    );

    let untrusted = wss_client(&url, &other).await;
    assert!(untrusted.is_err(), "an untrusted certificate was taken");
    let plain = zserver::client()
        .connect_timeout(Duration::from_secs(5))
        .connect_ws(&url.replacen("wss", "ws", 1))
        .await;
    assert!(plain.is_err(), "plain ws:// reached a TLS port");
    let bare = zserver::client().connect_ws(&url).await;
    let message = bare.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("tls_config"), "{message}");

    assert_eq!(client.console("echo", "still").await.unwrap(), "still");
    shutdown(&server).await;
}
both!(calls_go_over_wss);

/// After the files are replaced and reloaded, a new connection gets the new certificate
/// (a client trusting only the old one is refused) and the connection opened before
/// stays up.
async fn a_reload_swaps_the_certificate(addr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, old) = make_cert(dir.path(), "live");
    let certificates = Certificates::load(&cert, &key).unwrap();
    let (server, url) = tls_server(addr, &certificates).await;
    let before = wss_client(&url, &old).await.expect("connect before");
    assert_eq!(before.console("echo", "1").await.unwrap(), "1");

    let (new_cert, new_key, new) = make_cert(dir.path(), "next");
    std::fs::rename(new_cert, &cert).unwrap();
    std::fs::rename(new_key, &key).unwrap();
    assert_eq!(
        certificates.certificate(),
        old,
        "nothing changes before reload"
    );
    certificates.reload().expect("reload");
    assert_eq!(certificates.certificate(), new);

    let after = wss_client(&url, &new).await.expect("the new certificate");
    assert_eq!(after.console("echo", "2").await.unwrap(), "2");
    assert!(
        wss_client(&url, &old).await.is_err(),
        "the old one is still served"
    );
    assert_eq!(before.console("echo", "3").await.unwrap(), "3");
    assert_eq!(server.connection_count(), 2);
    shutdown(&server).await;
}
both!(a_reload_swaps_the_certificate);

/// Missing files, files without PEM blocks of the right kind and a key of another
/// certificate are refused with the file's name; a failed reload keeps the certificate.
#[test]
fn bad_pem_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = make_cert(dir.path(), "good");
    let (_, other_key, _) = make_cert(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello, not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");

    let error = |cert: &Path, key: &Path| match Certificates::load(cert, key) {
        Ok(_) => panic!("{} and {} were taken", cert.display(), key.display()),
        Err(e) => (e.to_string(), e),
    };
    let (text, e) = error(&missing, &key);
    assert!(matches!(e, TlsError::Read { .. }), "{e:?}");
    assert!(
        text.contains("certificate file") && text.contains("missing.pem"),
        "{text}"
    );
    let (text, e) = error(&garbage, &key);
    assert!(matches!(e, TlsError::BadPem { .. }), "{e:?}");
    assert!(
        text.contains("garbage.pem") && text.contains("BEGIN CERTIFICATE"),
        "{text}"
    );
    let (text, e) = error(&cert, &missing);
    assert!(
        text.contains("private key file") && text.contains("missing.pem"),
        "{e:?}"
    );
    // A certificate where the key should be: PEM, but no key in it.
    let (text, e) = error(&cert, &cert);
    assert!(matches!(e, TlsError::BadPem { .. }), "{e:?}");
    assert!(
        text.contains("good.pem") && text.contains("PRIVATE KEY"),
        "{text}"
    );
    let (text, e) = error(&cert, &other_key);
    assert!(matches!(e, TlsError::BadKey { .. }), "{e:?}");
    assert!(
        text.contains("other.key") && text.contains("does not belong"),
        "{text}"
    );

    let certificates = Certificates::load(&cert, &key).unwrap();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let failed = certificates.reload();
    assert!(matches!(failed, Err(TlsError::BadPem { .. })), "{failed:?}");
    assert_eq!(
        certificates.certificate(),
        der,
        "a failed reload keeps the old one"
    );
}
