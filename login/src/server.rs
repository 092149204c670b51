//! The login server: accounts in the embedded [`Store`], sessions bound to connections,
//! per-user files under the data directory, push and offline messages, rate-limited logins.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zserver::{
    Connection, Context, DownloadRequest, Error, Incoming as Upload, Outgoing, Router, Runtime,
    Server, ServerBuilder, Transport,
};

use crate::cluster::{BoxFuture, Cluster, ClusterConfig, Deliver, LocalSessions, NodeId};
use crate::lock;
use crate::protocol::{
    Credentials, FileInfo, Incoming, NewPassword, Push, PushReport, Recipients, Welcome, WhoPage,
    WhoRequest, MAX_REPORTED, MAX_WHO_PAGE,
};
use crate::store::{check_name, Store, StoreError};

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
    /// Also listen for WebSocket connections (browsers) here, with the same sessions.
    pub ws_listen: Option<SocketAddr>,
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
            ws_listen: None,
            ws_options: zserver::WsOptions::new(),
        }
    }
}

struct Sessions {
    /// Logged-in user → their connection.
    by_user: HashMap<String, Connection>,
    /// Connection id → its user.
    by_conn: HashMap<u64, String>,
}

impl Sessions {
    /// Forgets sessions whose connection has closed.
    fn prune(&mut self) {
        self.by_user.retain(|_, c| !c.is_closed());
        let live = &self.by_user;
        self.by_conn.retain(|_, u| live.contains_key(u));
    }
}

/// Failed-login counters over a sliding window, per key (an address or an account).
struct Limiter {
    window: Duration,
    max: usize,
    failures: HashMap<String, VecDeque<Instant>>,
    /// How many keys there may be before the next sweep of keys with no recent failure.
    sweep_at: usize,
}

impl Limiter {
    /// Keys a limiter holds before it first sweeps out the ones with no recent failure.
    const FIRST_SWEEP: usize = 1024;

    fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max,
            failures: HashMap::new(),
            sweep_at: Self::FIRST_SWEEP,
        }
    }

    /// Whether `key` has had `max` failures within the window before `now`.
    fn blocked(&mut self, key: &str, now: Instant) -> bool {
        let window = self.window;
        let Some(q) = self.failures.get_mut(key) else {
            return false;
        };
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        q.len() >= self.max
    }

    /// Counts a failure against `key`. Keys whose failures have all left the window are
    /// swept out once the map has doubled since the last sweep, so a guesser trying ever new
    /// names or addresses cannot grow it without bound.
    fn fail(&mut self, key: String, now: Instant) {
        let q = self.failures.entry(key).or_default();
        q.push_back(now);
        // More than `max` entries within the window never change the answer.
        if q.len() > self.max {
            q.pop_front();
        }
        if self.failures.len() >= self.sweep_at {
            let window = self.window;
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= window));
            self.sweep_at = (self.failures.len() * 2).max(Self::FIRST_SWEEP);
        }
    }
}

/// How long a push waits for room in one recipient's send buffer (their client is not
/// reading) before it stores the message for them instead; a kick waits as long, then closes
/// the connection anyway. Shorter than a cluster request's time-out, so that a node asked to
/// deliver answers in time.
const SEND_PATIENCE: Duration = Duration::from_secs(1);

/// Sends `command` with `payload` on `conn`, waiting at most `patience` for room in its
/// buffer; whether it was queued (a send given up on queues nothing).
async fn send_patiently(
    runtime: &dyn Runtime,
    conn: &Connection,
    command: &str,
    payload: &[u8],
    patience: Duration,
) -> bool {
    futures_lite::future::or(
        async { conn.send_bytes(command, payload).await.is_ok() },
        async {
            runtime.sleep(patience).await;
            false
        },
    )
    .await
}

/// Sends `message` to each of `conns` (`None`: not logged in here) all at once, so that one
/// recipient who does not read holds up no one else, each waiting at most `patience` for
/// room; for each, whether it was queued.
async fn send_to_each(
    runtime: &dyn Runtime,
    conns: &[Option<Connection>],
    message: &Incoming,
    patience: Duration,
) -> Vec<bool> {
    let Ok(payload) = postcard::to_allocvec(message) else {
        return vec![false; conns.len()];
    };
    let sends = conns.iter().map(|conn| {
        let payload = &payload;
        async move {
            match conn {
                Some(conn) => send_patiently(runtime, conn, "message", payload, patience).await,
                None => false,
            }
        }
    });
    futures_util::future::join_all(sends).await
}

