//! Several login-server nodes as one service: presence, push and kicks shared through NATS.
//!
//! Each node connects to a NATS server and talks on subjects under the cluster's name
//! (`zserver` by default):
//!
//! | subject | what |
//! | --- | --- |
//! | `NAME.presence` | every node's [`Announce`]ments: logins, logouts, heartbeats, leaving |
//! | `NAME.node.ID.snapshot` | request [`SnapshotRequest`] → a page of the node's snapshot (postcard `Option<SnapshotPage>`) |
//! | `NAME.node.ID.deliver` | request `Vec<`[`Deliver`]`>` → for each, the users it reached (postcard `Vec<Vec<String>>`) |
//! | `NAME.stored` | users messages were just stored for (postcard `Vec<String>`) |
//! | `NAME.failed` | a failed login's rate-limit keys ([`FailedLogin`]), counted by every node |
//!
//! The NATS client runs on a small tokio runtime of its own, so a node on any of zserver's
//! back ends can join. Accounts and offline messages are not here: clustered nodes share a
//! PostgreSQL store. See `docs/CLUSTER.md` for the topology and what fails how.

mod outbound;
pub mod presence;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};
use zserver::{Connection, Error};

use crate::lock;
use crate::store::now_unix_ms;

use presence::{Action, LocalPresence, RemoteView, SnapshotCache, SnapshotPage, SnapshotRequest};
pub use presence::{Announce, NodeId, Snapshot};

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`. A user name and password
    /// (`nats://user:password@host:port`) or a token (`nats://token@host:port`) in it are
    /// sent to the server, percent-decoded; `tls://` requires TLS.
    pub nats_url: String,
    /// The cluster's name: the prefix of its NATS subjects, so clusters can share a NATS
    /// server. 1 to 64 characters of `a-z`, `A-Z`, `0-9`, `_`, `-`.
    pub name: String,
    /// How often a node says it is alive.
    pub heartbeat: Duration,
    /// A node not heard from for this long is dropped, with its users.
    pub node_timeout: Duration,
    /// How long a request to another node (a push, a snapshot) may take.
    pub request_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults: cluster `zserver`, a heartbeat every second, nodes dropped after 3 s of
    /// silence, requests to other nodes given 2 s.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            name: "zserver".into(),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
        }
    }

    /// [`Self::nats_url`] with any user name, password or token replaced by `***`, for logs
    /// and error messages.
    pub fn nats_url_redacted(&self) -> String {
        match self.nats_url.parse::<async_nats::ServerAddr>() {
            Ok(addr) if addr.has_user_pass() => {
                let mut url = addr.into_inner();
                // Both only fail for URLs that cannot have credentials at all.
                let _ = url.set_password(None);
                let _ = url.set_username("***");
                url.to_string()
            }
            Ok(_) => self.nats_url.clone(),
            // Unparsable: keep only what follows the last `@`, if any.
            Err(_) => match self.nats_url.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => self.nats_url.clone(),
            },
        }
    }

    /// The server's address and the connect options carrying the URL's credentials (the
    /// NATS client does not take them from the URL itself).
    fn connect_options(
        &self,
    ) -> Result<(async_nats::ServerAddr, async_nats::ConnectOptions), Error> {
        let addr: async_nats::ServerAddr = self
            .nats_url
            .parse()
            .map_err(|e| Error::msg(format!("bad NATS URL {}: {e}", self.nats_url_redacted())))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let options = async_nats::ConnectOptions::new();
        let options = match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => {
                options.user_and_password(decode(user), decode(password))
            }
            (Some(token), None) => options.token(decode(token)),
            _ => options,
        };
        Ok((addr, options))
    }

    fn check(&self) -> Result<(), Error> {
        let ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !ok {
            return Err(Error::msg(format!(
                "bad cluster name `{}`: 1 to 64 characters of a-z, A-Z, 0-9, `_`, `-`",
                self.name
            )));
        }
        if self.heartbeat.is_zero() || self.node_timeout <= self.heartbeat {
            return Err(Error::msg(
                "the cluster's node time-out must be longer than its heartbeat",
            ));
        }
        Ok(())
    }
}

/// A push to users on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deliver {
    /// The sender.
    pub from: String,
    /// The recipients, all logged in on the node asked (as far as the sender knows).
    pub users: Vec<String>,
    /// The text.
    pub text: String,
}

