//! How the login server behaves: [`LoginConfig`].

use std::path::PathBuf;
use std::time::Duration;

use zserver::rate::{RateLimit, RateLimits, Rule};

use super::tokens::granted;
use crate::cluster::ClusterConfig;
use crate::store::PasswordParams;
use crate::tokens::TokenConfig;

/// The first character of a private namespace's name (see [`ChannelNamespace`]).
pub const PRIVATE_PREFIX: char = '$';

/// What to do when a user who holds [`LoginConfig::max_sessions`] sessions logs in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// End the user's oldest session (its client gets a `kicked` event) and accept the new
    /// one.
    KickOldest,
    /// Refuse the new login while the other sessions last.
    Refuse,
}

/// How the login server behaves.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Where the database, the server key and the users' files live; created on first start.
    pub data_dir: PathBuf,
    /// Most bytes of files one user may store (partial uploads count).
    pub quota_bytes: u64,
    /// How long the part of an upload that broke off is kept for the client to resume it.
    pub keep_partial_uploads: Duration,
    /// Most sessions one user may hold at once (logged in on several devices), in the whole
    /// cluster; 1 for one session per user. Each gets the user's pushes.
    pub max_sessions: usize,
    /// A login past [`Self::max_sessions`].
    pub when_full: WhenFull,
    /// Failed password checks allowed per (address, account) within
    /// [`Self::attempt_window`]: the tight bound, so that one user's typos lock out that
    /// user from that address and no one else behind it. Only a wrong password counts (not
    /// a refusal as busy, nor a failed store); attempts in progress count as failures until
    /// they end, so a burst cannot get more guesses hashed than this.
    pub max_failed_logins: usize,
    /// Failed password checks allowed per address, over all accounts, within
    /// [`Self::attempt_window`]: the loose bound that stops credential stuffing from one
    /// address.
    pub max_failed_per_address: usize,
    /// Failed password checks allowed per account, from all addresses, within
    /// [`Self::attempt_window`]: bounds a guesser spread over many addresses. Above
    /// [`Self::max_failed_logins`], so that one address alone cannot lock an account out for
    /// its owner elsewhere.
    pub max_failed_per_account: usize,
    /// Registrations allowed per address within [`Self::attempt_window`]: each one that
    /// reached the password hash counts, whatever its outcome; one refused before (a bad or
    /// taken name, a bad password) does not.
    pub max_registrations: usize,
    /// The window failed logins and registrations are counted over.
    pub attempt_window: Duration,
    /// How often the server looks in the store for accounts deleted, or passwords changed,
    /// by someone else (`zserver user del`, another node): their sessions here then end.
    pub account_watch: Duration,
    /// Most password hashes computed at once (for `register`, `login`, `passwd`, `delete`).
    /// Each holds [`PasswordParams::memory_kib`] of memory while it runs, so this bounds
    /// hashing's memory: 2 × 19 MiB with the defaults on 2 cores.
    pub hash_concurrency: usize,
    /// Most attempts waiting for a hashing slot (served round-robin by address); an attempt
    /// finding the queue full is refused at once as busy
    /// ([`LoginError::Busy`](crate::LoginError::Busy)). Waiting attempts hold no hashing
    /// memory.
    pub hash_queue: usize,
    /// Most attempts in progress (hashing or waiting) from one address; more are refused as
    /// busy.
    pub hash_per_address: usize,
    /// Argon2id's parameters for new password hashes (stored ones keep theirs).
    pub password: PasswordParams,
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
    /// The channel namespaces logged-in users may subscribe and publish to (default: one,
    /// `chat`; see [`ChannelNamespace`]).
    pub channels: Vec<ChannelNamespace>,
    /// Accept signed tokens (JWT) with `login_token`, checked with this key (`None`: no
    /// token logins). See [`crate::tokens`].
    pub tokens: Option<TokenConfig>,
    /// Rate limits on the commands (per connection and per logged-in user, over all of
    /// the user's sessions on this node) and when a client that keeps going is
    /// disconnected (`[limits.rate]` in `zserver serve`'s config file). Its
    /// [`publications`](RateLimits::publications) come from each namespace's
    /// [`ChannelNamespace::publish_rate`] instead. Nothing limited by default;
    /// [`LoginServer::reload`](super::LoginServer::reload) (SIGHUP in `zserver serve`) replaces
    /// them while the server runs.
    pub rate: RateLimits,
}

