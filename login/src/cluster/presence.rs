//! Who is online where: the presence protocol's state machines, without any I/O.
//!
//! Every node announces its own users on one shared subject ([`Announce`]): `Online` and
//! `Offline` as they log in and out, numbered by a per-node sequence, and a `Heartbeat` with
//! the current number every heartbeat interval. Every other node keeps a [`RemoteView`] of
//! them. A view that misses a number (it joined late, or a message was lost) asks that node
//! for a [`Snapshot`] and carries on from it; a node not heard from within the node time-out
//! is dropped with all its users, which is how a node that died leaves presence.
//!
//! A user may hold a number of sessions at once (the login server's `max_sessions`), across
//! all nodes. More than that (logins on several nodes, or logins racing) is resolved by
//! "newest logins win": each login carries its time, node and connection, and a node holding
//! one of the user's sessions that is not among the newest `max_sessions` kicks it
//! ([`Action::Kick`]) as soon as it hears of the newer ones. Every node decides the same
//! from the same stamps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zserver::channels::{Member, PresenceChange};

/// A node's identity: random, new at every start (a restarted node is a new node).
pub type NodeId = u64;

/// When a session began, in milliseconds since the Unix epoch, on which node and
/// connection: ordered, so that of two logins of one user the greater is the newer, and
/// unique in the cluster, so that it names the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoginStamp {
    /// The login's wall-clock time.
    pub at_ms: i64,
    /// The node it happened on (breaks ties).
    pub node: NodeId,
    /// The connection on that node (breaks ties between logins on one node).
    pub connection: u64,
}

/// What a node publishes on the shared presence subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Announce {
    /// `user` logged in on `node` (its `seq`-th presence change).
    Online {
        /// The announcing node.
        node: NodeId,
        /// The node's presence sequence number after this change.
        seq: u64,
        /// Who.
        user: String,
        /// When (the login's stamp).
        stamp: LoginStamp,
    },
    /// `user`'s session on `connection` of `node` ended.
    Offline {
        /// The announcing node.
        node: NodeId,
        /// The node's presence sequence number after this change.
        seq: u64,
        /// Who.
        user: String,
        /// The connection the session was on.
        connection: u64,
    },
    /// A subscriber joined `channel` on `node` (namespaces with presence or join and leave
    /// events): channel presence, replicated like the users'.
    Joined {
        /// The announcing node.
        node: NodeId,
        /// The node's presence sequence number after this change.
        seq: u64,
        /// The channel.
        channel: String,
        /// Who, with their connection id on `node`.
        member: Member,
    },
    /// The subscriber on connection `client` of `node` left `channel`.
    Left {
        /// The announcing node.
        node: NodeId,
        /// The node's presence sequence number after this change.
        seq: u64,
        /// The channel.
        channel: String,
        /// Their connection id on `node`.
        client: u64,
    },
    /// `node` is alive; its presence is at `seq`.
    Heartbeat {
        /// The announcing node.
        node: NodeId,
        /// Its current presence sequence number.
        seq: u64,
    },
    /// `node` is shutting down: drop it now rather than at its time-out.
    Leaving {
        /// The announcing node.
        node: NodeId,
    },
}

impl Announce {
    /// The node that published it.
    pub fn node(&self) -> NodeId {
        match self {
            Announce::Online { node, .. }
            | Announce::Offline { node, .. }
            | Announce::Joined { node, .. }
            | Announce::Left { node, .. }
            | Announce::Heartbeat { node, .. }
            | Announce::Leaving { node } => *node,
        }
    }

    /// The sequence number of a change (not of a heartbeat or a leaving).
    fn change_seq(&self) -> Option<u64> {
        match self {
            Announce::Online { seq, .. }
            | Announce::Offline { seq, .. }
            | Announce::Joined { seq, .. }
            | Announce::Left { seq, .. } => Some(*seq),
            Announce::Heartbeat { .. } | Announce::Leaving { .. } => None,
        }
    }
}

/// The id a member on `node`'s connection `client` has on the other nodes: a mix of both,
/// unique in the cluster as far as 63 random bits go, with the top bit set so that it never
/// equals a connection id of the node showing it (those count up from 1).
pub fn cluster_member_id(node: NodeId, client: u64) -> u64 {
    // splitmix64's finaliser over the pair.
    let mut z = node ^ client.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1 << 63
}

/// A node's whole presence at one sequence number, sent on request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The sequence number it is current at.
    pub seq: u64,
    /// Its sessions: each user with a session's stamp (a user with several, several times).
    pub users: Vec<(String, LoginStamp)>,
    /// Its channels' subscribers (namespaces with presence or join and leave events).
    pub members: Vec<(String, Member)>,
}

/// Sessions per snapshot page: a page stays well under NATS's default 1 MiB payload limit
/// (a session is at most about 65 bytes: a 32-byte name and a stamp).
pub const SNAPSHOT_PAGE: usize = 4096;