/// A failed login on one node, which every other node counts towards its own limits (so a
/// guesser gains nothing by spreading attempts over the nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedLogin {
    /// The node it failed on (which counted it already).
    pub node: NodeId,
    /// The limiter's keys it counts against (the address's and the account's).
    pub keys: Vec<String>,
}

/// Most user names in one notice on `NAME.stored`.
const STORED_NOTICE: usize = 4096;

/// Most keys one [`FailedLogin`] may carry; a notice with more is ignored.
const MAX_FAILED_KEYS: usize = 4;
/// Longest key in a [`FailedLogin`], in bytes; a notice with a longer one is ignored.
const MAX_FAILED_KEY_LEN: usize = 128;

/// A boxed future the cluster can run on its runtime.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the cluster needs from the local login server.
pub(crate) trait LocalSessions: Send + Sync + 'static {
    /// Sends each push to those of its users logged in here; for each push, the ones reached.
    /// The whole batch must be answered well within the sender's request time-out.
    fn deliver_local(&self, pushes: Vec<Deliver>) -> BoxFuture<Vec<Vec<String>>>;
    /// Ends `user`'s session on `connection` (a newer login elsewhere won).
    fn kick(&self, user: String, connection: u64) -> BoxFuture<()>;
    /// Messages were stored for `users`: for each of them logged in here, a future that takes
    /// their messages from the store and delivers them now (one look at the sessions for all).
    fn collect(&self, users: Vec<String>) -> Vec<BoxFuture<()>>;
    /// A login failed on another node: count it against these limiter keys here too.
    fn count_failure(&self, keys: Vec<String>);
}

enum Command {
    Online {
        user: String,
        connection: Connection,
    },
    Offline {
        user: String,
        connection: u64,
    },
    Leave(async_channel::Sender<()>),
}

struct Subjects {
    presence: String,
    prefix: String,
}

impl Subjects {
    fn snapshot(&self, node: NodeId) -> String {
        format!("{}.node.{node:016x}.snapshot", self.prefix)
    }
    fn deliver(&self, node: NodeId) -> String {
        format!("{}.node.{node:016x}.deliver", self.prefix)
    }
    fn stored(&self) -> String {
        format!("{}.stored", self.prefix)
    }
    fn failed(&self) -> String {
        format!("{}.failed", self.prefix)
    }
}

/// This node's membership of a cluster.
pub(crate) struct Cluster {
    node: NodeId,
    config: ClusterConfig,
    /// Kept for its threads; `handle` is how work reaches it.
    _runtime: OwnedRuntime,
    handle: tokio::runtime::Handle,
    nats: async_nats::Client,
    subjects: Arc<Subjects>,
    view: Arc<Mutex<RemoteView>>,
    outbound: Arc<outbound::Outbound>,
    commands: async_channel::Sender<Command>,
    inbox: async_channel::Receiver<Command>,
}

fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    postcard::to_stdvec(value)
        .map(bytes::Bytes::from)
        .unwrap_or_default()
}

impl Cluster {
    /// Connects to NATS (failing within 5 s if it cannot be reached); call [`Self::start`]
    /// once the local server exists.
    pub(crate) async fn connect(config: ClusterConfig) -> Result<Self, Error> {
        config.check()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("zserver-cluster")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let runtime = OwnedRuntime(Some(runtime));
        let node = {
            use argon2::password_hash::rand_core::{OsRng, RngCore};
            OsRng.next_u64()
        };
        let (addr, options) = config.connect_options()?;
        let name = format!("zserver-{}-{node:016x}", config.name);
        let nats = handle
            .spawn(async move {
                options
                    .name(name)
                    .connection_timeout(Duration::from_secs(5))
                    .connect(addr)
                    .await
            })
            .await
            .map_err(|e| Error::msg(format!("cluster runtime failed: {e}")))?
            .map_err(|e| {
                let url = config.nats_url_redacted();
                Error::msg(format!("cannot reach NATS at {url}: {e}"))
            })?;
        let (commands, inbox) = async_channel::unbounded();
        let subjects = Arc::new(Subjects {
            presence: format!("{}.presence", config.name),
            prefix: config.name.clone(),
        });
        let outbound =
            outbound::Outbound::new(nats.clone(), subjects.clone(), config.request_timeout);
        Ok(Self {
            node,
            subjects,
            outbound: Arc::new(outbound),
            view: Arc::new(Mutex::new(RemoteView::new(node, config.node_timeout))),
            config,
            _runtime: runtime,
            handle,
            nats,
            commands,
            inbox,
        })
    }

