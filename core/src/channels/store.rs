//! Durable history: where a server keeps the publications of its durable namespaces
//! ([`Namespace::durable`](super::Namespace::durable)), so that positions and recovery
//! survive a restart.

use super::wire::Member;
use crate::error::Error;

/// A channel's history as a [`HistoryStore`] gives it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredHistory {
    /// The history's epoch, as given to [`HistoryStore::create`].
    pub epoch: u64,
    /// The offset of the last publication appended (0 before the first).
    pub top: u64,
    /// The newest publications kept, oldest first.
    pub publications: Vec<StoredPublication>,
}

/// One publication in a [`HistoryStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPublication {
    /// Its offset.
    pub offset: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// Its author's user name (empty: the server).
    pub from: String,
    /// What was published.
    pub data: Vec<u8>,
}

/// Durable storage for channel history (an embedded database, or one a cluster shares).
///
/// Every method is blocking and atomic on its own. The server calls [`append`](Self::append)
/// before it delivers the publication to anyone and answers the publisher only after it
/// returns, so a publication that was acknowledged or seen is in the store.
pub trait HistoryStore: Send + Sync {
    /// The stored history of `channel`, with at most `keep` of its newest publications;
    /// `None` if it has none yet.
    fn load(&self, channel: &str, keep: usize) -> Result<Option<StoredHistory>, Error>;

    /// Records a new history for `channel` with `epoch` (no publications yet), unless it
    /// has one already (made meanwhile by another server sharing the store): the server
    /// loads the history again after this.
    fn create(&self, channel: &str, epoch: u64) -> Result<(), Error>;

    /// Appends `publication` to `channel`'s history at the offset one above the stored last
    /// one (`publication.offset` is not used), keeping at most `keep` of the newest
    /// publications (the store may drop older ones); returns the offset it got, or `None`
    /// (nothing stored) if the store has no history for `channel`. Appends from every server
    /// sharing the store are ordered by it: that is the channel's one order.
    fn append(
        &self,
        channel: &str,
        publication: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, Error>;
}

/// A publication made on this server, for a [`Relay`] to carry to the other servers of a
/// cluster, which apply it with [`Channels::apply_remote`](super::Channels::apply_remote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The channel's name.
    pub channel: String,
    /// The channel history's epoch (0 in a channel without history).
    pub epoch: u64,
    /// The publication (offset 0 in a channel without history).
    pub publication: StoredPublication,
}

/// A member joining or leaving a channel on this server, for a [`Relay`] to carry to the
/// other servers of a cluster, which apply it with
/// [`Channels::apply_remote_presence`](super::Channels::apply_remote_presence) (namespaces
/// with presence or join and leave events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The channel's name.
    pub channel: String,
    /// Who (on the server that relays it, `client` is the connection's id there; a relay
    /// hands the other servers an id unique in the cluster).
    pub member: Member,
    /// Joined (`true`) or left.
    pub joined: bool,
}

/// Carries this server's publications (and presence) to the other servers of a cluster, in
/// the order it is given them (one order per channel). Called with the channel locked:
/// queue, do not wait.
pub trait Relay: Send + Sync {
    /// Sends `publication` on.
    fn relay(&self, publication: Relayed);

    /// Sends a presence change on. The default sends nothing: presence then covers each
    /// server's own subscribers.
    fn relay_presence(&self, change: PresenceChange) {
        let _ = change;
    }

    /// The members of `channel` on the other servers, as the relay knows them (each with an
    /// id unique in the cluster). The default knows none.
    fn remote_members(&self, channel: &str) -> Vec<Member> {
        let _ = channel;
        Vec::new()
    }
}