/// A request for one page of a node's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// `None`: take a new snapshot (and answer its first page); `Some(seq)`: a page of the
    /// snapshot taken at `seq`.
    pub seq: Option<u64>,
    /// Which page, from 0.
    pub page: u32,
}

/// One page of a snapshot, or `None` in its place if that snapshot is no longer kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPage {
    /// The sequence number the snapshot is current at.
    pub seq: u64,
    /// This page's number.
    pub page: u32,
    /// How many pages the snapshot has.
    pub pages: u32,
    /// Its users.
    pub users: Vec<(String, LoginStamp)>,
    /// Its channels' subscribers.
    pub members: Vec<(String, Member)>,
}

/// The snapshots a node took lately, kept a little while so that the pages of one are all
/// from the same moment even while its users keep changing.
#[derive(Debug)]
pub struct SnapshotCache {
    keep_for: Duration,
    kept: Vec<(Instant, Snapshot)>,
}

impl SnapshotCache {
    /// Most snapshots kept at once.
    const KEEP: usize = 4;

    /// Keeps each snapshot for `keep_for`.
    pub fn new(keep_for: Duration) -> Self {
        Self {
            keep_for,
            kept: Vec::new(),
        }
    }

    /// Answers a page request; `None` if it names a snapshot no longer kept, or no such page.
    pub fn page(
        &mut self,
        local: &LocalPresence,
        request: SnapshotRequest,
        now: Instant,
    ) -> Option<SnapshotPage> {
        let keep_for = self.keep_for;
        self.kept
            .retain(|(taken, _)| now.duration_since(*taken) < keep_for);
        let seq = match request.seq {
            Some(seq) => seq,
            None => {
                let snapshot = local.snapshot();
                let seq = snapshot.seq;
                self.kept.retain(|(_, s)| s.seq != seq);
                if self.kept.len() >= Self::KEEP {
                    self.kept.remove(0);
                }
                self.kept.push((now, snapshot));
                seq
            }
        };
        let (_, snapshot) = self.kept.iter().find(|(_, s)| s.seq == seq)?;
        let longest = snapshot.users.len().max(snapshot.members.len());
        let pages = longest.div_ceil(SNAPSHOT_PAGE).max(1);
        let page = usize::try_from(request.page).ok().filter(|p| *p < pages)?;
        fn part<T: Clone>(list: &[T], page: usize) -> Vec<T> {
            list.iter()
                .skip(page * SNAPSHOT_PAGE)
                .take(SNAPSHOT_PAGE)
                .cloned()
                .collect()
        }
        Some(SnapshotPage {
            seq,
            page: request.page,
            pages: u32::try_from(pages).unwrap_or(u32::MAX),
            users: part(&snapshot.users, page),
            members: part(&snapshot.members, page),
        })
    }
}

/// This node's own sessions, and the announcements that keep the others' views of them
/// right.
#[derive(Debug)]
pub struct LocalPresence {
    node: NodeId,
    seq: u64,
    /// Most sessions one user may hold in the whole cluster.
    max_sessions: usize,
    /// Each user's sessions here, oldest first.
    users: HashMap<String, Vec<LoginStamp>>,
    /// Each channel's subscribers here.
    members: HashMap<String, Vec<Member>>,
}

impl LocalPresence {
    /// An empty presence for `node`, whose users may hold `max_sessions` sessions each
    /// (at least one) in the whole cluster.
    pub fn new(node: NodeId, max_sessions: usize) -> Self {
        Self {
            node,
            seq: 0,
            max_sessions: max_sessions.max(1),
            users: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// `member` subscribed to `channel` here.
    pub fn joined(&mut self, channel: &str, member: Member) -> Announce {
        let members = self.members.entry(channel.to_owned()).or_default();
        members.retain(|m| m.client != member.client);
        members.push(member.clone());
        self.seq += 1;
        Announce::Joined {
            node: self.node,
            seq: self.seq,
            channel: channel.to_owned(),
            member,
        }
    }

    /// The subscriber on connection `client` left `channel` here; nothing to announce if
    /// presence did not hold them.
    pub fn left(&mut self, channel: &str, client: u64) -> Option<Announce> {
        let members = self.members.get_mut(channel)?;
        let at = members.iter().position(|m| m.client == client)?;
        members.swap_remove(at);
        if members.is_empty() {
            self.members.remove(channel);
        }
        self.seq += 1;
        Some(Announce::Left {
            node: self.node,
            seq: self.seq,
            channel: channel.to_owned(),
            client,
        })
    }

    /// `user` logged in here on `connection` at `at_ms` (beside their other sessions).
    pub fn online(&mut self, user: &str, connection: u64, at_ms: i64) -> Announce {
        let stamp = LoginStamp {
            at_ms,
            node: self.node,
            connection,
        };
        let sessions = self.users.entry(user.to_owned()).or_default();
        sessions.retain(|s| s.connection != connection);
        sessions.push(stamp);
        self.seq += 1;
        Announce::Online {
            node: self.node,
            seq: self.seq,
            user: user.to_owned(),
            stamp,
        }
    }

    /// `user`'s session on `connection` ended; nothing to announce if presence holds no such
    /// session (it was never announced, or ended before).
    pub fn offline(&mut self, user: &str, connection: u64) -> Option<Announce> {
        let sessions = self.users.get_mut(user)?;
        let at = sessions.iter().position(|s| s.connection == connection)?;
        sessions.remove(at);
        if sessions.is_empty() {
            self.users.remove(user);
        }
        self.seq += 1;
        Some(Announce::Offline {
            node: self.node,
            seq: self.seq,
            user: user.to_owned(),
            connection,
        })
    }

    /// The periodic "alive" message.
    pub fn heartbeat(&self) -> Announce {
        Announce::Heartbeat {
            node: self.node,
            seq: self.seq,
        }
    }

    /// Everything, for a node that asked.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            seq: self.seq,
            users: self
                .users
                .iter()
                .flat_map(|(user, sessions)| sessions.iter().map(|s| (user.clone(), *s)))
                .collect(),
            members: self
                .members
                .iter()
                .flat_map(|(channel, ms)| ms.iter().map(|m| (channel.clone(), m.clone())))
                .collect(),
        }
    }