    /// Subscribes and starts announcing; `local` answers pushes and kicks from other nodes.
    pub(crate) async fn start(&self, local: Weak<dyn LocalSessions>) -> Result<(), Error> {
        let nats = self.nats.clone();
        let subjects = self.subjects.clone();
        let me = self.node;
        let subscribed = self
            .handle
            .spawn(async move {
                let subscriptions = Subscriptions {
                    presence: nats.subscribe(subjects.presence.clone()).await?,
                    snapshot_asks: nats.subscribe(subjects.snapshot(me)).await?,
                    deliver_asks: nats.subscribe(subjects.deliver(me)).await?,
                    stored: nats.subscribe(subjects.stored()).await?,
                    failed: nats.subscribe(subjects.failed()).await?,
                };
                nats.flush().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(subscriptions)
            })
            .await
            .map_err(|e| Error::msg(format!("cluster runtime failed: {e}")))?
            .map_err(|e| Error::msg(format!("cannot subscribe on NATS: {e}")))?;
        let actor = Actor {
            local: LocalPresence::new(me),
            snapshots: SnapshotCache::new(self.config.request_timeout * 5),
            view: self.view.clone(),
            nats: self.nats.clone(),
            subjects: self.subjects.clone(),
            sessions: local,
            commands: self.commands.clone(),
            request_timeout: self.config.request_timeout,
        };
        self.handle
            .spawn(actor.run(self.inbox.clone(), subscribed, self.config.heartbeat));
        Ok(())
    }

    /// This node's id.
    pub(crate) fn node(&self) -> NodeId {
        self.node
    }

    /// `user` logged in here on `connection`: announce it, and announce the end of the
    /// session when the connection closes.
    pub(crate) fn online(&self, user: &str, connection: &Connection) {
        let _ = self.commands.try_send(Command::Online {
            user: user.to_owned(),
            connection: connection.clone(),
        });
    }

    /// `user`'s session on `connection` ended (a logout; closed connections are noticed).
    pub(crate) fn offline(&self, user: &str, connection: u64) {
        let _ = self.commands.try_send(Command::Offline {
            user: user.to_owned(),
            connection,
        });
    }

    /// The other node `user` is logged in on, if any.
    pub(crate) fn locate(&self, user: &str) -> Option<NodeId> {
        lock(&self.view).locate(user)
    }

    /// Users online on the other nodes.
    pub(crate) fn remote_users(&self) -> Vec<String> {
        lock(&self.view).users()
    }

    /// The other nodes known now.
    pub(crate) fn nodes(&self) -> Vec<NodeId> {
        lock(&self.view).nodes()
    }

    /// Asks each node to deliver its push to its users, all nodes at once; for each, the
    /// users it reached (none if the node did not answer in time).
    pub(crate) async fn deliver(&self, pushes: Vec<(NodeId, Deliver)>) -> Vec<Vec<String>> {
        let asked: Vec<Vec<_>> = pushes
            .into_iter()
            .map(|(node, push)| {
                outbound::split(push)
                    .into_iter()
                    .map(|part| self.outbound.push(&self.handle, node, part))
                    .collect()
            })
            .collect();
        let mut reached = Vec::with_capacity(asked.len());
        for parts in asked {
            let mut users = Vec::new();
            for answer in parts {
                users.extend(answer.await.unwrap_or_default());
            }
            reached.push(users);
        }
        reached
    }

    /// Tells every node (this one too) that messages were stored for `users`, so that a node
    /// where one of them logged in meanwhile delivers them at once.
    pub(crate) fn stored(&self, users: &[String]) {
        for payload in stored_notices(users) {
            self.publish_soon(self.subjects.stored(), payload, "stored messages");
        }
    }

    /// Tells the other nodes that a login failed here, so that they count it against `keys`
    /// too (best effort: while NATS is down each node counts its own).
    pub(crate) fn failed(&self, keys: Vec<String>) {
        let notice = FailedLogin {
            node: self.node,
            keys,
        };
        self.publish_soon(self.subjects.failed(), encode(&notice), "a failed login");
    }

