//! TLS for WebSocket listeners (`wss://`) and clients, on rustls with ring's crypto over
//! futures-io (no runtime of its own).
//!
//! [`Certificates`] holds a certificate chain and its private key loaded from PEM files.
//! [`Certificates::reload`] reads the files again and swaps the certificate for every
//! handshake that starts afterwards; connections already open keep theirs. Any listener
//! can use it: [`WsOptions::tls`](crate::ws::WsOptions::tls) for zserver's own
//! WebSocket listener, [`Certificates::server_config`] for another (a `tokio-rustls` or
//! `axum-server` acceptor takes the `Arc<rustls::ServerConfig>`, which follows reloads).
//!
//! TLS only wraps the WebSocket: the protocol's Noise handshake and records run inside
//! it unchanged, so a client still pins the server's Noise key.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::transport::{BoxRead, BoxWrite};
use crate::ws::Duplex;

pub use futures_rustls;
pub use rustls;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not PEM, or has no block of the kind needed.
    #[error("{}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The key is not one rustls can sign with, or does not belong to the certificate.
    #[error("{}: {reason}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
}

/// A certificate chain and private key from PEM files, swappable while serving.
/// Cloning gives another handle on the same certificate (a reload through one is seen by
/// all).
#[derive(Clone)]
pub struct Certificates {
    inner: Arc<Inner>,
}

struct Inner {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    /// Offers `http/1.1` by ALPN (WebSocket upgrades are HTTP/1.1 requests).
    config: Arc<rustls::ServerConfig>,
}

/// Gives every handshake the certificate current when it starts.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Certificates {
    /// Loads the certificate chain in `cert` (PEM `CERTIFICATE` blocks, the server's own
    /// first) and the private key in `key` (PEM PKCS#8, PKCS#1 or SEC1). Fails with a
    /// message naming the file if either is missing, not PEM, or the key does not match.
    pub fn load(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_pair(&provider, &cert_path, &key_path)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let config = server_config(&provider, &resolver, vec![b"http/1.1".to_vec()]);
        Ok(Self {
            inner: Arc::new(Inner {
                cert_path,
                key_path,
                provider,
                resolver,
                config,
            }),
        })
    }

    /// Reads both files again and, if they load, serves the new certificate to every
    /// handshake from now on (open connections keep theirs). On an error the old
    /// certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let i = &self.inner;
        let certified = load_pair(&i.provider, &i.cert_path, &i.key_path)?;
        *i.resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// The server configuration for a listener (ALPN `http/1.1`): it always serves the
    /// current certificate, so a listener built from it once follows every reload.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.inner.config.clone()
    }

    /// Like [`server_config`](Self::server_config), offering these ALPN protocols
    /// (such as `h2` and `http/1.1` for an HTTP API listener).
    pub fn server_config_with_alpn(&self, alpn: Vec<Vec<u8>>) -> Arc<rustls::ServerConfig> {
        server_config(&self.inner.provider, &self.inner.resolver, alpn)
    }

    /// An acceptor over futures-io streams for [`server_config`](Self::server_config).
    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.server_config())
    }

    /// The certificate served now (the chain's first), DER-encoded.
    pub fn certificate(&self) -> CertificateDer<'static> {
        let current = self.inner.resolver.current.read();
        current.unwrap_or_else(|e| e.into_inner()).cert[0].clone()
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.inner.cert_path
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.inner.key_path
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.inner.cert_path)
            .field("key", &self.inner.key_path)
            .finish()
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<Resolver>,
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring's provider supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = alpn;
    Arc::new(config)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let bad_pem = |path: &Path, reason: String| TlsError::BadPem {
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read("certificate", cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(cert_path, format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        let reason = "no `-----BEGIN CERTIFICATE-----` block (expected a PEM certificate chain)";
        return Err(bad_pem(cert_path, reason.into()));
    }
    let key_pem = read("private key", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no `-----BEGIN PRIVATE KEY-----` block (expected a PEM PKCS#8, RSA or EC key)"
                    .to_string()
            }
            e => format!("not a PEM private key file ({e})"),
        };
        bad_pem(key_path, reason)
    })?;
    let bad_key = |reason: String| TlsError::BadKey {
        path: key_path.to_path_buf(),
        reason,
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(format!("unusable private key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(bad_key(format!(
            "does not belong to the certificate in {} ({e})",
            cert_path.display()
        ))),
    }
}

/// Runs the server side of a TLS handshake on an accepted connection's halves and
/// returns the halves of the decrypted stream.
pub(crate) async fn accept(
    certificates: &Certificates,
    read: BoxRead,
    write: BoxWrite,
) -> io::Result<(BoxRead, BoxWrite)> {
    let stream = certificates
        .acceptor()
        .accept(Duplex::new(Vec::new(), read, write))
        .await?;
    let (read, write) = futures_lite::io::split(stream);
    Ok((Box::new(read), Box::new(write)))
}

/// Runs the client side of a TLS handshake with `server_name` (a DNS name or an IP
/// address) on a connection's halves and returns the halves of the decrypted stream.
pub(crate) async fn connect(
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    read: BoxRead,
    write: BoxWrite,
) -> io::Result<(BoxRead, BoxWrite)> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = futures_rustls::TlsConnector::from(config)
        .connect(name, Duplex::new(Vec::new(), read, write))
        .await?;
    let (read, write) = futures_lite::io::split(stream);
    Ok((Box::new(read), Box::new(write)))
}