    /// The local sessions of `user`, oldest first.
    pub fn sessions(&self, user: &str) -> &[LoginStamp] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The local sessions of `user` that are not among their newest `max_sessions` in the
    /// cluster, given the stamps of their sessions `elsewhere`: to be kicked.
    fn excess(&self, user: &str, elsewhere: impl Iterator<Item = LoginStamp>) -> Vec<Action> {
        let local = self.sessions(user);
        if local.is_empty() {
            return Vec::new();
        }
        let mut all: Vec<LoginStamp> = elsewhere.chain(local.iter().copied()).collect();
        if all.len() <= self.max_sessions {
            return Vec::new();
        }
        all.sort_unstable_by(|a, b| b.cmp(a));
        all[self.max_sessions..]
            .iter()
            .filter(|s| s.node == self.node)
            .map(|s| Action::Kick {
                user: user.to_owned(),
                connection: s.connection,
            })
            .collect()
    }
}

/// What the I/O layer must do after a [`RemoteView`] step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask this node for a [`Snapshot`] and feed it to [`RemoteView::on_snapshot`].
    Resync(NodeId),
    /// End the local session of `user` on `connection`: newer logins hold the user's
    /// sessions.
    Kick {
        /// Who.
        user: String,
        /// The local connection their session is on.
        connection: u64,
    },
    /// A subscriber on another node joined or left a channel: tell this node's subscribers
    /// (the member's id is the cluster's, [`cluster_member_id`]).
    Presence(PresenceChange),
}

/// Most announcements one remote node's view holds back while waiting for its snapshot;
/// past that, they are dropped and the snapshot asked for again.
const MAX_HELD: usize = 65_536;

#[derive(Debug)]
struct RemoteNode {
    last_heard: Instant,
    /// The sequence number `users` is current at; `None` while waiting for a snapshot.
    seq: Option<u64>,
    /// When the last snapshot was asked for.
    asked: Option<Instant>,
    /// Changes heard while waiting for a snapshot, applied on top of it when it comes.
    held: Vec<Announce>,
    /// Each user's sessions on that node.
    users: HashMap<String, Vec<LoginStamp>>,
    /// Each channel's subscribers on that node, with their ids in the cluster.
    members: HashMap<String, Vec<Member>>,
}

/// What applying one change to a node's view did.
enum Applied {
    /// Nothing (an old change).
    Nothing,
    /// `user` gained a session (which may push one of ours out).
    Online(String),
    /// A subscriber joined or left a channel.
    Presence(Action),
}