    /// Publishes `payload` on `subject` from the cluster's runtime, without waiting for it
    /// (a failure is logged as "cannot announce `what`").
    fn publish_soon(&self, subject: String, payload: bytes::Bytes, what: &'static str) {
        let nats = self.nats.clone();
        self.handle.spawn(async move {
            if let Err(e) = nats.publish(subject, payload).await {
                tracing::warn!("cluster: cannot announce {what}: {e}");
            }
        });
    }

    /// Announces that this node leaves, and stops (waits at most 2 s for NATS).
    pub(crate) async fn leave(&self) {
        let (done, left) = async_channel::bounded(1);
        if self.commands.try_send(Command::Leave(done)).is_err() {
            return;
        }
        let _ = self
            .handle
            .spawn(async move { tokio::time::timeout(Duration::from_secs(2), left.recv()).await })
            .await;
    }
}

/// The `NAME.stored` notices for `users`: at most [`STORED_NOTICE`] names each (user names
/// are at most 32 bytes), so a push to very many users stays far below NATS's payload limit.
fn stored_notices(users: &[String]) -> Vec<bytes::Bytes> {
    users
        .chunks(STORED_NOTICE)
        .map(|chunk| encode(&chunk))
        .collect()
}

/// The cluster's own tokio runtime, shut down without blocking when dropped: it may be
/// dropped on another runtime's thread, where a blocking shutdown panics.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a node listens to.
struct Subscriptions {
    /// Every node's announcements.
    presence: async_nats::Subscriber,
    /// Requests for this node's snapshot.
    snapshot_asks: async_nats::Subscriber,
    /// Pushes for this node's users.
    deliver_asks: async_nats::Subscriber,
    /// Names of users something was just stored for.
    stored: async_nats::Subscriber,
    /// Failed logins on every node.
    failed: async_nats::Subscriber,
}

/// The task that owns this node's presence and its view of the others.
struct Actor {
    local: LocalPresence,
    snapshots: SnapshotCache,
    view: Arc<Mutex<RemoteView>>,
    nats: async_nats::Client,
    subjects: Arc<Subjects>,
    sessions: Weak<dyn LocalSessions>,
    commands: async_channel::Sender<Command>,
    request_timeout: Duration,
}

enum Input {
    Command(Command),
    Presence(async_nats::Message),
    SnapshotAsked(async_nats::Message),
    DeliverAsked(async_nats::Message),
    Stored(async_nats::Message),
    Failed(async_nats::Message),
    Snapshot(NodeId, Snapshot),
    Tick,
    Ended,
}

