//! What nodes say to each other on NATS, the subjects they say it on, and the commands the
//! local server gives its cluster actor.

use serde::{Deserialize, Serialize};
use zserver::Connection;

use super::NodeId;

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

/// Pushes one node asks another to deliver, in one NATS request, under an id that is
/// unique in the cluster. If the answer does not come in time, the asking node and the
/// asked one both claim the id in the shared store before acting on it, and only the
/// winner acts: the asked node delivers (or stores) the pushes, or the asking node stores
/// them. So a push held up in a stalled NATS is never both delivered late and stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    /// `NODE-SEQ`: the asking node's id in hex and its count of hand-overs.
    pub id: String,
    /// The pushes.
    pub pushes: Vec<Deliver>,
}

/// What the asked node did with a [`Handover`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handled {
    /// It won the claim and handled every push: for each, in order, its outcome.
    Taken(Vec<Outcome>),
    /// It did nothing: the asking node claimed the hand-over first (the request came late),
    /// or the store could not be asked.
    Refused,
}

/// What became of one push of a [`Handover`] that the asked node took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Recipients it was delivered to.
    pub reached: Vec<String>,
    /// Recipients it was stored for (logged out, or not reading), by the asked node.
    pub stored: Vec<String>,
}

/// A failed login on one node, which every other node counts towards its own limits (so a
/// guesser gains nothing by spreading attempts over the nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedLogin {
    /// The node it failed on (which counted it already).
    pub node: NodeId,
    /// The limiter's keys it counts against: `pair:ADDR/USER`, `addr:ADDR` and `user:USER`
    /// (a node counts only the kinds it knows).
    pub keys: Vec<String>,
}

/// Most user names in one notice on `NAME.stored`.
pub(super) const STORED_NOTICE: usize = 4096;

/// Most keys one [`FailedLogin`] may carry; a notice with more is ignored.
pub(super) const MAX_FAILED_KEYS: usize = 4;
/// Longest key in a [`FailedLogin`], in bytes; a notice with a longer one is ignored.
pub(super) const MAX_FAILED_KEY_LEN: usize = 128;

/// What the local server tells its cluster actor.
pub(super) enum Command {
    Online {
        user: String,
        connection: Connection,
    },
    Offline {
        user: String,
        connection: u64,
    },
    /// A subscriber joined (`member`) or left a channel here.
    Channel(zserver::channels::PresenceChange),
    Leave(async_channel::Sender<()>),
}

/// The NATS subjects of one cluster.
pub(super) struct Subjects {
    pub(super) presence: String,
    pub(super) prefix: String,
}

impl Subjects {
    pub(super) fn snapshot(&self, node: NodeId) -> String {
        format!("{}.node.{node:016x}.snapshot", self.prefix)
    }
    pub(super) fn deliver(&self, node: NodeId) -> String {
        format!("{}.node.{node:016x}.deliver", self.prefix)
    }
    pub(super) fn admin(&self, node: NodeId) -> String {
        format!("{}.node.{node:016x}.admin", self.prefix)
    }
    pub(super) fn stored(&self) -> String {
        format!("{}.stored", self.prefix)
    }
    pub(super) fn failed(&self) -> String {
        format!("{}.failed", self.prefix)
    }
    pub(super) fn accounts(&self) -> String {
        format!("{}.accounts", self.prefix)
    }
}

/// `value` in postcard (empty if it cannot be encoded).
pub(super) fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    postcard::to_stdvec(value)
        .map(bytes::Bytes::from)
        .unwrap_or_default()
}

/// The `NAME.stored` notices for `users`: at most [`STORED_NOTICE`] names each (user names
/// are at most 32 bytes), so a push to very many users stays far below NATS's payload limit.
pub(super) fn stored_notices(users: &[String]) -> Vec<bytes::Bytes> {
    users
        .chunks(STORED_NOTICE)
        .map(|chunk| encode(&chunk))
        .collect()
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
