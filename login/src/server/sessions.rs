//! Sessions: which user is logged in on which connections, here and in the cluster. A user
//! may hold several sessions (devices) at once, up to [`LoginConfig::max_sessions`].
//!
//! [`LoginConfig::max_sessions`]: super::LoginConfig::max_sessions

use std::collections::HashMap;

use zserver::{Connection, Context, Error};

use super::State;
use crate::lock;

/// The sessions of this node.
#[derive(Default)]
pub(super) struct Sessions {
    /// Logged-in user → their connections, oldest session first.
    by_user: HashMap<String, Vec<Connection>>,
    /// Connection id → its user.
    by_conn: HashMap<u64, String>,
}

impl Sessions {
    /// Forgets sessions whose connection has closed.
    pub(super) fn prune(&mut self) {
        self.by_user.retain(|_, conns| {
            conns.retain(|c| !c.is_closed());
            !conns.is_empty()
        });
        let live = &self.by_user;
        self.by_conn.retain(|_, u| live.contains_key(u));
    }

    /// `user`'s sessions here, oldest first.
    pub(super) fn of(&self, user: &str) -> &[Connection] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }

    /// Binds `conn` to `user` as their newest session; the user logged in on it before, if
    /// any (that session ends).
    pub(super) fn bind(&mut self, user: &str, conn: &Connection) -> Option<String> {
        let previous = self.unbind(conn.id());
        self.by_conn.insert(conn.id(), user.to_owned());
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .push(conn.clone());
        previous
    }

    /// Ends the session on `connection`; its user and connection, if there was one.
    pub(super) fn unbind(&mut self, connection: u64) -> Option<String> {
        let user = self.by_conn.remove(&connection)?;
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
}

impl State {
    /// The user logged in on this connection.
    pub(super) fn user(&self, ctx: &Context) -> Result<String, Error> {
        lock(&self.sessions)
            .by_conn
            .get(&ctx.connection_id())
            .cloned()
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
