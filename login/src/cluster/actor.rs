//! The task that owns this node's presence and its view of the others, on the cluster's
//! runtime.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;

use super::messages::{
    encode, Command, FailedLogin, Handled, Handover, Subjects, MAX_FAILED_KEYS, MAX_FAILED_KEY_LEN,
};
use super::presence::{
    Action, Announce, LocalPresence, RemoteView, Snapshot, SnapshotCache, SnapshotPage,
    SnapshotRequest,
};
use super::{AdminAsk, LocalSessions, NodeId};
use crate::lock;
use crate::store::now_unix_ms;

/// What a node listens to.
pub(super) struct Subscriptions {
    /// Every node's announcements.
    pub(super) presence: async_nats::Subscriber,
    /// Requests for this node's snapshot.
    pub(super) snapshot_asks: async_nats::Subscriber,
    /// Pushes for this node's users.
    pub(super) deliver_asks: async_nats::Subscriber,
    /// Names of users something was just stored for.
    pub(super) stored: async_nats::Subscriber,
    /// Failed logins on every node.
    pub(super) failed: async_nats::Subscriber,
    /// Account changes made on every node.
    pub(super) accounts: async_nats::Subscriber,
    /// The server API's requests for this node.
    pub(super) admin_asks: async_nats::Subscriber,
}

/// The task that owns this node's presence and its view of the others.
pub(super) struct Actor {
    pub(super) local: LocalPresence,
    pub(super) snapshots: SnapshotCache,
    pub(super) view: Arc<Mutex<RemoteView>>,
    pub(super) nats: async_nats::Client,
    pub(super) subjects: Arc<Subjects>,
    pub(super) sessions: Weak<dyn LocalSessions>,
    pub(super) commands: async_channel::Sender<Command>,
    pub(super) request_timeout: Duration,
}

enum Input {
    Command(Command),
    Presence(async_nats::Message),
    SnapshotAsked(async_nats::Message),
    DeliverAsked(async_nats::Message),
    AdminAsked(async_nats::Message),
    Stored(async_nats::Message),
    Failed(async_nats::Message),
    Accounts,
    Snapshot(NodeId, Snapshot),
    Tick,
    Ended,
}