/// Tells `conn` it was kicked (waiting at most [`SEND_PATIENCE`]), then closes it.
async fn kick_connection(runtime: &dyn Runtime, conn: &Connection, why: &str) {
    let payload = postcard::to_allocvec(why).unwrap_or_default();
    send_patiently(runtime, conn, "kicked", &payload, SEND_PATIENCE).await;
    conn.begin_close();
}

struct State {
    runtime: Arc<dyn Runtime>,
    store: Arc<Store>,
    files: PathBuf,
    config: LoginConfig,
    sessions: Mutex<Sessions>,
    limiter: Mutex<Limiter>,
    cluster: Option<Arc<Cluster>>,
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

impl State {
    /// The user logged in on this connection.
    fn user(&self, ctx: &Context) -> Result<String, Error> {
        lock(&self.sessions)
            .by_conn
            .get(&ctx.connection_id())
            .cloned()
            .ok_or_else(|| Error::msg("not logged in: log in first"))
    }

    /// The user's file directory, created if needed.
    fn user_dir(&self, user: &str) -> Result<PathBuf, Error> {
        let dir = self.files.join(user);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The path of `name` in `user`'s directory; refuses names that could leave it and
    /// existing symbolic links.
    fn file_path(&self, user: &str, name: &str) -> Result<PathBuf, Error> {
        check_file_name(name)?;
        let path = self.user_dir(user)?.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::BadRequest(format!("`{name}` is a symbolic link")));
        }
        Ok(path)
    }

