//! ZServer4D's login server ("double tunnel") on one encrypted zserver connection that
//! carries calls both ways: accounts in an embedded SQLite store (argon2 password hashes),
//! sessions bound to connections, a per-user file store with quotas, push to one user, a
//! list or everyone online, durable offline messages, and rate-limited logins.
//!
//! Several nodes can run as one service ([`LoginConfig::cluster`], [`cluster`]): presence,
//! push and kicks go through NATS, and accounts and offline messages live in PostgreSQL
//! ([`LoginConfig::store`], [`PostgresStorage`]), the other implementation of the same
//! [`Storage`] trait. `docs/CLUSTER.md` in the repository describes the topology.
//!
//! ```no_run
//! # async fn demo() -> Result<(), zserver::Error> {
//! use zserver_login::{LoginClient, LoginConfig, LoginServer};
//! let transport = zserver::default_transport();
//! let server = LoginServer::start(transport.clone(), "127.0.0.1:7100".parse().unwrap(),
//!     LoginConfig::new("zserver-data")).await?;
//! let client = LoginClient::connect(transport, server.local_addr(), Some(&server.fingerprint())).await?;
//! client.register("ann", "secret").await?;
//! let offline = client.login("ann", "secret").await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod cluster;
pub mod error;
pub mod metrics;
mod own_runtime;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tokens;

pub use client::{Downloaded, LoginClient, Uploaded};
pub use cluster::{ClusterConfig, NodeInfo, SessionInfo};
pub use error::LoginError;
pub use metrics::{LoginMetrics, LoginOutcome};
pub use protocol::Event;
pub use server::{
    check_file_name, Admin, AdminError, ChannelNamespace, HashingStats, LoginConfig, LoginServer,
    ReloadReport, ServerInfo, WhenFull, PRIVATE_PREFIX,
};
pub use store::{PasswordParams, PostgresStorage, SqliteStorage, Storage, Store, StoreError};
pub use tokens::{TokenClaims, TokenConfig, TokenKey};

/// Locks `m`, recovering it if a panicking thread poisoned it (the guarded state stays
/// usable: every update to it is a single step).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
