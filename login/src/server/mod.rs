//! The login server: accounts in the embedded [`Store`], sessions bound to connections,
//! per-user files under the data directory, push and offline messages, rate-limited logins.
//!
//! One module per concern: [`LoginConfig`] (config), sessions, account changes made
//! elsewhere, the failed-login limiter, push, the users' files, the command handlers, and the
//! server's lifecycle ([`LoginServer`]).

mod accounts;
mod admin;
mod admin_node;
mod config;
mod files;
mod handlers;
mod hashing;
mod lifecycle;
mod limiter;
mod partials;
mod passwords;
mod push;
mod reload;
mod sessions;
mod tokens;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use zserver::{Error, Runtime};

use crate::cluster::Cluster;
use crate::metrics::LoginMetrics;
use crate::store::{Store, StoreError};

pub use admin::{
    Admin, AdminError, ServerInfo, DISCONNECTED, MAX_BROADCAST, MAX_HISTORY, MAX_PUSH_USERS,
    SERVER_SENDER, UNSUBSCRIBED,
};
pub use config::{ChannelNamespace, LoginConfig, WhenFull, PRIVATE_PREFIX};
pub use files::check_file_name;
use hashing::HashPool;
pub use hashing::HashingStats;
pub use lifecycle::LoginServer;
use limiter::Limiter;
pub use reload::ReloadReport;
use sessions::Sessions;

struct State {
    runtime: Arc<dyn Runtime>,
    /// This server's id in the session tags of account changes: its cluster node id, or a
    /// random one alone.
    instance: u64,
    /// Set when the server shuts down: the store is no longer watched.
    closing: AtomicBool,
    /// Asks the store's watcher to look now (an account changed: here, or on another node).
    look: (async_channel::Sender<()>, async_channel::Receiver<()>),
    store: Arc<Store>,
    files: PathBuf,
    /// The settings in force: replaced whole by a reload ([`reload`]).
    config: RwLock<Arc<LoginConfig>>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<Limiter>,
    /// Registrations per address.
    registrations: Mutex<Limiter>,
    /// Where every password hash runs: bounded, fair between addresses.
    hashing: HashPool,
    cluster: Option<Arc<Cluster>>,
    metrics: Arc<LoginMetrics>,
    /// The server's channels (identities are set at login).
    channels: zserver::channels::Channels,
    /// Checks login tokens, if the server takes them.
    tokens: RwLock<Option<Arc<crate::tokens::Verifier>>>,
    /// The zserver server, once it listens (connection counts for the server API); taken
    /// out at shutdown.
    server: Mutex<Option<zserver::Server>>,
    /// Recent samples of the counters, for the rates the server API shows.
    rates: Mutex<admin_node::Rates>,
    /// When the server started.
    started: std::time::Instant,
}

impl State {
    /// The settings in force now.
    fn config(&self) -> Arc<LoginConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The login token verifier in force now, if the server takes tokens.
    fn verifier(&self) -> Option<Arc<crate::tokens::Verifier>> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn store_err(e: StoreError) -> Error {
    Error::msg(e.to_string())
}

/// Runs a blocking store operation off the runtime's threads.
async fn db<T: Send + 'static>(
    state: &Arc<State>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Error> {
    let store = state.store.clone();
    blocking::unblock(move || f(&store))
        .await
        .map_err(store_err)
}
