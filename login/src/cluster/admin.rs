//! What the server API asks of one node, wherever it was called: on `NAME.node.ID.admin`,
//! a request (`AdminAsk`, postcard) answered by that node (`AdminReply`). So every API
//! call works on any node: a disconnect, an unsubscribe or a look at a user's sessions
//! reaches the nodes the user is logged in on, and server info asks every node for its
//! figures.

use serde::{Deserialize, Serialize};

/// One node's figures, as [`Admin::info`](crate::server::Admin::info) shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id (16 hex digits): its cluster node id, or a server's own id alone.
    pub node: String,
    /// Connections open on it (logged in or not).
    pub connections: u64,
    /// Users with a session on it.
    pub users: u64,
    /// Sessions (logged-in connections) on it.
    pub sessions: u64,
    /// Channels it holds (with subscribers here, or with history).
    pub channels: u64,
    /// Channel publications made on it since it started (by users and by the API).
    pub publications: u64,
    /// Publications queued to its subscribers (publications × subscribers).
    pub deliveries: u64,
    /// Pushes to users it handled (delivered live or stored), one per recipient.
    pub pushes: u64,
    /// Publications per second, over the last few seconds (0 at the first look).
    pub publications_per_sec: f64,
    /// Deliveries to subscribers per second, over the last few seconds.
    pub deliveries_per_sec: f64,
    /// Pushes per second, over the last few seconds.
    pub pushes_per_sec: f64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
}

/// One session of a user, as [`Admin::sessions`](crate::server::Admin::sessions) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The node it is on (16 hex digits).
    pub node: String,
    /// Its connection id on that node (what a disconnect of one connection names).
    pub connection: u64,
    /// The client's address (behind a trusted proxy, the one the proxy announced).
    pub address: String,
}

/// A request to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AdminAsk {
    /// Its figures.
    Info,
    /// `user`'s sessions there.
    Sessions { user: String },
    /// End `user`'s sessions there (only the one on `connection`, if given), telling each
    /// client `reason`.
    Disconnect {
        user: String,
        connection: Option<u64>,
        reason: String,
    },
    /// End the subscriptions of `user`'s sessions there to `channel`.
    Unsubscribe {
        user: String,
        channel: String,
        reason: String,
    },
}

/// A node's answer to an [`AdminAsk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum AdminReply {
    /// Its figures.
    Info(NodeInfo),
    /// The sessions asked for.
    Sessions(Vec<SessionInfo>),
    /// How many sessions or subscriptions it ended.
    Count(u64),
}