impl Actor {
    pub(super) async fn run(
        mut self,
        inbox: async_channel::Receiver<Command>,
        mut subscriptions: Subscriptions,
        heartbeat: Duration,
    ) {
        let (snap_tx, snap_rx) = async_channel::unbounded::<(NodeId, Snapshot)>();
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = tokio::select! {
                c = inbox.recv() => c.map_or(Input::Ended, Input::Command),
                m = subscriptions.presence.next() => m.map_or(Input::Ended, Input::Presence),
                m = subscriptions.snapshot_asks.next() => m.map_or(Input::Ended, Input::SnapshotAsked),
                m = subscriptions.deliver_asks.next() => m.map_or(Input::Ended, Input::DeliverAsked),
                m = subscriptions.admin_asks.next() => m.map_or(Input::Ended, Input::AdminAsked),
                m = subscriptions.stored.next() => m.map_or(Input::Ended, Input::Stored),
                m = subscriptions.failed.next() => m.map_or(Input::Ended, Input::Failed),
                m = subscriptions.accounts.next() => m.map_or(Input::Ended, |_| Input::Accounts),
                s = snap_rx.recv() => match s {
                    Ok((node, snap)) => Input::Snapshot(node, snap),
                    Err(_) => Input::Ended,
                },
                _ = tick.tick() => Input::Tick,
            };
            let now = Instant::now();
            let actions = match input {
                Input::Ended => {
                    tracing::error!("cluster: a NATS subscription ended; this node left presence");
                    break;
                }
                Input::Command(Command::Leave(done)) => {
                    self.publish(&Announce::Leaving {
                        node: self.local.node(),
                    })
                    .await;
                    let _ = self.nats.flush().await;
                    let _ = done.try_send(());
                    break;
                }
                Input::Command(Command::Online { user, connection }) => {
                    let at_ms = lock(&self.view).login_time(&user, now_unix_ms());
                    let announce = self.local.online(&user, connection.id(), at_ms);
                    self.publish(&announce).await;
                    // Past the user's most sessions with the ones elsewhere: ours that are
                    // oldest go (the other nodes do the same with theirs on hearing of it).
                    let kicks = lock(&self.view).kicks(&user, &self.local);
                    let commands = self.commands.clone();
                    tokio::spawn(async move {
                        connection.closed().await;
                        let _ = commands
                            .send(Command::Offline {
                                user,
                                connection: connection.id(),
                            })
                            .await;
                    });
                    kicks
                }
                Input::Command(Command::Offline { user, connection }) => {
                    if let Some(announce) = self.local.offline(&user, connection) {
                        self.publish(&announce).await;
                    }
                    Vec::new()
                }
                Input::Command(Command::Channel(change)) => {
                    let announce = match change.joined {
                        true => Some(self.local.joined(&change.channel, change.member)),
                        false => self.local.left(&change.channel, change.member.client),
                    };
                    if let Some(announce) = announce {
                        self.publish(&announce).await;
                    }
                    Vec::new()
                }
                Input::Presence(message) => match postcard::from_bytes(&message.payload) {
                    Ok(announce) => lock(&self.view).on_announce(announce, now, &self.local),
                    Err(e) => {
                        tracing::warn!("cluster: undecodable presence message ignored: {e}");
                        Vec::new()
                    }
                },
                Input::SnapshotAsked(message) => {
                    let request = postcard::from_bytes::<SnapshotRequest>(&message.payload);
                    if let (Some(reply), Ok(request)) = (message.reply, request) {
                        let page = self.snapshots.page(&self.local, request, now);
                        if let Err(e) = self.nats.publish(reply, encode(&page)).await {
                            tracing::warn!("cluster: cannot answer a snapshot request: {e}");
                        }
                    }
                    Vec::new()
                }
                Input::DeliverAsked(message) => {
                    self.answer_delivery(message);
                    Vec::new()
                }
                Input::AdminAsked(message) => {
                    self.answer_admin(message);
                    Vec::new()
                }
                Input::Stored(message) => {
                    self.collect_stored(&message.payload);
                    Vec::new()
                }
                Input::Failed(message) => {
                    self.count_failure(&message.payload);
                    Vec::new()
                }
                Input::Accounts => {
                    if let Some(sessions) = self.sessions.upgrade() {
                        sessions.accounts_changed();
                    }
                    Vec::new()
                }
                Input::Snapshot(node, snapshot) => {
                    lock(&self.view).on_snapshot(node, snapshot, now, &self.local)
                }
                Input::Tick => {
                    self.publish(&self.local.heartbeat()).await;
                    let (dead, leaves) = lock(&self.view).expire(now);
                    for node in dead {
                        tracing::info!("cluster: node {node:016x} dropped (silent too long)");
                    }
                    leaves
                }
            };
            for action in actions {
                self.act(action, &snap_tx);
            }
        }
    }

    async fn publish(&self, announce: &Announce) {
        if let Err(e) = self
            .nats
            .publish(self.subjects.presence.clone(), encode(announce))
            .await
        {
            tracing::warn!("cluster: cannot publish presence: {e}");
        }
    }

    fn act(&self, action: Action, snapshots: &async_channel::Sender<(NodeId, Snapshot)>) {
        match action {
            Action::Resync(node) => {
                let nats = self.nats.clone();
                let subject = self.subjects.snapshot(node);
                let timeout = self.request_timeout;
                let snapshots = snapshots.clone();
                tokio::spawn(async move {
                    match fetch_snapshot(&nats, subject, timeout).await {
                        Some(snapshot) => {
                            let _ = snapshots.send((node, snapshot)).await;
                        }
                        // The next announcement from it asks again.
                        None => tracing::debug!("cluster: no snapshot from {node:016x}"),
                    }
                });
            }
            Action::Kick { user, connection } => {
                if let Some(sessions) = self.sessions.upgrade() {
                    tokio::spawn(sessions.kick(user, connection));
                }
            }
            Action::Presence(change) => {
                if let Some(sessions) = self.sessions.upgrade() {
                    sessions.channel_presence(&change);
                }
            }
        }
    }

    /// Messages were stored for these users: those logged in here (they logged in while the
    /// sender thought them offline) get them now.
    fn collect_stored(&self, payload: &[u8]) {
        let Ok(users) = postcard::from_bytes::<Vec<String>>(payload) else {
            tracing::warn!("cluster: undecodable stored-message notice ignored");
            return;
        };
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        for collect in sessions.collect(users) {
            tokio::spawn(collect);
        }
    }

    /// A login failed on another node: count it here too (ours were counted already).
    fn count_failure(&self, payload: &[u8]) {
        let notice = match postcard::from_bytes::<FailedLogin>(payload) {
            Ok(notice) => notice,
            Err(e) => {
                tracing::warn!("cluster: undecodable failed-login notice ignored: {e}");
                return;
            }
        };
        if notice.node == self.local.node() {
            return;
        }
        if notice.keys.len() > MAX_FAILED_KEYS
            || notice.keys.iter().any(|k| k.len() > MAX_FAILED_KEY_LEN)
        {
            tracing::warn!("cluster: oversized failed-login notice ignored");
            return;
        }
        if let Some(sessions) = self.sessions.upgrade() {
            sessions.count_failure(notice.keys);
        }
    }

    /// Answers a server API request for this node, on a task of its own.
    fn answer_admin(&self, message: async_nats::Message) {
        let Some(reply) = message.reply else {
            return;
        };
        let ask = match postcard::from_bytes::<AdminAsk>(&message.payload) {
            Ok(ask) => ask,
            Err(e) => {
                tracing::warn!("cluster: undecodable admin request ignored: {e}");
                return;
            }
        };
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        let nats = self.nats.clone();
        tokio::spawn(async move {
            let answer = sessions.admin(ask).await;
            if let Err(e) = nats.publish(reply, encode(&answer)).await {
                tracing::warn!("cluster: cannot answer an admin request: {e}");
            }
        });
    }

    fn answer_delivery(&self, message: async_nats::Message) {
        let Some(reply) = message.reply else {
            return;
        };
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        let nats = self.nats.clone();
        tokio::spawn(async move {
            let handled = match postcard::from_bytes::<Handover>(&message.payload) {
                Ok(handover) => sessions.deliver_local(handover).await,
                Err(e) => {
                    tracing::warn!("cluster: undecodable push ignored: {e}");
                    Handled::Refused
                }
            };
            if let Err(e) = nats.publish(reply, encode(&handled)).await {
                tracing::warn!("cluster: cannot answer a push: {e}");
            }
        });
    }
}

/// Asks for a node's snapshot page by page; `None` if it does not answer in time or keeps
/// changing faster than the pages can be fetched (three tries).
async fn fetch_snapshot(
    nats: &async_nats::Client,
    subject: String,
    timeout: Duration,
) -> Option<Snapshot> {
    let ask = |request: SnapshotRequest| {
        let (nats, subject) = (nats.clone(), subject.clone());
        async move {
            let reply = tokio::time::timeout(timeout, nats.request(subject, encode(&request)))
                .await
                .ok()?
                .ok()?;
            postcard::from_bytes::<Option<SnapshotPage>>(&reply.payload)
                .ok()
                .flatten()
        }
    };
    'tries: for _ in 0..3 {
        let first = ask(SnapshotRequest { seq: None, page: 0 }).await?;
        let (mut users, mut members) = (first.users, first.members);
        for page in 1..first.pages {
            let request = SnapshotRequest {
                seq: Some(first.seq),
                page,
            };
            match ask(request).await {
                Some(more) => {
                    users.extend(more.users);
                    members.extend(more.members);
                }
                None => continue 'tries,
            }
        }
        return Some(Snapshot {
            seq: first.seq,
            users,
            members,
        });
    }
    None
}