/// One channel namespace of the login server (`[channels.NAME]` in `zserver serve`'s
/// config file): the channels `NAME:...`, open to logged-in users only. Publications carry
/// their author's user name; presence shows the users subscribed.
///
/// A namespace whose name starts with [`PRIVATE_PREFIX`] (`$`, such as `$team`) is private:
/// a connection subscribes and publishes only to the channels its login token granted in
/// its `channels` claim (`$team:red`, by full name), or a subscribe token (`channel_token`)
/// added; a password login alone gets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelNamespace {
    /// The namespace's name: channels are `NAME:anything`.
    pub name: String,
    /// Publications kept per channel for history and recovery (0: none).
    pub history: usize,
    /// How long a publication is kept (`None`: until pushed out by newer ones).
    pub history_ttl: Option<Duration>,
    /// Whether history is kept in the store (SQLite, or PostgreSQL in a cluster), so that
    /// recovery works after a restart; otherwise in memory.
    pub durable: bool,
    /// Whether subscribers may ask who is subscribed.
    pub presence: bool,
    /// Whether subscribers are told who joins and leaves.
    pub join_leave: bool,
    /// Whether users may publish (otherwise only the server's own code).
    pub client_publish: bool,
    /// The largest publication, in bytes.
    pub max_publication: usize,
    /// How fast one connection may publish here (`None`: no limit).
    pub publish_rate: Option<RateLimit>,
    /// How fast one user may publish here, over all of their sessions on this node
    /// (`None`: no limit).
    pub publish_rate_per_user: Option<RateLimit>,
}

impl ChannelNamespace {
    /// `NAME:` with 100 publications of durable history kept for a day, presence, join and
    /// leave events, users publishing, 64 KiB publications.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            history: 100,
            history_ttl: Some(Duration::from_secs(24 * 3600)),
            durable: true,
            presence: true,
            join_leave: true,
            client_publish: true,
            max_publication: zserver::channels::DEFAULT_MAX_PUBLICATION,
            publish_rate: None,
            publish_rate_per_user: None,
        }
    }

    /// The library's namespace for it: only identified (logged-in) users subscribe and
    /// publish.
    pub(crate) fn namespace(&self) -> zserver::channels::Namespace {
        let private = self.name.starts_with(PRIVATE_PREFIX);
        let logged_in =
            move |conn: &zserver::Connection, who: &zserver::channels::Identity, channel: &str| {
                if who.user.is_empty() {
                    Err(zserver::Error::Denied(format!("log in to use `{channel}`")))
                } else if private && !granted(conn, channel) {
                    Err(zserver::Error::Denied(format!(
                        "`{channel}` is private: your login token does not grant it"
                    )))
                } else {
                    Ok(())
                }
            };
        zserver::channels::Namespace::new(format!("{}:", self.name))
            .history(self.history, self.history_ttl)
            .durable(self.durable)
            .presence(self.presence)
            .join_leave(self.join_leave)
            .client_publish(self.client_publish)
            .max_publication(self.max_publication)
            .subscribe_if(logged_in)
            .publish_if(logged_in)
    }
}

impl LoginConfig {
    /// The rate limits the server applies: [`Self::rate`] with each namespace's
    /// publication limits.
    pub fn rate_limits(&self) -> RateLimits {
        self.channels.iter().fold(self.rate.clone(), |limits, ns| {
            let rule = Rule {
                per_connection: ns.publish_rate,
                per_user: ns.publish_rate_per_user,
            };
            match rule.is_empty() {
                true => limits,
                false => limits.publications(format!("{}:", ns.name), rule),
            }
        })
    }

    /// Defaults with data under `data_dir`: 1 GiB per user, partial uploads kept a day, 8
    /// sessions per user (a ninth login kicks the oldest), failed logins per minute: 5 per
    /// (address, account), 50 per address, 20 per account; 10 registrations per minute per
    /// address, the store watched for account changes every second, as many hashes at once as there are cores
    /// with 64 more waiting and 4 in progress per address, Argon2id at 19 MiB and 2 passes,
    /// the embedded store, no cluster, no token logins.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            quota_bytes: 1 << 30,
            keep_partial_uploads: Duration::from_secs(24 * 3600),
            max_sessions: 8,
            when_full: WhenFull::KickOldest,
            max_failed_logins: 5,
            max_failed_per_address: 50,
            max_failed_per_account: 20,
            max_registrations: 10,
            attempt_window: Duration::from_secs(60),
            account_watch: Duration::from_secs(1),
            hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            hash_queue: 64,
            hash_per_address: 4,
            password: PasswordParams::default(),
            store: "embedded".into(),
            cluster: None,
            connection: zserver::Config::default(),
            observe_calls: false,
            ws_listen: None,
            ws_options: zserver::WsOptions::new(),
            channels: vec![ChannelNamespace::new("chat")],
            tokens: None,
            rate: RateLimits::default(),
        }
    }
}
