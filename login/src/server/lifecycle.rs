//! [`LoginServer`]: starting, inspecting and stopping a login server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use zserver::rate::RateLimiter;
use zserver::{Error, Server, ServerBuilder, Transport};

use super::accounts;
use super::handlers::router;
use super::hashing::{HashPool, HashingStats, PoolLimits};
use super::limiter::Limiter;
use super::sessions::Sessions;
use super::{store_err, LoginConfig, ReloadReport, State};
use crate::cluster::{Cluster, LocalSessions, NodeId};
use crate::metrics::LoginMetrics;
use crate::store::{Store, StoreError};

/// A running login server.
pub struct LoginServer {
    server: Server,
    state: Arc<State>,
    ws_addr: Option<SocketAddr>,
    rate: RateLimiter,
}

impl LoginServer {
    /// Opens the store `config.store` names (creating the data directory), loads or creates
    /// the server key (`server.key` in the data directory), and listens on `addr`.
    pub async fn start(
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
        config: LoginConfig,
    ) -> Result<Self, Error> {
        let (dir, spec) = (config.data_dir.clone(), config.store.clone());
        let store = blocking::unblock(move || Store::open_spec(&spec, &dir))
            .await
            .map_err(store_err)?;
        Self::start_with_store(transport, addr, config, store).await
    }

    /// Like [`start`](Self::start), with a store the caller opened (over any
    /// [`Storage`](crate::store::Storage) back end); `config.store` is not used, and
    /// `config.password` replaces the store's hashing parameters.
    ///
    /// ```no_run
    /// # async fn demo(transport: std::sync::Arc<dyn zserver::Transport>) -> Result<(), zserver::Error> {
    /// use zserver_login::{store::Store, LoginConfig, LoginServer};
    ///
    /// let config = LoginConfig::new("/var/lib/zserver");
    /// let store = Store::open(&config.data_dir).expect("store opens");
    /// let server =
    ///     LoginServer::start_with_store(transport, "127.0.0.1:9000".parse().unwrap(), config, store)
    ///         .await?;
    /// # Ok(()) }
    /// ```
    pub async fn start_with_store(
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
        config: LoginConfig,
        store: Store,
    ) -> Result<Self, Error> {
        let params = config.password;
        let store = blocking::unblock(move || store.with_password_params(params))
            .await
            .map_err(store_err)?;
        let cluster = match &config.cluster {
            Some(cluster) => {
                if store.backend_name() != "postgres" {
                    return Err(Error::msg(
                        "a cluster needs a store all its nodes share: a postgres:// URL, \
                         not the embedded one",
                    ));
                }
                Some(Arc::new(Cluster::connect(cluster.clone()).await?))
            }
            None => None,
        };
        let files = config.data_dir.join("files");
        let dir = files.clone();
        blocking::unblock(move || std::fs::create_dir_all(dir)).await?;
        let store = Arc::new(store);
        let history: Arc<dyn zserver::channels::HistoryStore> = store.clone();
        let mut channels = zserver::channels::Channels::new().store(history);
        let bridge = cluster.as_ref().map(|cluster| cluster.channel_bridge());
        if let Some(bridge) = &bridge {
            channels = channels.relay(bridge.clone());
        }
        let channels = config
            .channels
            .iter()
            .fold(channels, |ch, ns| ch.namespace(ns.namespace()));
        let tokens = config
            .tokens
            .as_ref()
            .map(crate::tokens::Verifier::new)
            .transpose()?
            .map(Arc::new);
        let instance = match &cluster {
            Some(cluster) => cluster.node(),
            None => {
                use argon2::password_hash::rand_core::{OsRng, RngCore};
                OsRng.next_u64()
            }
        };
        // Changes made before the start end no session of this server (it has none).
        let watched = store.clone();
        let after = blocking::unblock(move || watched.last_account_change())
            .await
            .map_err(store_err)?;
        let state = Arc::new(State {
            tokens: RwLock::new(tokens),
            runtime: transport.runtime(),
            instance,
            closing: AtomicBool::new(false),
            look: async_channel::bounded(1),
            cluster,
            channels: channels.clone(),
            store,
            files,
            sessions: Mutex::new(Sessions::default()),
            limiter: Mutex::new(Limiter::failed_logins(&config)),
            registrations: Mutex::new(Limiter::registrations(&config)),
            hashing: HashPool::new(PoolLimits {
                concurrency: config.hash_concurrency,
                queue: config.hash_queue,
                per_address: config.hash_per_address,
            }),
            config: RwLock::new(Arc::new(config.clone())),
            metrics: Arc::default(),
            server: Mutex::new(None),
            rates: Mutex::default(),
            started: std::time::Instant::now(),
        });
        let mut routes = router(state.clone());
        if config.observe_calls {
            routes = routes.on_complete(state.metrics.calls().hook());
        }
        let rate = RateLimiter::new(config.rate_limits());
        let server = ServerBuilder::new(transport)
            .key_file(config.data_dir.join("server.key"))?
            .config(config.connection.clone())
            .rate_limits(rate.clone())
            .router(routes)
            .channels(channels)
            .bind(addr)
            .await?;
        *crate::lock(&state.server) = Some(server.clone());
        let ws_addr = match config.ws_listen {
            Some(ws) => Some(server.listen_ws(ws, config.ws_options.clone()).await?),
            None => None,
        };
        if let Some(cluster) = &state.cluster {
            let local: Arc<dyn LocalSessions> = state.clone();
            cluster
                .start(Arc::downgrade(&local), config.max_sessions)
                .await?;
        }
        if let Some(bridge) = bridge {
            bridge.start(state.channels.clone()).await?;
        }
        accounts::watch(&state, after);
        Ok(Self {
            server,
            state,
            ws_addr,
            rate,
        })
    }