    fn list(&self, user: &str) -> Result<Vec<FileInfo>, Error> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.user_dir(user)?)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if meta.is_file() && check_file_name(&name).is_ok() {
                files.push(FileInfo {
                    name,
                    size: meta.len(),
                });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    fn usage(&self, user: &str) -> Result<u64, Error> {
        Ok(self.list(user)?.iter().map(|f| f.size).sum())
    }

    /// Users logged in here.
    fn local_users(&self) -> Vec<String> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        sessions.by_user.keys().cloned().collect()
    }

    /// Users logged in anywhere in the cluster (here alone without one), sorted.
    fn online(&self) -> Vec<String> {
        let mut users = self.local_users();
        if let Some(cluster) = &self.cluster {
            users.extend(cluster.remote_users());
        }
        users.sort();
        users.dedup();
        users
    }

    /// The connection of each of `users` logged in here (one look at the sessions, however
    /// many users: a push to everyone asks for all of them).
    fn local_sessions(&self, users: &[String]) -> Vec<Option<Connection>> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        users
            .iter()
            .map(|u| sessions.by_user.get(u).cloned())
            .collect()
    }

    /// Delivers `text` from `from` to each of `users`: here, through the node they are logged
    /// in on, or (offline, or unreachable) stored for their next login.
    async fn push_to(
        self: &Arc<Self>,
        from: &str,
        users: Vec<String>,
        text: &str,
    ) -> Result<PushReport, Error> {
        let message = Incoming {
            from: from.to_owned(),
            text: text.to_owned(),
        };
        let mut report = PushReport::default();
        let mut remote: HashMap<NodeId, Vec<String>> = HashMap::new();
        let mut offline = Vec::new();
        for user in &users {
            check_name(user).map_err(store_err)?;
        }
        let conns = self.local_sessions(&users);
        let sent = send_to_each(&*self.runtime, &conns, &message, SEND_PATIENCE).await;
        for (user, sent) in users.into_iter().zip(sent) {
            if sent {
                report.delivered.push(user);
            } else if let Some(node) = self.cluster.as_ref().and_then(|c| c.locate(&user)) {
                remote.entry(node).or_default().push(user);
            } else {
                offline.push(user);
            }
        }
        if let Some(cluster) = &self.cluster {
            let remote: Vec<(NodeId, Vec<String>)> = remote.into_iter().collect();
            let pushes = remote
                .iter()
                .map(|(node, users)| {
                    let push = Deliver {
                        from: from.to_owned(),
                        users: users.clone(),
                        text: text.to_owned(),
                    };
                    (*node, push)
                })
                .collect();
            let answers = cluster.deliver(pushes).await;
            for ((_, users), reached) in remote.into_iter().zip(answers) {
                let reached: std::collections::HashSet<String> = reached.into_iter().collect();
                for user in users {
                    if reached.contains(&user) {
                        report.delivered.push(user);
                    } else {
                        offline.push(user);
                    }
                }
            }
        }
        let stored = if offline.is_empty() {
            Ok(())
        } else {
            let (to, from, text) = (offline.clone(), from.to_owned(), text.to_owned());
            db(self, move |s| s.queue_for_many(&to, &from, &text)).await
        };
        // Also on an error for an unknown recipient: the others' messages were stored.
        report.stored = offline;
        if let Some(cluster) = &self.cluster {
            // A recipient may have logged in somewhere since we looked: that node takes it.
            cluster.stored(&report.stored);
        } else {
            // A recipient may have logged in here since we looked, and taken their messages
            // before this one was stored: it is delivered now, not at their next login.
            for deliver in self.collect(report.stored.clone()) {
                deliver.await;
            }
        }
        report.delivered_count = report.delivered.len() as u64;
        report.stored_count = report.stored.len() as u64;
        stored.map(|()| report)
    }

    /// Forgets the session on `connection` (logout, account deleted).
    fn end_session(&self, user: &str, connection: u64) {
        {
            let mut sessions = lock(&self.sessions);
            sessions.by_conn.remove(&connection);
            if sessions
                .by_user
                .get(user)
                .is_some_and(|c| c.id() == connection)
            {
                sessions.by_user.remove(user);
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.offline(user, connection);
        }
    }

    /// Counts a failed login at `now` against each of `keys` (an address's, an account's).
    fn count_failures(&self, keys: Vec<String>, now: Instant) {
        let mut limiter = lock(&self.limiter);
        for key in keys {
            limiter.fail(key, now);
        }
    }

    /// Takes `user`'s stored messages and sends them on `conn`, their session here (storing
    /// them again if the session ends meanwhile).
    fn deliver_stored(&self, user: String, conn: Connection) -> BoxFuture<()> {
        let (store, runtime) = (self.store.clone(), self.runtime.clone());
        Box::pin(async move {
            let (st, name) = (store.clone(), user.clone());
            let Ok(messages) = blocking::unblock(move || st.take_messages(&name)).await else {
                return;
            };
            let mut messages = messages.into_iter();
            while let Some(m) = messages.next() {
                let incoming = Incoming {
                    from: m.from.clone(),
                    text: m.text.clone(),
                };
                let payload = postcard::to_allocvec(&incoming).unwrap_or_default();
                if !send_patiently(&*runtime, &conn, "message", &payload, SEND_PATIENCE).await {
                    // The session ended meanwhile, or its client stopped reading: store them
                    // again, for the next login.
                    let back: Vec<_> = std::iter::once(m).chain(messages).collect();
                    blocking::unblock(move || {
                        for m in back {
                            let _ = store.queue_message(&user, &m.from, &m.text);
                        }
                    })
                    .await;
                    return;
                }
            }
        })
    }
}

impl LocalSessions for State {
    fn deliver_local(&self, pushes: Vec<Deliver>) -> BoxFuture<Vec<Vec<String>>> {
        // One look at the sessions for every recipient of every push in the batch.
        let all: Vec<String> = pushes
            .iter()
            .flat_map(|p| p.users.iter().cloned())
            .collect();
        let mut conns = self.local_sessions(&all).into_iter();
        let looked_up: Vec<_> = pushes
            .into_iter()
            .map(|push| {
                let mine: Vec<_> = conns.by_ref().take(push.users.len()).collect();
                (push, mine)
            })
            .collect();
        let runtime = self.runtime.clone();
        Box::pin(async move {
            // The whole batch gets SEND_PATIENCE, well within the sender's time-out; a
            // recipient found not reading is not waited for again in the same batch.
            let deadline = runtime.now() + SEND_PATIENCE;
            let mut stalled = std::collections::HashSet::new();
            let mut reached = Vec::with_capacity(looked_up.len());
            for (push, mut conns) in looked_up {
                for conn in &mut conns {
                    if conn.as_ref().is_some_and(|c| stalled.contains(&c.id())) {
                        *conn = None;
                    }
                }
                let message = Incoming {
                    from: push.from,
                    text: push.text,
                };
                let patience = deadline.saturating_duration_since(runtime.now());
                let sent = send_to_each(&*runtime, &conns, &message, patience).await;
                for (conn, sent) in conns.iter().zip(&sent) {
                    if let (Some(conn), false) = (conn, sent) {
                        stalled.insert(conn.id());
                    }
                }
                reached.push(
                    push.users
                        .into_iter()
                        .zip(sent)
                        .filter_map(|(user, sent)| sent.then_some(user))
                        .collect(),
                );
            }
            reached
        })
    }