impl RemoteNode {
    fn new(now: Instant) -> Self {
        Self {
            last_heard: now,
            seq: None,
            asked: None,
            held: Vec::new(),
            users: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// Leave events for every subscriber this node had: it is gone.
    fn all_leave(&self) -> Vec<Action> {
        self.members
            .iter()
            .flat_map(|(channel, ms)| ms.iter().map(move |m| leave(channel, m.clone())))
            .collect()
    }

    /// Applies a change if it is the next one; `Err` on a gap.
    fn apply(&mut self, id: NodeId, announce: Announce) -> Result<Applied, ()> {
        let Some(at) = self.seq else {
            return Err(());
        };
        if announce.change_seq().is_some_and(|seq| seq <= at) {
            return Ok(Applied::Nothing);
        }
        match announce {
            Announce::Joined {
                seq,
                channel,
                mut member,
                ..
            } if seq == at + 1 => {
                self.seq = Some(seq);
                member.client = cluster_member_id(id, member.client);
                let members = self.members.entry(channel.clone()).or_default();
                members.retain(|m| m.client != member.client);
                members.push(member.clone());
                Ok(Applied::Presence(Action::Presence(PresenceChange {
                    channel,
                    member,
                    joined: true,
                })))
            }
            Announce::Left {
                seq,
                channel,
                client,
                ..
            } if seq == at + 1 => {
                self.seq = Some(seq);
                let client = cluster_member_id(id, client);
                let Some(members) = self.members.get_mut(&channel) else {
                    return Ok(Applied::Nothing);
                };
                let Some(at) = members.iter().position(|m| m.client == client) else {
                    return Ok(Applied::Nothing);
                };
                let gone = members.swap_remove(at);
                if members.is_empty() {
                    self.members.remove(&channel);
                }
                Ok(Applied::Presence(leave(&channel, gone)))
            }
            Announce::Online {
                seq, user, stamp, ..
            } if seq == at + 1 => {
                self.seq = Some(seq);
                let sessions = self.users.entry(user.clone()).or_default();
                sessions.retain(|s| s.connection != stamp.connection);
                sessions.push(stamp);
                Ok(Applied::Online(user))
            }
            Announce::Offline {
                seq,
                user,
                connection,
                ..
            } if seq == at + 1 => {
                self.seq = Some(seq);
                if let Some(sessions) = self.users.get_mut(&user) {
                    sessions.retain(|s| s.connection != connection);
                    if sessions.is_empty() {
                        self.users.remove(&user);
                    }
                }
                Ok(Applied::Nothing)
            }
            // Heartbeats are ordered after the changes they count: one ahead of the view
            // means changes were lost.
            Announce::Heartbeat { seq, .. } if seq <= at => Ok(Applied::Nothing),
            _ => Err(()),
        }
    }

    /// Marks the view stale; asks for a snapshot unless one was asked for recently.
    fn resync(&mut self, id: NodeId, now: Instant, every: Duration) -> Option<Action> {
        self.seq = None;
        if self.held.len() > MAX_HELD {
            self.held.clear();
        }
        if self
            .asked
            .is_none_or(|asked| now.duration_since(asked) >= every)
        {
            self.asked = Some(now);
            Some(Action::Resync(id))
        } else {
            None
        }
    }
}

/// This node's view of every other node's users.
#[derive(Debug)]
pub struct RemoteView {
    me: NodeId,
    node_timeout: Duration,
    nodes: HashMap<NodeId, RemoteNode>,
}

impl RemoteView {
    /// An empty view for node `me`; nodes silent for `node_timeout` are dropped.
    pub fn new(me: NodeId, node_timeout: Duration) -> Self {
        Self {
            me,
            node_timeout,
            nodes: HashMap::new(),
        }
    }

    /// Takes in an announcement heard at `now`.
    pub fn on_announce(
        &mut self,
        announce: Announce,
        now: Instant,
        local: &LocalPresence,
    ) -> Vec<Action> {
        let id = announce.node();
        if id == self.me {
            return Vec::new();
        }
        if let Announce::Leaving { .. } = announce {
            return self
                .nodes
                .remove(&id)
                .map_or_else(Vec::new, |gone| gone.all_leave());
        }
        let every = self.node_timeout / 2;
        let node = self.nodes.entry(id).or_insert_with(|| RemoteNode::new(now));
        node.last_heard = now;
        if node.seq.is_none() {
            // Waiting for a snapshot: keep changes for later; ask again if the answer is late.
            if !matches!(announce, Announce::Heartbeat { .. }) {
                node.held.push(announce);
            }
            return node.resync(id, now, every).into_iter().collect();
        }
        let held = announce.change_seq().is_some();
        match node.apply(id, announce.clone()) {
            Ok(Applied::Nothing) => Vec::new(),
            Ok(Applied::Online(user)) => self.kicks(&user, local),
            Ok(Applied::Presence(action)) => vec![action],
            Err(()) => {
                if held {
                    node.held.push(announce);
                }
                node.asked = None;
                node.resync(id, now, every).into_iter().collect()
            }
        }
    }

    /// Takes in the snapshot `node` answered with, then the changes held back meanwhile.
    pub fn on_snapshot(
        &mut self,
        id: NodeId,
        snapshot: Snapshot,
        now: Instant,
        local: &LocalPresence,
    ) -> Vec<Action> {
        if id == self.me {
            return Vec::new();
        }
        let every = self.node_timeout / 2;
        let node = self.nodes.entry(id).or_insert_with(|| RemoteNode::new(now));
        node.last_heard = now;
        if node.seq.is_some_and(|at| at >= snapshot.seq) {
            return Vec::new();
        }
        node.seq = Some(snapshot.seq);
        node.users.clear();
        for (user, stamp) in snapshot.users {
            node.users.entry(user).or_default().push(stamp);
        }
        let mut members: HashMap<String, Vec<Member>> = HashMap::new();
        for (channel, mut member) in snapshot.members {
            member.client = cluster_member_id(id, member.client);
            members.entry(channel).or_default().push(member);
        }
        // What changed since the view before: events for this node's subscribers.
        let mut actions = changes(&node.members, &members);
        node.members = members;
        let mut joined: Vec<String> = node.users.keys().cloned().collect();
        let mut held = std::mem::take(&mut node.held);
        held.sort_by_key(|a| a.change_seq().unwrap_or(0));
        let mut rest = held.into_iter();
        for announce in rest.by_ref() {
            match node.apply(id, announce) {
                Ok(Applied::Nothing) => {}
                Ok(Applied::Online(user)) => joined.push(user),
                Ok(Applied::Presence(action)) => actions.push(action),
                Err(()) => {
                    node.asked = None;
                    actions.extend(node.resync(id, now, every));
                    break;
                }
            }
        }
        node.held.extend(rest);
        if node.seq.is_some() {
            node.asked = None;
        }
        joined.sort_unstable();
        joined.dedup();
        for user in joined {
            actions.extend(self.kicks(&user, local));
        }
        actions
    }

    /// The local sessions of `user` to kick: those not among their newest sessions in the
    /// cluster, as far as this view knows (after a local login, or hearing of one elsewhere).
    pub fn kicks(&self, user: &str, local: &LocalPresence) -> Vec<Action> {
        local.excess(user, self.sessions(user))
    }

    /// The stamps of `user`'s sessions on other nodes.
    fn sessions<'a>(&'a self, user: &'a str) -> impl Iterator<Item = LoginStamp> + 'a {
        self.nodes
            .values()
            .filter_map(move |n| n.users.get(user))
            .flatten()
            .copied()
    }

    /// Drops the nodes not heard from within the time-out; returns them, and the leave
    /// events of their channels' subscribers.
    pub fn expire(&mut self, now: Instant) -> (Vec<NodeId>, Vec<Action>) {
        let timeout = self.node_timeout;
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_heard) > timeout)
            .map(|(id, _)| *id)
            .collect();
        let mut leaves = Vec::new();
        for id in &dead {
            if let Some(gone) = self.nodes.remove(id) {
                leaves.extend(gone.all_leave());
            }
        }
        (dead, leaves)
    }