    /// The rate limits applied now, and what they refused
    /// ([`RateLimiter::refused`], [`RateLimiter::disconnected`]).
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The address it listens on for WebSocket connections, if it does.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The server key's fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> String {
        self.server.fingerprint()
    }

    /// What this server counted: logins, pushes, transfers, completed commands.
    pub fn metrics(&self) -> &Arc<LoginMetrics> {
        &self.state.metrics
    }

    /// Messages waiting in the store for their recipients' next login (all users; in a
    /// cluster, the shared store's). Blocking: a query to the store.
    pub fn stored_messages(&self) -> Result<u64, StoreError> {
        self.state.store.count_messages()
    }

    /// The underlying zserver server (connection counts, byte totals, shutdown state).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Users logged in now, sorted: on any node of the cluster if there is one.
    pub fn online(&self) -> Vec<String> {
        self.state.online()
    }

    /// What the password-hashing pool is doing, and the most hashes it ever ran at once.
    pub fn hashing(&self) -> HashingStats {
        self.state.hashing.stats()
    }

    /// This node's id in its cluster (`None` without one).
    pub fn node_id(&self) -> Option<NodeId> {
        self.state.cluster.as_ref().map(|c| c.node())
    }

    /// The other nodes of the cluster this node knows of now (empty without one).
    pub fn peers(&self) -> Vec<NodeId> {
        self.state
            .cluster
            .as_ref()
            .map_or(Vec::new(), |c| c.nodes())
    }

    /// The handle for operating this server from the app's own code, the server API and
    /// the admin page: publish, disconnect, push, users, figures (see [`Admin`](super::Admin)).
    pub fn admin(&self) -> super::Admin {
        super::Admin::new(self.state.clone())
    }

    /// Applies the settings of `config` that can change while serving (limits, channel
    /// namespaces, token keys, the WebSocket listener's certificate read again from its
    /// files) without dropping a connection, and reports those it could not (a restart
    /// applies them: the data directory, the store, the listeners, ...). `config` is the
    /// whole new configuration, as [`start`](Self::start) would take it.
    pub fn reload(&self, config: &LoginConfig) -> ReloadReport {
        let report = super::reload::reload(&self.state, config);
        // The rate limits (`[limits.rate]` and the namespaces' publication limits) are the
        // server's, not the state's: set from the configuration now in force (unchanged
        // rules keep their buckets, so setting the same limits again changes nothing).
        self.rate.set(self.state.config().rate_limits());
        report
    }

    /// Stops gracefully (and tells the cluster this node leaves).
    pub async fn shutdown(&self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.server.shutdown().await;
        crate::lock(&self.state.server).take();
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
    }
}
