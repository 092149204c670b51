//! How the login server behaves: [`LoginConfig`].

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::ClusterConfig;

/// What to do when a user who is logged in logs in again on another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondLogin {
    /// End the old session (its client gets a `kicked` event) and accept the new one.
    KickOld,
    /// Refuse the new login while the old session lasts.
    Refuse,
}

/// How the login server behaves.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Where the database, the server key and the users' files live; created on first start.
    pub data_dir: PathBuf,
    /// Most bytes of files one user may store.
    pub quota_bytes: u64,
    /// A second login of the same user.
    pub second_login: SecondLogin,
    /// Failed logins allowed per address and per account within [`Self::attempt_window`].
    pub max_failed_logins: usize,
    /// The window failed logins are counted over.
    pub attempt_window: Duration,
    /// Where accounts and offline messages live: `embedded` (SQLite in the data directory)
    /// or a `postgres://` URL (required with [`Self::cluster`]).
    pub store: String,
    /// Join a cluster of nodes sharing presence through NATS; `None` runs one node alone.
    pub cluster: Option<ClusterConfig>,
    /// Settings of every client connection (payload compression, limits, time-outs).
    pub connection: zserver::Config,
    /// Record every command's outcome and duration in [`LoginServer::metrics`] (an
    /// `on_complete` hook; off by default, when it costs nothing).
    ///
    /// [`LoginServer::metrics`]: super::LoginServer::metrics
    pub observe_calls: bool,
    /// Also listen for WebSocket connections (browsers) here, with the same sessions.
    pub ws_listen: Option<std::net::SocketAddr>,
    /// The WebSocket listener's allowed origins and web root.
    pub ws_options: zserver::WsOptions,
}

impl LoginConfig {
    /// Defaults with data under `data_dir`: 1 GiB per user, a second login kicks the first,
    /// 5 failed logins per minute per address and per account, the embedded store, no cluster.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            quota_bytes: 1 << 30,
            second_login: SecondLogin::KickOld,
            max_failed_logins: 5,
            attempt_window: Duration::from_secs(60),
            store: "embedded".into(),
            cluster: None,
            connection: zserver::Config::default(),
            observe_calls: false,
            ws_listen: None,
            ws_options: zserver::WsOptions::new(),
        }
    }
}