    /// The subscribers of `channel` on the other nodes (ids the cluster's).
    pub fn members(&self, channel: &str) -> Vec<Member> {
        self.nodes
            .values()
            .filter_map(|n| n.members.get(channel))
            .flatten()
            .cloned()
            .collect()
    }

    /// The other nodes `user` holds a session on.
    pub fn locate(&self, user: &str) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.users.contains_key(user))
            .map(|(id, _)| *id)
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// How many sessions `user` holds on other nodes.
    pub fn count(&self, user: &str) -> usize {
        self.sessions(user).count()
    }

    /// The newest login of `user` on another node.
    pub fn newest(&self, user: &str) -> Option<LoginStamp> {
        self.sessions(user).max()
    }

    /// The time to stamp a new login of `user` with: the clock's `now_ms`, or just after
    /// the newest login known elsewhere if that is later, so that a second login always
    /// wins over one the view knows of, however far apart the nodes' clocks are.
    pub fn login_time(&self, user: &str, now_ms: i64) -> i64 {
        match self.newest(user) {
            Some(known) => now_ms.max(known.at_ms.saturating_add(1)),
            None => now_ms,
        }
    }

    /// Every user online on another node (unsorted, without duplicates).
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .nodes
            .values()
            .flat_map(|n| n.users.keys().cloned())
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// The nodes known now.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
}

/// The leave event of `member` in `channel`.
fn leave(channel: &str, member: Member) -> Action {
    Action::Presence(PresenceChange {
        channel: channel.to_owned(),
        member,
        joined: false,
    })
}