impl Actor {
    async fn run(
        mut self,
        inbox: async_channel::Receiver<Command>,
        mut subscriptions: Subscriptions,
        heartbeat: Duration,
    ) {
        let (snap_tx, snap_rx) = async_channel::unbounded::<(NodeId, Snapshot)>();
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = tokio::select! {
                c = inbox.recv() => c.map_or(Input::Ended, Input::Command),
                m = subscriptions.presence.next() => m.map_or(Input::Ended, Input::Presence),
                m = subscriptions.snapshot_asks.next() => m.map_or(Input::Ended, Input::SnapshotAsked),
                m = subscriptions.deliver_asks.next() => m.map_or(Input::Ended, Input::DeliverAsked),
                m = subscriptions.stored.next() => m.map_or(Input::Ended, Input::Stored),
                m = subscriptions.failed.next() => m.map_or(Input::Ended, Input::Failed),
                s = snap_rx.recv() => match s {
                    Ok((node, snap)) => Input::Snapshot(node, snap),
                    Err(_) => Input::Ended,
                },
                _ = tick.tick() => Input::Tick,
            };
            let now = Instant::now();
            let actions = match input {
                Input::Ended => {
                    tracing::error!("cluster: a NATS subscription ended; this node left presence");
                    break;
                }
                Input::Command(Command::Leave(done)) => {
                    self.publish(&Announce::Leaving {
                        node: self.local.node(),
                    })
                    .await;
                    let _ = self.nats.flush().await;
                    let _ = done.try_send(());
                    break;
                }
                Input::Command(Command::Online { user, connection }) => {
                    let at_ms = lock(&self.view).login_time(&user, now_unix_ms());
                    let announce = self.local.online(&user, connection.id(), at_ms);
                    self.publish(&announce).await;
                    let commands = self.commands.clone();
                    tokio::spawn(async move {
                        connection.closed().await;
                        let _ = commands
                            .send(Command::Offline {
                                user,
                                connection: connection.id(),
                            })
                            .await;
                    });
                    Vec::new()
                }
                Input::Command(Command::Offline { user, connection }) => {
                    if let Some(announce) = self.local.offline(&user, connection) {
                        self.publish(&announce).await;
                    }
                    Vec::new()
                }
                Input::Presence(message) => match postcard::from_bytes(&message.payload) {
                    Ok(announce) => lock(&self.view).on_announce(announce, now, &self.local),
                    Err(e) => {
                        tracing::warn!("cluster: undecodable presence message ignored: {e}");
                        Vec::new()
                    }
                },
                Input::SnapshotAsked(message) => {
                    let request = postcard::from_bytes::<SnapshotRequest>(&message.payload);
                    if let (Some(reply), Ok(request)) = (message.reply, request) {
                        let page = self.snapshots.page(&self.local, request, now);
                        if let Err(e) = self.nats.publish(reply, encode(&page)).await {
                            tracing::warn!("cluster: cannot answer a snapshot request: {e}");
                        }
                    }
                    Vec::new()
                }
                Input::DeliverAsked(message) => {
                    self.answer_delivery(message);
                    Vec::new()
                }
                Input::Stored(message) => {
                    self.collect_stored(&message.payload);
                    Vec::new()
                }
                Input::Failed(message) => {
                    self.count_failure(&message.payload);
                    Vec::new()
                }
                Input::Snapshot(node, snapshot) => {
                    lock(&self.view).on_snapshot(node, snapshot, now, &self.local)
                }
                Input::Tick => {
                    self.publish(&self.local.heartbeat()).await;
                    for node in lock(&self.view).expire(now) {
                        tracing::info!("cluster: node {node:016x} dropped (silent too long)");
                    }
                    Vec::new()
                }
            };
            for action in actions {
                self.act(action, &snap_tx);
            }
        }
    }

    async fn publish(&self, announce: &Announce) {
        if let Err(e) = self
            .nats
            .publish(self.subjects.presence.clone(), encode(announce))
            .await
        {
            tracing::warn!("cluster: cannot publish presence: {e}");
        }
    }

    fn act(&self, action: Action, snapshots: &async_channel::Sender<(NodeId, Snapshot)>) {
        match action {
            Action::Resync(node) => {
                let nats = self.nats.clone();
                let subject = self.subjects.snapshot(node);
                let timeout = self.request_timeout;
                let snapshots = snapshots.clone();
                tokio::spawn(async move {
                    match fetch_snapshot(&nats, subject, timeout).await {
                        Some(snapshot) => {
                            let _ = snapshots.send((node, snapshot)).await;
                        }
                        // The next announcement from it asks again.
                        None => tracing::debug!("cluster: no snapshot from {node:016x}"),
                    }
                });
            }
            Action::Kick { user, connection } => {
                if let Some(sessions) = self.sessions.upgrade() {
                    tokio::spawn(sessions.kick(user, connection));
                }
            }
        }
    }

    /// Messages were stored for these users: those logged in here (they logged in while the
    /// sender thought them offline) get them now.
    fn collect_stored(&self, payload: &[u8]) {
        let Ok(users) = postcard::from_bytes::<Vec<String>>(payload) else {
            tracing::warn!("cluster: undecodable stored-message notice ignored");
            return;
        };
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        for collect in sessions.collect(users) {
            tokio::spawn(collect);
        }
    }

    /// A login failed on another node: count it here too (ours were counted already).
    fn count_failure(&self, payload: &[u8]) {
        let notice = match postcard::from_bytes::<FailedLogin>(payload) {
            Ok(notice) => notice,
            Err(e) => {
                tracing::warn!("cluster: undecodable failed-login notice ignored: {e}");
                return;
            }
        };
        if notice.node == self.local.node() {
            return;
        }
        if notice.keys.len() > MAX_FAILED_KEYS
            || notice.keys.iter().any(|k| k.len() > MAX_FAILED_KEY_LEN)
        {
            tracing::warn!("cluster: oversized failed-login notice ignored");
            return;
        }
        if let Some(sessions) = self.sessions.upgrade() {
            sessions.count_failure(notice.keys);
        }
    }

    fn answer_delivery(&self, message: async_nats::Message) {
        let Some(reply) = message.reply else {
            return;
        };
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        let nats = self.nats.clone();
        tokio::spawn(async move {
            let reached = match postcard::from_bytes::<Vec<Deliver>>(&message.payload) {
                Ok(pushes) => sessions.deliver_local(pushes).await,
                Err(e) => {
                    tracing::warn!("cluster: undecodable push ignored: {e}");
                    Vec::new()
                }
            };
            if let Err(e) = nats.publish(reply, encode(&reached)).await {
                tracing::warn!("cluster: cannot answer a push: {e}");
            }
        });
    }
}