    fn collect(&self, users: Vec<String>) -> Vec<BoxFuture<()>> {
        let conns = self.local_sessions(&users);
        users
            .into_iter()
            .zip(conns)
            .filter_map(|(user, conn)| Some(self.deliver_stored(user, conn?)))
            .collect()
    }

    fn count_failure(&self, keys: Vec<String>) {
        self.count_failures(keys, Instant::now());
    }

    fn kick(&self, user: String, connection: u64) -> BoxFuture<()> {
        let conn = {
            let mut sessions = lock(&self.sessions);
            match sessions.by_user.get(&user) {
                Some(c) if c.id() == connection => {
                    let conn = c.clone();
                    sessions.by_user.remove(&user);
                    sessions.by_conn.remove(&connection);
                    Some(conn)
                }
                _ => None,
            }
        };
        if conn.is_some() {
            if let Some(cluster) = &self.cluster {
                cluster.offline(&user, connection);
            }
        }
        let runtime = self.runtime.clone();
        Box::pin(async move {
            if let Some(conn) = conn {
                kick_connection(&*runtime, &conn, "logged in on another node").await;
            }
        })
    }
}

/// A file name a user may use: 1 to 255 bytes, no path separators, NUL or leading dot
/// (which also rules out `.` and `..`).
pub fn check_file_name(name: &str) -> Result<(), Error> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || Path::new(name).is_absolute();
    if bad {
        return Err(Error::BadRequest(format!(
            "bad file name `{name}`: 1 to 255 bytes, no `/`, `\\` or NUL, not starting with `.`"
        )));
    }
    Ok(())
}

/// A running login server.
pub struct LoginServer {
    server: Server,
    state: Arc<State>,
    ws_addr: Option<SocketAddr>,
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
    /// [`Storage`](crate::store::Storage) back end); `config.store` is not used.
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
        std::fs::create_dir_all(&files)?;
        let state = Arc::new(State {
            runtime: transport.runtime(),
            cluster,
            store: Arc::new(store),
            files,
            sessions: Mutex::new(Sessions {
                by_user: HashMap::new(),
                by_conn: HashMap::new(),
            }),
            limiter: Mutex::new(Limiter::new(
                config.attempt_window,
                config.max_failed_logins,
            )),
            config: config.clone(),
        });
        let server = ServerBuilder::new(transport)
            .key_file(config.data_dir.join("server.key"))?
            .router(router(state.clone()))
            .bind(addr)
            .await?;
        let ws_addr = match config.ws_listen {
            Some(ws) => Some(server.listen_ws(ws, config.ws_options.clone()).await?),
            None => None,
        };
        if let Some(cluster) = &state.cluster {
            let local: Arc<dyn LocalSessions> = state.clone();
            cluster.start(Arc::downgrade(&local)).await?;
        }
        Ok(Self {
            server,
            state,
            ws_addr,
        })
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

    /// Users logged in now, sorted: on any node of the cluster if there is one.
    pub fn online(&self) -> Vec<String> {
        self.state.online()
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

    /// Stops gracefully (and tells the cluster this node leaves).
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
    }
}

