//! Sessions: which user is logged in on which connection, here and in the cluster.

use std::collections::HashMap;

use zserver::{Connection, Context, Error};

use super::State;
use crate::lock;

pub(super) struct Sessions {
    /// Logged-in user → their connection.
    pub(super) by_user: HashMap<String, Connection>,
    /// Connection id → its user.
    pub(super) by_conn: HashMap<u64, String>,
}

impl Sessions {
    /// Forgets sessions whose connection has closed.
    pub(super) fn prune(&mut self) {
        self.by_user.retain(|_, c| !c.is_closed());
        let live = &self.by_user;
        self.by_conn.retain(|_, u| live.contains_key(u));
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

    /// Users logged in here.
    pub(super) fn local_users(&self) -> Vec<String> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        sessions.by_user.keys().cloned().collect()
    }

    /// Users logged in anywhere in the cluster (here alone without one), sorted.
    pub(super) fn online(&self) -> Vec<String> {
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
    pub(super) fn local_sessions(&self, users: &[String]) -> Vec<Option<Connection>> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        users
            .iter()
            .map(|u| sessions.by_user.get(u).cloned())
            .collect()
    }

    /// Forgets the session on `connection` (logout, account deleted).
    pub(super) fn end_session(&self, user: &str, connection: u64) {
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
}
