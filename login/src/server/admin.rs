//! [`Admin`]: operating a login server from the app's own code, the server API
//! ([`crate::api`]) and the admin page — publish, presence, history, unsubscribe,
//! disconnect, push, users, figures. Every call works on any node of a cluster: what acts on
//! sessions reaches the nodes the user is logged in on (`NAME.node.ID.admin`), channels and
//! accounts are shared already.

use std::sync::Arc;

use zserver::channels::{HistoryPage, Member, Position};

use super::{db, State};
use crate::cluster::{AdminAsk, AdminReply, NodeId, NodeInfo, SessionInfo};
use crate::protocol::PushReport;
use crate::store::{check_name, StoreError};

/// Most channels one [`Admin::broadcast`] publishes to.
pub const MAX_BROADCAST: usize = 1000;

/// Most recipients of one [`Admin::push`].
pub const MAX_PUSH_USERS: usize = 1000;

/// Most publications one [`Admin::history`] returns.
pub const MAX_HISTORY: usize = 1000;

/// The sender a push from the server API carries unless the call names one (not a valid
/// user name, so no user can be mistaken for it).
pub const SERVER_SENDER: &str = "$server";

/// What the clients of a session ended through [`Admin::disconnect`] are told.
pub const DISCONNECTED: &str = "disconnected by the server";

/// What a client unsubscribed through [`Admin::unsubscribe`] is told.
pub const UNSUBSCRIBED: &str = "unsubscribed by the server";

/// Why an [`Admin`] call failed; the server API answers each with its own status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong (a bad name, too many channels, a channel option that refuses
    /// it): 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such user, channel namespace, node or session: 404.
    #[error("{0}")]
    NotFound(String),
    /// The user already exists: 409.
    #[error("{0}")]
    Conflict(String),
    /// The server failed (the store, another node): 500.
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadName(_) | StoreError::BadPassword => Self::BadRequest(e.to_string()),
            StoreError::NoSuchUser(_) => Self::NotFound(e.to_string()),
            StoreError::Duplicate(_) => Self::Conflict(e.to_string()),
            StoreError::WrongPassword | StoreError::Db(_) => Self::Failed(e.to_string()),
        }
    }
}