fn router(state: Arc<State>) -> Router {
    let s = state.clone();
    let router = Router::new().typed("register", move |_ctx, c: Credentials| {
        let s = s.clone();
        async move { db(&s, move |st| st.add_user(&c.user, &c.password)).await }
    });
    let s = state.clone();
    let router = router.typed("login", move |ctx, c: Credentials| {
        let s = s.clone();
        async move { login(&s, &ctx, c).await }
    });
    let s = state.clone();
    let router = router.typed("logout", move |ctx, (): ()| {
        let s = s.clone();
        async move {
            let user = s.user(&ctx)?;
            s.end_session(&user, ctx.connection_id());
            Ok::<_, Error>(())
        }
    });
    let s = state.clone();
    let router = router.typed("passwd", move |ctx, p: NewPassword| {
        let s = s.clone();
        async move {
            let user = s.user(&ctx)?;
            db(&s, move |st| st.change_password(&user, &p.old, &p.new)).await
        }
    });
    let s = state.clone();
    let router = router.typed("delete", move |ctx, password: String| {
        let s = s.clone();
        async move {
            let user = s.user(&ctx)?;
            let name = user.clone();
            db(&s, move |st| {
                st.verify(&name, &password)?;
                st.delete_user(&name)
            })
            .await?;
            let _ = std::fs::remove_dir_all(s.files.join(&user));
            s.end_session(&user, ctx.connection_id());
            Ok::<_, Error>(())
        }
    });
    let s = state.clone();
    let router = router.typed("who", move |ctx, request: WhoRequest| {
        let s = s.clone();
        async move {
            s.user(&ctx)?;
            Ok::<_, Error>(who_page(s.online(), request))
        }
    });
    let s = state.clone();
    let router = router.typed("push", move |ctx, push: Push| {
        let s = s.clone();
        async move {
            let from = s.user(&ctx)?;
            let (to, everyone) = match push.to {
                Recipients::Users(users) => (users, false),
                Recipients::Everyone => (s.online(), true),
            };
            let report = s.push_to(&from, to, &push.text).await?;
            Ok::<_, Error>(if everyone { bounded(report) } else { report })
        }
    });
    let s = state.clone();
    let router = router.upload("put", move |ctx, body| {
        let s = s.clone();
        async move { put(&s, &ctx, body).await }
    });
    let s = state.clone();
    let router = router.download("get", move |ctx, req: DownloadRequest| {
        let s = s.clone();
        async move {
            let user = s.user(&ctx)?;
            let path = s.file_path(&user, req.meta_str()?)?;
            Outgoing::file(path, req.offset).await
        }
    });
    let s = state.clone();
    let router = router.typed("ls", move |ctx, (): ()| {
        let s = s.clone();
        async move { s.list(&s.user(&ctx)?) }
    });
    let s = state.clone();
    let router = router.typed("stat", move |ctx, name: String| {
        let s = s.clone();
        async move {
            let path = s.file_path(&s.user(&ctx)?, &name)?;
            let meta =
                std::fs::metadata(&path).map_err(|_| Error::msg(format!("no file `{name}`")))?;
            Ok::<_, Error>(FileInfo {
                name,
                size: meta.len(),
            })
        }
    });
    let s = state;
    router.typed("rm", move |ctx, name: String| {
        let s = s.clone();
        async move {
            let path = s.file_path(&s.user(&ctx)?, &name)?;
            std::fs::remove_file(&path).map_err(|_| Error::msg(format!("no file `{name}`")))
        }
    })
}

