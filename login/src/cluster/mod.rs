//! Several login-server nodes as one service: presence, push and kicks shared through NATS.
//!
//! Each node connects to a NATS server and talks on subjects under the cluster's name
//! (`zserver` by default):
//!
//! | subject | what |
//! | --- | --- |
//! | `NAME.presence` | every node's [`Announce`]ments: logins, logouts, heartbeats, leaving |
//! | `NAME.node.ID.snapshot` | request [`SnapshotRequest`](presence::SnapshotRequest) → a page of the node's snapshot (postcard `Option<SnapshotPage>`) |
//! | `NAME.node.ID.deliver` | request [`Handover`] → [`Handled`]: the outcome of each push, or nothing done |
//! | `NAME.stored` | users messages were just stored for (postcard `Vec<String>`) |
//! | `NAME.failed` | a failed login's rate-limit keys ([`FailedLogin`]), counted by every node |
//! | `NAME.accounts` | empty: an account was deleted or its password changed on that node; every node looks in the store now |
//! | `NAME.node.ID.admin` | request `AdminAsk` → `AdminReply`: the server API's calls that act on that node |
//! | `NAME.channels` | every node's channel publications, applied by the others (see `channels.rs`) |
//!
//! The NATS client runs on a small tokio runtime of its own, so a node on any of zserver's
//! back ends can join. Accounts and offline messages are not here: clustered nodes share a
//! PostgreSQL store. See `docs/CLUSTER.md` for the topology and what fails how.

mod actor;
pub mod admin;
mod channels;
mod config;
mod handle;
mod messages;
mod outbound;
pub mod presence;

use std::future::Future;
use std::pin::Pin;

pub(crate) use admin::{AdminAsk, AdminReply};
pub use admin::{NodeInfo, SessionInfo};
pub(crate) use channels::ChannelBridge;
pub use config::ClusterConfig;
pub(crate) use handle::Cluster;
pub use messages::{Deliver, FailedLogin, Handled, Handover, Outcome};
pub(crate) use outbound::Answer;
pub use presence::{Announce, NodeId, Snapshot};

/// A boxed future the cluster can run on its runtime.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the cluster needs from the local login server.
pub(crate) trait LocalSessions: Send + Sync + 'static {
    /// Takes the hand-over (if this node wins its claim in the shared store), sends each push
    /// to those of its users logged in here, and stores it for the others. The whole batch
    /// must be answered well within the sender's request time-out.
    fn deliver_local(self: std::sync::Arc<Self>, handover: Handover) -> BoxFuture<Handled>;
    /// Ends `user`'s session on `connection` (a newer login elsewhere won).
    fn kick(&self, user: String, connection: u64) -> BoxFuture<()>;
    /// Messages were stored for `users`: for each of them logged in here, a future that takes
    /// their messages from the store and delivers them now (one look at the sessions for all).
    fn collect(&self, users: Vec<String>) -> Vec<BoxFuture<()>>;
    /// A login failed on another node: count it against these limiter keys here too.
    fn count_failure(&self, keys: Vec<String>);
    /// A subscriber on another node joined or left a channel: this node's subscribers of
    /// it get the event.
    fn channel_presence(&self, change: &zserver::channels::PresenceChange);
    /// A node deleted an account or changed a password: look for account changes in the
    /// store now, rather than at the next poll.
    fn accounts_changed(&self);
    /// Answers a server API request that acts on this node (a disconnect, its figures).
    fn admin(self: std::sync::Arc<Self>, ask: AdminAsk) -> BoxFuture<AdminReply>;
}