/// The join and leave events that take a node's subscribers from `before` to `after`.
fn changes(
    before: &HashMap<String, Vec<Member>>,
    after: &HashMap<String, Vec<Member>>,
) -> Vec<Action> {
    let has = |map: &HashMap<String, Vec<Member>>, channel: &str, client: u64| {
        map.get(channel)
            .is_some_and(|ms| ms.iter().any(|m| m.client == client))
    };
    let mut actions = Vec::new();
    for (channel, ms) in before {
        for m in ms.iter().filter(|m| !has(after, channel, m.client)) {
            actions.push(leave(channel, m.clone()));
        }
    }
    for (channel, ms) in after {
        for m in ms.iter().filter(|m| !has(before, channel, m.client)) {
            actions.push(Action::Presence(PresenceChange {
                channel: channel.clone(),
                member: m.clone(),
                joined: true,
            }));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(3);

    fn pair() -> (LocalPresence, LocalPresence, RemoteView) {
        (
            LocalPresence::new(1, 1),
            LocalPresence::new(2, 1),
            RemoteView::new(2, T),
        )
    }

    #[test]
    fn announcements_in_order_build_the_view() {
        let (mut a, b, mut view) = pair();
        let now = Instant::now();
        // First contact: a heartbeat from an unknown node asks for its snapshot.
        assert_eq!(
            view.on_announce(a.heartbeat(), now, &b),
            [Action::Resync(1)]
        );
        assert!(view.on_snapshot(1, a.snapshot(), now, &b).is_empty());
        let ann = a.online("ann", 10, 1000);
        assert!(view.on_announce(ann, now, &b).is_empty());
        let bob = a.online("bob", 11, 1001);
        assert!(view.on_announce(bob, now, &b).is_empty());
        assert_eq!(view.locate("ann"), [1]);
        assert_eq!(view.users(), ["ann", "bob"]);
        let off = a.offline("ann", 10).unwrap();
        assert!(view.on_announce(off, now, &b).is_empty());
        assert!(view.locate("ann").is_empty());
        assert!(view.on_announce(a.heartbeat(), now, &b).is_empty());
    }

    #[test]
    fn a_gap_asks_for_a_snapshot_which_repairs_the_view() {
        let (mut a, b, mut view) = pair();
        let now = Instant::now();
        view.on_announce(a.heartbeat(), now, &b);
        view.on_snapshot(1, a.snapshot(), now, &b);
        let _lost = a.online("ann", 10, 1000);
        let carol = a.online("carol", 12, 1002);
        assert_eq!(view.on_announce(carol, now, &b), [Action::Resync(1)]);
        // Asked once; more announcements before the answer do not ask again.
        assert!(view.on_announce(a.heartbeat(), now, &b).is_empty());
        view.on_snapshot(1, a.snapshot(), now, &b);
        assert_eq!(view.users(), ["ann", "carol"]);
        // A lost last change shows in the next heartbeat.
        let _lost = a.offline("carol", 12);
        let later = now + T / 2;
        assert_eq!(
            view.on_announce(a.heartbeat(), later, &b),
            [Action::Resync(1)]
        );
        view.on_snapshot(1, a.snapshot(), later, &b);
        assert_eq!(view.users(), ["ann"]);
    }

    #[test]
    fn silent_nodes_expire_and_leaving_nodes_go_at_once() {
        let (mut a, b, mut view) = pair();
        let mut c = LocalPresence::new(3, 1);
        let now = Instant::now();
        a.online("ann", 10, 1000);
        c.online("cid", 30, 1000);
        view.on_snapshot(1, a.snapshot(), now, &b);
        view.on_snapshot(3, c.snapshot(), now, &b);
        assert_eq!(view.users(), ["ann", "cid"]);
        view.on_announce(a.heartbeat(), now + T, &b);
        assert!(view.expire(now + T).0.is_empty());
        assert_eq!(view.expire(now + T + Duration::from_millis(1)).0, [3]);
        assert_eq!(view.users(), ["ann"]);
        view.on_announce(Announce::Leaving { node: 1 }, now + T, &b);
        assert!(view.users().is_empty());
        assert!(view.nodes().is_empty());
    }

    #[test]
    fn newest_login_wins_across_nodes() {
        let (mut a, mut b, mut view_b) = pair();
        let now = Instant::now();
        let mut view_a = RemoteView::new(1, T);
        view_a.on_snapshot(2, b.snapshot(), now, &a);
        view_b.on_snapshot(1, a.snapshot(), now, &b);
        // ann logs in on node 2 first, then again on node 1.
        let first = b.online("ann", 20, 1000);
        assert!(view_a.on_announce(first, now, &a).is_empty());
        let second = a.online("ann", 10, 2000);
        assert_eq!(
            view_b.on_announce(second, now, &b),
            [Action::Kick {
                user: "ann".into(),
                connection: 20
            }]
        );
        // Node 1 hearing of the older login kicks nothing.
        assert_eq!(view_a.locate("ann"), [2]);
        assert!(view_a.on_snapshot(2, b.snapshot(), now, &a).is_empty());
        // Equal times: the greater node id wins, the same on both sides.
        let (mut x, mut y) = (LocalPresence::new(1, 1), LocalPresence::new(2, 1));
        x.online("tie", 1, 5000);
        y.online("tie", 2, 5000);
        let (xs, ys) = (x.sessions("tie").to_vec(), y.sessions("tie").to_vec());
        assert!(y.excess("tie", xs.into_iter()).is_empty());
        assert_eq!(x.excess("tie", ys.into_iter()).len(), 1);
    }

    #[test]
    fn offline_of_an_unknown_session_is_not_announced() {
        let mut a = LocalPresence::new(1, 8);
        a.online("ann", 10, 1000);
        a.online("ann", 11, 1001);
        assert_eq!(a.offline("ann", 12), None);
        assert!(a.offline("ann", 10).is_some());
        assert_eq!(a.sessions("ann").len(), 1);
        assert!(a.offline("ann", 11).is_some());
        assert_eq!(a.offline("ann", 11), None);
        assert_eq!(a.offline("nobody", 1), None);
    }

    #[test]
    fn own_announcements_are_ignored() {
        let mut b = LocalPresence::new(2, 1);
        let mut view = RemoteView::new(2, T);
        let own = b.online("bob", 1, 1);
        assert!(view.on_announce(own, Instant::now(), &b).is_empty());
        assert!(view.nodes().is_empty());
    }

    #[test]
    fn changes_during_a_pending_snapshot_are_held_and_applied_after_it() {
        let (mut a, b, mut view) = pair();
        let now = Instant::now();
        a.online("ann", 10, 1000);
        // Joins late: the first change it hears asks for a snapshot.
        let bob = a.online("bob", 11, 1001);
        assert_eq!(view.on_announce(bob, now, &b), [Action::Resync(1)]);
        let snapshot = a.snapshot();
        // Churn goes on while the answer travels; nothing more is asked for.
        let changes = [
            a.online("cid", 12, 1002),
            a.offline("ann", 10).unwrap(),
            a.online("dan", 13, 1003),
        ];
        for change in changes {
            assert!(view.on_announce(change, now, &b).is_empty());
        }
        assert!(view.on_snapshot(1, snapshot, now, &b).is_empty());
        assert_eq!(view.users(), ["bob", "cid", "dan"]);
        // In step again: the next change and heartbeat apply without asking.
        assert!(view
            .on_announce(a.online("eve", 14, 1004), now, &b)
            .is_empty());
        assert!(view.on_announce(a.heartbeat(), now, &b).is_empty());
        assert_eq!(view.users(), ["bob", "cid", "dan", "eve"]);
    }

    #[test]
    fn a_snapshot_with_a_newer_login_kicks_the_local_session() {
        let (mut a, mut b, mut view) = pair();
        let now = Instant::now();
        b.online("ann", 20, 1000);
        a.online("ann", 10, 2000);
        assert_eq!(
            view.on_snapshot(1, a.snapshot(), now, &b),
            [Action::Kick {
                user: "ann".into(),
                connection: 20
            }]
        );
    }

    #[test]
    fn snapshots_are_paged_from_one_moment() {
        let mut a = LocalPresence::new(1, 1);
        for i in 0..(2 * SNAPSHOT_PAGE + 10) {
            a.online(&format!("u{i}"), i as u64, 1000);
        }
        let mut cache = SnapshotCache::new(Duration::from_secs(10));
        let now = Instant::now();
        let first = cache
            .page(&a, SnapshotRequest { seq: None, page: 0 }, now)
            .unwrap();
        assert_eq!((first.pages, first.users.len()), (3, SNAPSHOT_PAGE));
        // Changes after the snapshot do not show in its later pages.
        a.online("late", 99_999, 1000);
        let mut users = first.users.clone();
        for page in 1..first.pages {
            let more = cache
                .page(
                    &a,
                    SnapshotRequest {
                        seq: Some(first.seq),
                        page,
                    },
                    now,
                )
                .unwrap();
            assert_eq!(more.seq, first.seq);
            users.extend(more.users);
        }
        assert_eq!(users.len(), 2 * SNAPSHOT_PAGE + 10);
        assert!(users.iter().all(|(u, _)| u != "late"));
        let bad = SnapshotRequest {
            seq: Some(first.seq),
            page: 3,
        };
        assert_eq!(cache.page(&a, bad, now), None);
        let unknown = SnapshotRequest {
            seq: Some(12345),
            page: 0,
        };
        assert_eq!(cache.page(&a, unknown, now), None);
        // Kept only a while.
        let later = now + Duration::from_secs(11);
        let expired = SnapshotRequest {
            seq: Some(first.seq),
            page: 1,
        };
        assert_eq!(cache.page(&a, expired, later), None);
        // An empty node has one empty page.
        let empty = LocalPresence::new(2, 1);
        let page = cache
            .page(&empty, SnapshotRequest { seq: None, page: 0 }, now)
            .unwrap();
        assert_eq!((page.pages, page.users.len()), (1, 0));
    }

    #[test]
    fn a_second_login_wins_even_on_a_node_whose_clock_is_behind() {
        let (mut a, mut b, mut view_b) = pair();
        let now = Instant::now();
        let mut view_a = RemoteView::new(1, T);
        // Node 1's clock is an hour ahead of node 2's.
        a.online("ann", 10, 3_600_000 + 1000);
        view_b.on_snapshot(1, a.snapshot(), now, &b);
        view_a.on_snapshot(2, b.snapshot(), now, &a);
        let at = view_b.login_time("ann", 2000);
        assert_eq!(at, 3_600_000 + 1001);
        let second = b.online("ann", 20, at);
        assert_eq!(
            view_a.on_announce(second, now, &a),
            [Action::Kick {
                user: "ann".into(),
                connection: 10
            }]
        );
        // Without anything known elsewhere, the clock's time is used.
        assert_eq!(view_b.login_time("bob", 2000), 2000);
    }

    #[test]
    fn a_user_holds_their_newest_sessions_across_nodes() {
        // Two sessions each at most: ann on node 1 twice, then on node 2.
        let (mut a, mut b) = (LocalPresence::new(1, 2), LocalPresence::new(2, 2));
        let (mut view_a, mut view_b) = (RemoteView::new(1, T), RemoteView::new(2, T));
        let now = Instant::now();
        view_a.on_snapshot(2, b.snapshot(), now, &a);
        view_b.on_snapshot(1, a.snapshot(), now, &b);
        for (connection, at) in [(10, 1000), (11, 1001)] {
            let on = a.online("ann", connection, at);
            assert!(view_a.kicks("ann", &a).is_empty(), "two fit");
            assert!(view_b.on_announce(on, now, &b).is_empty());
        }
        assert_eq!(view_b.count("ann"), 2);
        // A third, on node 2: node 1 kicks its oldest, and only that one.
        let third = b.online("ann", 20, 1002);
        assert!(view_b.kicks("ann", &b).is_empty(), "the newest stays");
        assert_eq!(
            view_a.on_announce(third, now, &a),
            [Action::Kick {
                user: "ann".into(),
                connection: 10
            }]
        );
        // Its end is announced, and node 2 sees two sessions again, one per node.
        let off = a.offline("ann", 10).unwrap();
        assert!(view_b.on_announce(off, now, &b).is_empty());
        assert_eq!(view_b.count("ann"), 1);
        assert_eq!(view_b.locate("ann"), [1]);
        // A snapshot carries every session of a user.
        let mut fresh = RemoteView::new(3, T);
        let c = LocalPresence::new(3, 2);
        fresh.on_snapshot(1, a.snapshot(), now, &c);
        fresh.on_snapshot(2, b.snapshot(), now, &c);
        assert_eq!(fresh.count("ann"), 2);
        assert_eq!(fresh.locate("ann"), [1, 2]);
        assert_eq!(fresh.users(), ["ann"]);
    }

    fn member(client: u64, user: &str) -> Member {
        Member {
            client,
            user: user.into(),
            info: Vec::new(),
        }
    }

    fn change(channel: &str, client: u64, user: &str, joined: bool) -> Action {
        Action::Presence(PresenceChange {
            channel: channel.into(),
            member: member(client, user),
            joined,
        })
    }

    #[test]
    fn channel_members_travel_with_presence_and_leave_with_their_node() {
        let (mut a, b, mut view) = pair();
        let now = Instant::now();
        view.on_snapshot(1, a.snapshot(), now, &b);
        // A join on node 1 reaches node 2's view, with an id unique in the cluster.
        let id = cluster_member_id(1, 7);
        assert_ne!(id, cluster_member_id(3, 7), "the node is in the id");
        assert_ne!(id, 7);
        let join = a.joined("chat:lobby", member(7, "ann"));
        assert_eq!(
            view.on_announce(join, now, &b),
            [change("chat:lobby", id, "ann", true)]
        );
        assert_eq!(view.members("chat:lobby"), [member(id, "ann")]);
        assert!(view.members("chat:other").is_empty());
        // A leave, then a leave of someone not there (nothing to say).
        let left = a.left("chat:lobby", 7).unwrap();
        assert_eq!(
            view.on_announce(left, now, &b),
            [change("chat:lobby", id, "ann", false)]
        );
        assert!(a.left("chat:lobby", 7).is_none());
        assert!(view.members("chat:lobby").is_empty());
        // A lost join shows at the next heartbeat; the snapshot brings it, as a join event.
        let _lost = a.joined("chat:lobby", member(8, "bob"));
        let resync = view.on_announce(a.heartbeat(), now, &b);
        assert_eq!(resync, [Action::Resync(1)]);
        let bob = cluster_member_id(1, 8);
        assert_eq!(
            view.on_snapshot(1, a.snapshot(), now, &b),
            [change("chat:lobby", bob, "bob", true)]
        );
        // A node that leaves takes its subscribers with it, each a leave event.
        assert_eq!(
            view.on_announce(Announce::Leaving { node: 1 }, now, &b),
            [change("chat:lobby", bob, "bob", false)]
        );
        assert!(view.members("chat:lobby").is_empty());
        // And one that goes silent, at its time-out.
        let mut c = LocalPresence::new(3, 1);
        c.joined("chat:x", member(1, "cid"));
        view.on_snapshot(3, c.snapshot(), now, &b);
        let (dead, leaves) = view.expire(now + T + Duration::from_millis(1));
        assert_eq!(dead, [3]);
        assert_eq!(
            leaves,
            [change("chat:x", cluster_member_id(3, 1), "cid", false)]
        );
    }
}