async fn login(state: &Arc<State>, ctx: &Context, c: Credentials) -> Result<Welcome, Error> {
    let config = &state.config;
    let addr_key = format!("addr:{}", ip_of(ctx.peer_addr()));
    // A name that breaks the naming rule cannot log in; its failures count against the
    // address only (and one shared key), so a huge name is not kept as a key.
    let user_key = match check_name(&c.user) {
        Ok(()) => format!("user:{}", c.user),
        Err(_) => "user:(bad name)".to_owned(),
    };
    let now = Instant::now();
    {
        let mut limiter = lock(&state.limiter);
        if limiter.blocked(&addr_key, now) || limiter.blocked(&user_key, now) {
            return Err(Error::msg(format!(
                "too many failed logins; try again in {} s",
                config.attempt_window.as_secs()
            )));
        }
    }
    let (user, password) = (c.user.clone(), c.password);
    if let Err(e) = db(state, move |s| s.verify(&user, &password)).await {
        let keys = vec![addr_key, user_key];
        state.count_failures(keys.clone(), now);
        if let Some(cluster) = &state.cluster {
            cluster.failed(keys);
        }
        return Err(e);
    }
    let elsewhere = state.cluster.as_ref().and_then(|cl| cl.locate(&c.user));
    let (old, previous) = {
        let mut sessions = lock(&state.sessions);
        sessions.prune();
        if config.second_login == SecondLogin::Refuse {
            let here = sessions
                .by_user
                .get(&c.user)
                .is_some_and(|old| old.id() != ctx.connection_id());
            if here || elsewhere.is_some() {
                return Err(Error::msg(format!("`{}` is already logged in", c.user)));
            }
        }
        let previous = sessions.by_conn.remove(&ctx.connection_id());
        if let Some(previous) = &previous {
            sessions.by_user.remove(previous);
        }
        sessions.by_conn.insert(ctx.connection_id(), c.user.clone());
        let old = sessions
            .by_user
            .insert(c.user.clone(), ctx.connection().clone());
        (old.filter(|o| o.id() != ctx.connection_id()), previous)
    };
    if let Some(cluster) = &state.cluster {
        // Another user logged in on this connection before: that session ends.
        if let Some(previous) = previous.filter(|p| *p != c.user) {
            cluster.offline(&previous, ctx.connection_id());
        }
        // Announced to the other nodes; one holding an older session of this user kicks it.
        cluster.online(&c.user, ctx.connection());
    }
    if let Some(old) = old {
        lock(&state.sessions).by_conn.remove(&old.id());
        // The event goes out first, then the old connection closes.
        kick_connection(&*state.runtime, &old, "logged in from another connection").await;
    }
    let user = c.user.clone();
    let offline = db(state, move |s| s.take_messages(&user)).await?;
    Ok(Welcome {
        offline: offline
            .into_iter()
            .map(|m| Incoming {
                from: m.from,
                text: m.text,
            })
            .collect(),
    })
}

/// A push-to-everyone's report with at most [`MAX_REPORTED`] names in each list (the counts
/// stay whole), so that it fits in a reply however many users are online.
fn bounded(mut report: PushReport) -> PushReport {
    report.delivered.truncate(MAX_REPORTED);
    report.stored.truncate(MAX_REPORTED);
    report
}

/// The page of `online` (sorted, no duplicates) that `request` asks for.
fn who_page(online: Vec<String>, request: WhoRequest) -> WhoPage {
    let total = online.len();
    let start = match &request.after {
        Some(after) => online.partition_point(|u| u <= after),
        None => 0,
    };
    let limit = request.limit.clamp(1, MAX_WHO_PAGE) as usize;
    let end = start.saturating_add(limit).min(total);
    let mut online = online;
    online.truncate(end);
    WhoPage {
        users: online.split_off(start),
        online: total as u64,
        more: end < total,
    }
}

fn ip_of(addr: SocketAddr) -> IpAddr {
    addr.ip()
}