impl From<zserver::Error> for AdminError {
    fn from(e: zserver::Error) -> Self {
        match e {
            zserver::Error::Denied(m) if m.starts_with("no namespace") => Self::NotFound(m),
            zserver::Error::Denied(m)
            | zserver::Error::BadRequest(m)
            | zserver::Error::Limit(m) => Self::BadRequest(m),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The whole service's figures: every node's, as [`Admin::info`] gathers them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerInfo {
    /// The node that answered (16 hex digits).
    pub node: String,
    /// Users logged in anywhere in the cluster.
    pub users_online: u64,
    /// Each node's figures, the answering node's first.
    pub nodes: Vec<NodeInfo>,
    /// Nodes known that did not answer in time.
    pub unreachable: Vec<String>,
}

/// The handle for operating a login server ([`LoginServer::admin`]); cheap to clone.
///
/// [`LoginServer::admin`]: super::LoginServer::admin
#[derive(Clone)]
pub struct Admin {
    state: Arc<State>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("node", &self.state.node_name())
            .finish()
    }
}

/// `user` checked as a user name.
fn user_name(user: &str) -> Result<(), AdminError> {
    check_name(user).map_err(AdminError::from)
}

impl Admin {
    pub(super) fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// This node's id (16 hex digits), as [`SessionInfo::node`] and [`NodeInfo::node`] name
    /// it.
    pub fn node(&self) -> String {
        self.state.node_name()
    }

    /// Publishes `data` to `channel` as the server (past the namespace's permission hooks,
    /// within its size limit); its position when the channel keeps history. Every
    /// subscriber gets it, on every node.
    pub async fn publish(
        &self,
        channel: &str,
        data: Vec<u8>,
    ) -> Result<Option<Position>, AdminError> {
        let (channels, channel) = (self.state.channels.clone(), channel.to_owned());
        // A durable namespace waits for the store's write.
        Ok(blocking::unblock(move || channels.publish(&channel, data)).await?)
    }

    /// Publishes `data` to each of `channels` (at most [`MAX_BROADCAST`]); each one's
    /// outcome, in order (one channel's failure does not stop the others).
    pub async fn broadcast(
        &self,
        channels: Vec<String>,
        data: Vec<u8>,
    ) -> Result<Vec<Result<Option<Position>, AdminError>>, AdminError> {
        if channels.is_empty() || channels.len() > MAX_BROADCAST {
            return Err(AdminError::BadRequest(format!(
                "a broadcast goes to 1 to {MAX_BROADCAST} channels, not {}",
                channels.len()
            )));
        }
        let hub = self.state.channels.clone();
        Ok(blocking::unblock(move || {
            channels
                .iter()
                .map(|channel| hub.publish(channel, &data).map_err(AdminError::from))
                .collect()
        })
        .await)
    }

    /// Who is subscribed to `channel`, on every node (whatever its namespace's presence
    /// option).
    pub fn presence(&self, channel: &str) -> Result<Vec<Member>, AdminError> {
        Ok(self.state.channels.presence(channel)?)
    }

    /// Up to `limit` (at most [`MAX_HISTORY`]) publications of `channel` after `since`
    /// (the oldest kept when `None`), and the channel's position.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: usize,
    ) -> Result<HistoryPage, AdminError> {
        let (channels, channel) = (self.state.channels.clone(), channel.to_owned());
        let limit = limit.clamp(1, MAX_HISTORY);
        Ok(blocking::unblock(move || channels.history(&channel, since, limit)).await?)
    }

    /// Ends the subscriptions of `user`'s sessions (on every node) to `channel`, each
    /// client told [`UNSUBSCRIBED`]; how many. Not found if the user is not subscribed.
    pub async fn unsubscribe(&self, user: &str, channel: &str) -> Result<u64, AdminError> {
        user_name(user)?;
        // Refuses a channel of no namespace.
        self.presence(channel)?;
        let mut count = self.state.unsubscribe_local(user, channel, UNSUBSCRIBED);
        let ask = AdminAsk::Unsubscribe {
            user: user.to_owned(),
            channel: channel.to_owned(),
            reason: UNSUBSCRIBED.to_owned(),
        };
        for reply in self.ask_where(user, &ask).await? {
            if let AdminReply::Count(n) = reply {
                count += n;
            }
        }
        match count {
            0 => Err(AdminError::NotFound(format!(
                "`{user}` is not subscribed to `{channel}`"
            ))),
            n => Ok(n),
        }
    }

    /// Ends `user`'s sessions, each client told [`DISCONNECTED`] before its connection
    /// closes: all of them, on every node, or only the one on connection `target.1` of node
    /// `target.0` (as [`Self::sessions`] names them). How many; not found if there was
    /// none.
    pub async fn disconnect(
        &self,
        user: &str,
        target: Option<(&str, u64)>,
    ) -> Result<u64, AdminError> {
        user_name(user)?;
        let Some((node, connection)) = target else {
            let mut count = self.state.disconnect_local(user, None, DISCONNECTED).await;
            let ask = AdminAsk::Disconnect {
                user: user.to_owned(),
                connection: None,
                reason: DISCONNECTED.to_owned(),
            };
            for reply in self.ask_where(user, &ask).await? {
                if let AdminReply::Count(n) = reply {
                    count += n;
                }
            }
            return match count {
                0 => Err(AdminError::NotFound(format!("`{user}` is not logged in"))),
                n => Ok(n),
            };
        };
        let count = if node == self.node() {
            let c = Some(connection);
            self.state.disconnect_local(user, c, DISCONNECTED).await
        } else {
            let ask = AdminAsk::Disconnect {
                user: user.to_owned(),
                connection: Some(connection),
                reason: DISCONNECTED.to_owned(),
            };
            match self.ask(self.peer(node)?, &ask).await? {
                AdminReply::Count(n) => n,
                _ => 0,
            }
        };
        match count {
            0 => Err(AdminError::NotFound(format!(
                "`{user}` has no session on connection {connection} of node {node}"
            ))),
            n => Ok(n),
        }
    }

    /// `user`'s sessions on every node; not found if there is no such user.
    pub async fn sessions(&self, user: &str) -> Result<Vec<SessionInfo>, AdminError> {
        user_name(user)?;
        let mut all = self.state.local_session_info(user);
        let ask = AdminAsk::Sessions {
            user: user.to_owned(),
        };
        for reply in self.ask_where(user, &ask).await? {
            if let AdminReply::Sessions(sessions) = reply {
                all.extend(sessions);
            }
        }
        let name = user.to_owned();
        if all.is_empty() && !self.store(move |s| s.exists(&name)).await? {
            return Err(StoreError::NoSuchUser(user.to_owned()).into());
        }
        Ok(all)
    }

    /// Sends `text` from `from` ([`SERVER_SENDER`] when `None`) to each of `users` (at most
    /// [`MAX_PUSH_USERS`], every one an existing user): delivered to their sessions on any
    /// node, or stored for their next login.
    pub async fn push(
        &self,
        users: Vec<String>,
        from: Option<&str>,
        text: &str,
    ) -> Result<PushReport, AdminError> {
        if users.is_empty() || users.len() > MAX_PUSH_USERS {
            return Err(AdminError::BadRequest(format!(
                "a push goes to 1 to {MAX_PUSH_USERS} users, not {}",
                users.len()
            )));
        }
        let from = from.unwrap_or(SERVER_SENDER);
        if from.is_empty() || from.len() > 64 {
            return Err(AdminError::BadRequest("`from` is 1 to 64 bytes".into()));
        }
        for user in &users {
            user_name(user)?;
        }
        let names = users.clone();
        let unknown = db(&self.state, move |s| {
            for user in names {
                if !s.exists(&user)? {
                    return Ok(Some(user));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| AdminError::Failed(e.to_string()))?;
        if let Some(user) = unknown {
            return Err(StoreError::NoSuchUser(user).into());
        }
        self.state
            .push_to(from, users, text)
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))
    }

    /// Every account's name, sorted.
    pub async fn users(&self) -> Result<Vec<String>, AdminError> {
        let mut users = self.store(|s| s.users()).await?;
        users.sort();
        Ok(users)
    }

    /// Users logged in now, anywhere in the cluster, sorted.
    pub fn online(&self) -> Vec<String> {
        self.state.online()
    }

    /// Creates the account `name` with `password`.
    pub async fn add_user(&self, name: &str, password: &str) -> Result<(), AdminError> {
        let (name, password) = (name.to_owned(), password.to_owned());
        self.store(move |s| s.add_user(&name, &password)).await
    }

    /// Deletes the account `name`, its stored messages and its files; its sessions end on
    /// every node (told "account deleted").
    pub async fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        user_name(name)?;
        let owned = name.to_owned();
        self.store(move |s| s.delete_user(&owned)).await?;
        self.state.changed_account();
        let dir = self.state.files.join(name);
        let _ = blocking::unblock(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    /// Every node's figures (this one's first), asked of the others at once.
    pub async fn info(&self) -> ServerInfo {
        let mut nodes = vec![self.state.node_info()];
        let mut unreachable = Vec::new();
        if let Some(cluster) = &self.state.cluster {
            let asks = cluster
                .nodes()
                .into_iter()
                .map(|node| async move { (node, cluster.ask(node, &AdminAsk::Info).await) });
            for (node, reply) in futures_util::future::join_all(asks).await {
                match reply {
                    Ok(AdminReply::Info(info)) => nodes.push(info),
                    _ => unreachable.push(format!("{node:016x}")),
                }
            }
        }
        ServerInfo {
            node: self.node(),
            users_online: self.state.online().len() as u64,
            nodes,
            unreachable,
        }
    }

    /// Runs a blocking store operation off the runtime's threads.
    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let store = self.state.store.clone();
        Ok(blocking::unblock(move || f(&store)).await?)
    }

    /// The node of the cluster `node` names (16 hex digits), if this node knows it.
    fn peer(&self, node: &str) -> Result<NodeId, AdminError> {
        let unknown = || AdminError::NotFound(format!("no node `{node}` in the cluster"));
        let id = u64::from_str_radix(node, 16).map_err(|_| unknown())?;
        let known = self
            .state
            .cluster
            .as_ref()
            .is_some_and(|c| c.nodes().contains(&id));
        known.then_some(id).ok_or_else(unknown)
    }

    /// Asks `node` (another node of the cluster) to act on `ask`.
    async fn ask(&self, node: NodeId, ask: &AdminAsk) -> Result<AdminReply, AdminError> {
        let cluster = self.state.cluster.as_ref().ok_or_else(|| {
            AdminError::NotFound(format!("no node {node:016x}: this server runs alone"))
        })?;
        cluster
            .ask(node, ask)
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))
    }

    /// Asks every other node `user` holds a session on to act on `ask`, all at once; their
    /// answers (failed if one did not answer).
    async fn ask_where(&self, user: &str, ask: &AdminAsk) -> Result<Vec<AdminReply>, AdminError> {
        let Some(cluster) = &self.state.cluster else {
            return Ok(Vec::new());
        };
        let asks = cluster
            .locate(user)
            .into_iter()
            .map(|node| self.ask(node, ask));
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }
}