/// Asks for a node's snapshot page by page; `None` if it does not answer in time or keeps
/// changing faster than the pages can be fetched (three tries).
async fn fetch_snapshot(
    nats: &async_nats::Client,
    subject: String,
    timeout: Duration,
) -> Option<Snapshot> {
    let ask = |request: SnapshotRequest| {
        let (nats, subject) = (nats.clone(), subject.clone());
        async move {
            let reply = tokio::time::timeout(timeout, nats.request(subject, encode(&request)))
                .await
                .ok()?
                .ok()?;
            postcard::from_bytes::<Option<SnapshotPage>>(&reply.payload)
                .ok()
                .flatten()
        }
    };
    'tries: for _ in 0..3 {
        let first = ask(SnapshotRequest { seq: None, page: 0 }).await?;
        let mut users = first.users;
        for page in 1..first.pages {
            let request = SnapshotRequest {
                seq: Some(first.seq),
                page,
            };
            match ask(request).await {
                Some(more) => users.extend(more.users),
                None => continue 'tries,
            }
        }
        return Some(Snapshot {
            seq: first.seq,
            users,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_notices_stay_small_and_carry_every_name() {
        assert!(stored_notices(&[]).is_empty());
        let users: Vec<String> = (0..100_000).map(|i| format!("{i:0>32}")).collect();
        let notices = stored_notices(&users);
        assert_eq!(notices.len(), 100_000usize.div_ceil(STORED_NOTICE));
        let mut heard = Vec::new();
        for notice in &notices {
            assert!(notice.len() < 256 << 10, "{} bytes", notice.len());
            heard.extend(postcard::from_bytes::<Vec<String>>(notice).unwrap());
        }
        assert_eq!(heard, users);
    }

    #[test]
    fn credentials_are_redacted_and_decoded() {
        let redacted = |url: &str| ClusterConfig::new(url).nats_url_redacted();
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("nats://u:secret@10.0.0.5:4222"),
            "nats://***@10.0.0.5:4222"
        );
        assert_eq!(
            redacted("tls://tok3n@nats.example:4443"),
            "tls://***@nats.example:4443"
        );
        assert_eq!(redacted("u:secret@host"), "nats://***@host");
        assert_eq!(redacted("nats://u:secret@[bad"), "***@[bad");

        let config = ClusterConfig::new("nats://zs:p%40ss%20w%2Frd@127.0.0.1:4222");
        let (addr, _) = config.connect_options().unwrap();
        assert_eq!(addr.port(), 4222);
        assert!(ClusterConfig::new("http://x:1").connect_options().is_err());
    }

    #[test]
    fn config_checks_the_name_and_the_timings() {
        assert!(ClusterConfig::new("nats://127.0.0.1:4222").check().is_ok());
        for bad in ["", "a.b", "a b", "a*", "x>", &"n".repeat(65)] {
            let mut config = ClusterConfig::new("nats://x");
            config.name = bad.to_owned();
            let e = config.check().unwrap_err().to_string();
            assert!(e.contains("bad cluster name"), "{bad}: {e}");
        }
        let mut config = ClusterConfig::new("nats://x");
        config.node_timeout = config.heartbeat;
        assert!(config.check().is_err());
        config.heartbeat = Duration::ZERO;
        assert!(config.check().is_err());
    }

    #[test]
    fn subjects_are_under_the_cluster_name() {
        let subjects = Subjects {
            presence: "chat.presence".into(),
            prefix: "chat".into(),
        };
        assert_eq!(
            subjects.snapshot(0xab),
            "chat.node.00000000000000ab.snapshot"
        );
        assert_eq!(
            subjects.deliver(u64::MAX),
            "chat.node.ffffffffffffffff.deliver"
        );
    }
}
