//! Sessions: which user is logged in on which connections, here and in the cluster. A user
//! may hold several sessions (devices) at once, up to [`LoginConfig::max_sessions`].
//!
//! [`LoginConfig::max_sessions`]: super::LoginConfig::max_sessions

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zserver::{Connection, Context, Error};

use super::State;
use crate::lock;

/// How long this node remembers an account change it acted on, to refuse a login that
/// checked the password before the change but ends after it (far longer than a login waits
/// for its hash).
const CHANGE_MEMORY: Duration = Duration::from_secs(600);

/// The sessions of this node.
#[derive(Default)]
pub(super) struct Sessions {
    /// Logged-in user → their connections, oldest session first.
    by_user: HashMap<String, Vec<Connection>>,
    /// Connection id → its user, and the account's generation its login checked.
    by_conn: HashMap<u64, (String, u64)>,
    /// Users whose account changed lately → the newest change's number, and when this node
    /// acted on it.
    changed: HashMap<String, (u64, Instant)>,
}

impl Sessions {
    /// Forgets sessions whose connection has closed.
    pub(super) fn prune(&mut self) {
        self.by_user.retain(|_, conns| {
            conns.retain(|c| !c.is_closed());
            !conns.is_empty()
        });
        let live = &self.by_user;
        self.by_conn.retain(|_, (u, _)| live.contains_key(u));
    }

    /// `user`'s sessions here, oldest first.
    pub(super) fn of(&self, user: &str) -> &[Connection] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }

    /// Binds `conn` to `user` as their newest session, logged in at the account's
    /// `generation`; the user logged in on it before, if any (that session ends).
    pub(super) fn bind(
        &mut self,
        user: &str,
        conn: &Connection,
        generation: u64,
    ) -> Option<String> {
        let previous = self.unbind(conn.id());
        self.by_conn
            .insert(conn.id(), (user.to_owned(), generation));
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .push(conn.clone());
        previous
    }

    /// Ends the session on `connection`; its user and connection, if there was one.
    pub(super) fn unbind(&mut self, connection: u64) -> Option<String> {
        let (user, _) = self.by_conn.remove(&connection)?;
        if let Some(conns) = self.by_user.get_mut(&user) {
            conns.retain(|c| c.id() != connection);
            if conns.is_empty() {
                self.by_user.remove(&user);
            }
        }
        Some(user)
    }

    /// The session of `user` on `connection`, taken out (a kick).
    pub(super) fn take(&mut self, user: &str, connection: u64) -> Option<Connection> {
        let conn = self.of(user).iter().find(|c| c.id() == connection)?.clone();
        self.unbind(connection);
        Some(conn)
    }

    /// Takes out the sessions of `user` that the account change numbered `seq` makes stale:
    /// those logged in at a generation below it, but the one on `kept`. Remembers the change,
    /// so that a login that checked the password before it is refused ([`Self::stale`]).
    pub(super) fn take_stale(
        &mut self,
        user: &str,
        seq: u64,
        kept: Option<u64>,
    ) -> Vec<Connection> {
        let now = Instant::now();
        self.changed
            .retain(|_, (_, at)| now.duration_since(*at) < CHANGE_MEMORY);
        let newest = self.changed.entry(user.to_owned()).or_insert((seq, now));
        *newest = (newest.0.max(seq), now);
        let by_conn = &self.by_conn;
        let stale: Vec<Connection> = self
            .of(user)
            .iter()
            .filter(|c| Some(c.id()) != kept)
            .filter(|c| by_conn.get(&c.id()).is_some_and(|(_, g)| *g < seq))
            .cloned()
            .collect();
        for conn in &stale {
            self.unbind(conn.id());
        }
        stale
    }

    /// Takes out every session of `user` but the one on `kept` (the account was deleted
    /// here: the change itself is acted on when this node sees it in the store).
    pub(super) fn take_all(&mut self, user: &str, kept: u64) -> Vec<Connection> {
        let all: Vec<Connection> = self
            .of(user)
            .iter()
            .filter(|c| c.id() != kept)
            .cloned()
            .collect();
        for conn in &all {
            self.unbind(conn.id());
        }
        all
    }

    /// Takes out `user`'s sessions, or only the one on `connection` if given (a disconnect
    /// through the server API).
    pub(super) fn take_user(&mut self, user: &str, connection: Option<u64>) -> Vec<Connection> {
        let taken: Vec<Connection> = self
            .of(user)
            .iter()
            .filter(|c| connection.is_none_or(|id| c.id() == id))
            .cloned()
            .collect();
        for conn in &taken {
            self.unbind(conn.id());
        }
        taken
    }

    /// How many users hold a session here, and how many sessions they hold.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.by_user.len(), self.by_conn.len())
    }

    /// Whether a login of `user` that checked the account at `generation` comes too late:
    /// this node has acted on a newer change of the account (deleted, or the password
    /// changed) since.
    pub(super) fn stale(&self, user: &str, generation: u64) -> bool {
        self.changed
            .get(user)
            .is_some_and(|(seq, at)| *seq > generation && at.elapsed() < CHANGE_MEMORY)
    }
}

impl State {
    /// The user logged in on this connection.
    pub(super) fn user(&self, ctx: &Context) -> Result<String, Error> {
        lock(&self.sessions)
            .by_conn
            .get(&ctx.connection_id())
            .map(|(user, _)| user.clone())
            .ok_or_else(|| Error::msg("not logged in: log in first"))
    }

    /// Users logged in here (each once, however many sessions they hold).
    pub(super) fn local_users(&self) -> Vec<String> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        sessions.by_user.keys().cloned().collect()
    }

    /// Users logged in anywhere in the cluster (here alone without one), sorted, each once.
    pub(super) fn online(&self) -> Vec<String> {
        let mut users = self.local_users();
        if let Some(cluster) = &self.cluster {
            users.extend(cluster.remote_users());
        }
        users.sort();
        users.dedup();
        users
    }

    /// The sessions here of each of `users` (one look at the sessions, however many users:
    /// a push to everyone asks for all of them).
    pub(super) fn local_sessions(&self, users: &[String]) -> Vec<Vec<Connection>> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        users.iter().map(|u| sessions.of(u).to_vec()).collect()
    }

    /// Forgets the session on `connection` (logout, account deleted).
    pub(super) fn end_session(&self, user: &str, connection: u64) {
        lock(&self.sessions).unbind(connection);
        if let Some(cluster) = &self.cluster {
            cluster.offline(user, connection);
        }
    }
}

/// A kicked session's reason: its account was deleted.
pub(super) const ACCOUNT_DELETED: &str = "account deleted";

/// A kicked session's reason: its account's password was changed (by another session, or on
/// the server).
pub(super) const PASSWORD_CHANGED: &str = "password changed";

/// A refused login's words: `user` holds their most sessions.
pub(super) fn already_in(user: &str, max: usize) -> String {
    match max {
        1 => format!("`{user}` is already logged in"),
        _ => {
            format!("`{user}` is already logged in {max} times, the most sessions a user may hold")
        }
    }
}

/// A kicked session's reason: a newer login took its place.
pub(super) fn replaced(max: usize) -> String {
    match max {
        1 => "logged in from another connection".to_owned(),
        _ => format!(
            "logged in from another connection ({max} sessions at most: this was the oldest)"
        ),
    }
}