/// Stores an upload as `name`: written to a hidden temporary file, renamed into place once
/// complete and verified, refused up front if the announced size would pass the quota.
async fn put(state: &Arc<State>, ctx: &Context, mut body: Upload) -> Result<Vec<u8>, Error> {
    let user = state.user(ctx)?;
    let name = std::str::from_utf8(body.meta())
        .map_err(|_| Error::BadRequest("file name is not UTF-8".into()))?
        .to_owned();
    let path = state.file_path(&user, &name)?;
    let existing = std::fs::metadata(&path).map_or(0, |m| m.len());
    let room = state
        .config
        .quota_bytes
        .saturating_sub(state.usage(&user)? - existing);
    if body.total().is_some_and(|t| t > room) {
        return Err(Error::msg(format!(
            "quota exceeded: {} bytes free, the file has {}",
            room,
            body.total().unwrap_or(0)
        )));
    }
    let temp =
        state
            .user_dir(&user)?
            .join(format!(".upload-{}-{}", ctx.connection_id(), next_upload()));
    let result = async {
        let file = Arc::new(std::fs::File::create(&temp)?);
        let mut written = 0u64;
        while let Some(chunk) = body.chunk().await? {
            written += chunk.len() as u64;
            if written > room {
                return Err(Error::msg(format!("quota exceeded: {room} bytes free")));
            }
            let f = file.clone();
            blocking::unblock(move || std::io::Write::write_all(&mut &*f, &chunk)).await?;
        }
        let f = file.clone();
        blocking::unblock(move || f.sync_all()).await?;
        std::fs::rename(&temp, &path)?;
        Ok(written)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    Ok(result?.to_le_bytes().to_vec())
}

fn next_upload() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("u{i:06}")).collect()
    }

    #[test]
    fn who_pages_through_the_online_users() {
        let online = names(0..10);
        let page = |after: Option<&str>, limit| {
            who_page(
                online.clone(),
                WhoRequest {
                    after: after.map(str::to_owned),
                    limit,
                },
            )
        };
        let first = page(None, 4);
        assert_eq!(
            (first.users, first.online, first.more),
            (names(0..4), 10, true)
        );
        let next = page(Some("u000003"), 4);
        assert_eq!(next.users, names(4..8));
        let last = page(Some("u000007"), 4);
        assert_eq!((last.users, last.more), (names(8..10), false));
        // After a name that is gone, and after the end.
        assert_eq!(page(Some("u000003x"), 1).users, names(4..5));
        assert_eq!(
            page(Some("zzz"), 4),
            WhoPage {
                users: vec![],
                online: 10,
                more: false
            }
        );
        // A limit of 0 still gives one name; a huge one at most MAX_WHO_PAGE.
        assert_eq!(page(None, 0).users, names(0..1));
        let many = who_page(
            names(0..70_000),
            WhoRequest {
                after: None,
                limit: u32::MAX,
            },
        );
        assert_eq!(many.users.len(), MAX_WHO_PAGE as usize);
        assert!(many.more);
    }

    #[test]
    fn a_report_to_everyone_lists_a_bounded_number_of_names() {
        let report = PushReport {
            delivered: names(0..MAX_REPORTED + 5),
            stored: names(0..3),
            delivered_count: (MAX_REPORTED + 5) as u64,
            stored_count: 3,
        };
        let bounded = bounded(report);
        assert_eq!(bounded.delivered, names(0..MAX_REPORTED));
        assert_eq!(bounded.stored, names(0..3));
        assert_eq!(bounded.delivered_count, (MAX_REPORTED + 5) as u64);
        // Even a full report of MAX_REPORTED longest names each fits in one frame.
        let longest: Vec<String> = (0..MAX_REPORTED).map(|i| format!("{i:0>32}")).collect();
        let full = PushReport {
            delivered: longest.clone(),
            stored: longest,
            ..PushReport::default()
        };
        let bytes = postcard::to_allocvec(&full).unwrap().len();
        assert!(bytes < zserver::frame::DEFAULT_MAX_FRAME / 4, "{bytes}");
    }

    #[test]
    fn limiter_blocks_after_max_failures_within_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = Limiter::new(window, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!limiter.blocked("user:ann", t0));
            limiter.fail("user:ann".into(), t0 + Duration::from_secs(i));
        }
        assert!(limiter.blocked("user:ann", t0 + Duration::from_secs(3)));
        assert!(!limiter.blocked("user:bob", t0 + Duration::from_secs(3)));
        // The first failure leaves the window: one more attempt is allowed.
        assert!(!limiter.blocked("user:ann", t0 + window + Duration::from_millis(1)));
    }

    #[test]
    fn limiter_forgets_keys_whose_failures_left_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = Limiter::new(window, 5);
        let t0 = Instant::now();
        // 50,000 names, each tried once, 100 ms apart: at most 600 are within the window at
        // any time, and the map never holds many more than twice the sweep threshold.
        let mut most = 0;
        for i in 0..50_000u64 {
            let now = t0 + Duration::from_millis(100 * i);
            limiter.fail(format!("user:u{i}"), now);
            most = most.max(limiter.failures.len());
        }
        assert!(most <= 2 * Limiter::FIRST_SWEEP, "{most} keys held");
        // Many failures of one key keep only what decides the answer.
        for _ in 0..1000 {
            limiter.fail("user:x".into(), t0);
        }
        assert_eq!(limiter.failures["user:x"].len(), 5);
        assert!(limiter.blocked("user:x", t0));
    }
}
