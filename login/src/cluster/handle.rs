//! [`Cluster`]: this node's handle on its cluster, which the login server calls.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use zserver::{Connection, Error};

use super::actor::{Actor, Subscriptions};
use super::messages::{encode, stored_notices, Command, Deliver, FailedLogin, Outcome, Subjects};
use super::outbound::Answer;
use super::presence::{LocalPresence, RemoteView, SnapshotCache};
use super::{outbound, AdminAsk, AdminReply, ClusterConfig, LocalSessions, NodeId};
use crate::lock;
use crate::own_runtime::OwnedRuntime;

/// This node's membership of a cluster.
pub(crate) struct Cluster {
    node: NodeId,
    config: ClusterConfig,
    /// Kept for its threads; `handle` is how work reaches it.
    _runtime: OwnedRuntime,
    handle: tokio::runtime::Handle,
    nats: async_nats::Client,
    subjects: Arc<Subjects>,
    view: Arc<Mutex<RemoteView>>,
    outbound: Arc<outbound::Outbound>,
    commands: async_channel::Sender<Command>,
    inbox: async_channel::Receiver<Command>,
}

impl Cluster {
    /// Connects to NATS (failing within 5 s if it cannot be reached); call [`Self::start`]
    /// once the local server exists.
    pub(crate) async fn connect(config: ClusterConfig) -> Result<Self, Error> {
        config.check()?;
        let runtime = OwnedRuntime::new(1, "zserver-cluster")?;
        let handle = runtime.handle();
        let node = {
            use argon2::password_hash::rand_core::{OsRng, RngCore};
            OsRng.next_u64()
        };
        let (addr, options) = config.connect_options()?;
        let name = format!("zserver-{}-{node:016x}", config.name);
        let nats = handle
            .spawn(async move {
                options
                    .name(name)
                    .connection_timeout(Duration::from_secs(5))
                    .connect(addr)
                    .await
            })
            .await
            .map_err(|e| Error::msg(format!("cluster runtime failed: {e}")))?
            .map_err(|e| {
                let url = config.nats_url_redacted();
                Error::msg(format!("cannot reach NATS at {url}: {e}"))
            })?;
        let (commands, inbox) = async_channel::unbounded();
        let subjects = Arc::new(Subjects {
            presence: format!("{}.presence", config.name),
            prefix: config.name.clone(),
        });
        let outbound =
            outbound::Outbound::new(node, nats.clone(), subjects.clone(), config.request_timeout);
        Ok(Self {
            node,
            subjects,
            outbound: Arc::new(outbound),
            view: Arc::new(Mutex::new(RemoteView::new(node, config.node_timeout))),
            config,
            _runtime: runtime,
            handle,
            nats,
            commands,
            inbox,
        })
    }

    /// Subscribes and starts announcing; `local` answers pushes and kicks from other nodes.
    /// A user holds at most `max_sessions` sessions in the whole cluster.
    pub(crate) async fn start(
        &self,
        local: Weak<dyn LocalSessions>,
        max_sessions: usize,
    ) -> Result<(), Error> {
        let nats = self.nats.clone();
        let subjects = self.subjects.clone();
        let me = self.node;
        let subscribed = self
            .handle
            .spawn(async move {
                let subscriptions = Subscriptions {
                    presence: nats.subscribe(subjects.presence.clone()).await?,
                    snapshot_asks: nats.subscribe(subjects.snapshot(me)).await?,
                    deliver_asks: nats.subscribe(subjects.deliver(me)).await?,
                    stored: nats.subscribe(subjects.stored()).await?,
                    failed: nats.subscribe(subjects.failed()).await?,
                    accounts: nats.subscribe(subjects.accounts()).await?,
                    admin_asks: nats.subscribe(subjects.admin(me)).await?,
                };
                nats.flush().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(subscriptions)
            })
            .await
            .map_err(|e| Error::msg(format!("cluster runtime failed: {e}")))?
            .map_err(|e| Error::msg(format!("cannot subscribe on NATS: {e}")))?;
        let actor = Actor {
            local: LocalPresence::new(me, max_sessions),
            snapshots: SnapshotCache::new(self.config.request_timeout * 5),
            view: self.view.clone(),
            nats: self.nats.clone(),
            subjects: self.subjects.clone(),
            sessions: local,
            commands: self.commands.clone(),
            request_timeout: self.config.request_timeout,
        };
        self.handle
            .spawn(actor.run(self.inbox.clone(), subscribed, self.config.heartbeat));
        Ok(())
    }

    /// The bridge that carries channel publications between the nodes.
    pub(crate) fn channel_bridge(&self) -> Arc<super::ChannelBridge> {
        super::ChannelBridge::new(
            self.node,
            &self.subjects.prefix,
            self.nats.clone(),
            self.handle.clone(),
            self.commands.clone(),
            self.view.clone(),
        )
    }

    /// This node's id.
    pub(crate) fn node(&self) -> NodeId {
        self.node
    }

    /// `user` logged in here on `connection`: announce it, and announce the end of the
    /// session when the connection closes.
    pub(crate) fn online(&self, user: &str, connection: &Connection) {
        let _ = self.commands.try_send(Command::Online {
            user: user.to_owned(),
            connection: connection.clone(),
        });
    }

    /// `user`'s session on `connection` ended (a logout; closed connections are noticed).
    pub(crate) fn offline(&self, user: &str, connection: u64) {
        let _ = self.commands.try_send(Command::Offline {
            user: user.to_owned(),
            connection,
        });
    }

    /// The other nodes `user` holds a session on.
    pub(crate) fn locate(&self, user: &str) -> Vec<NodeId> {
        lock(&self.view).locate(user)
    }

    /// How many sessions `user` holds on the other nodes.
    pub(crate) fn sessions_elsewhere(&self, user: &str) -> usize {
        lock(&self.view).count(user)
    }

    /// Users online on the other nodes.
    pub(crate) fn remote_users(&self) -> Vec<String> {
        lock(&self.view).users()
    }

    /// The other nodes known now.
    pub(crate) fn nodes(&self) -> Vec<NodeId> {
        lock(&self.view).nodes()
    }

    /// Asks each node to deliver its push to its users, all nodes at once; for each, its
    /// parts' recipients and answers (a push to very many users goes in several parts).
    pub(crate) async fn deliver(
        &self,
        pushes: Vec<(NodeId, Deliver)>,
    ) -> Vec<Vec<(Vec<String>, Answer)>> {
        let asked: Vec<Vec<_>> = pushes
            .into_iter()
            .map(|(node, push)| {
                outbound::split(push)
                    .into_iter()
                    .map(|part| {
                        let users = part.users.clone();
                        (users, self.outbound.push(&self.handle, node, part))
                    })
                    .collect()
            })
            .collect();
        let mut answers = Vec::with_capacity(asked.len());
        for parts in asked {
            let mut got = Vec::with_capacity(parts.len());
            for (users, answer) in parts {
                // A flusher that went away (the cluster stopping) did nothing with it.
                let none = Answer::Handled(Outcome::default());
                got.push((users, answer.await.unwrap_or(none)));
            }
            answers.push(got);
        }
        answers
    }

    /// Asks `node` to act on a server API request (a disconnect, its figures); its answer,
    /// or an error if it did not answer within the request time-out.
    pub(crate) async fn ask(&self, node: NodeId, ask: &AdminAsk) -> Result<AdminReply, Error> {
        let (nats, subject) = (self.nats.clone(), self.subjects.admin(node));
        let (payload, timeout) = (encode(ask), self.config.request_timeout);
        let asked = self.handle.spawn(async move {
            tokio::time::timeout(timeout, nats.request(subject, payload)).await
        });
        let unanswered = || Error::msg(format!("node {node:016x} did not answer"));
        let reply = match asked.await {
            Ok(Ok(Ok(reply))) => reply,
            _ => return Err(unanswered()),
        };
        postcard::from_bytes(&reply.payload).map_err(|_| unanswered())
    }

    /// This node's name in hand-over claims.
    pub(crate) fn claimer(&self) -> String {
        format!("{:016x}", self.node)
    }

    /// Tells every node (this one too) that messages were stored for `users`, so that a node
    /// where one of them logged in meanwhile delivers them at once.
    pub(crate) fn stored(&self, users: &[String]) {
        for payload in stored_notices(users) {
            self.publish_soon(self.subjects.stored(), payload, "stored messages");
        }
    }

    /// Tells the other nodes that a login failed here, so that they count it against `keys`
    /// too (best effort: while NATS is down each node counts its own).
    pub(crate) fn failed(&self, keys: Vec<String>) {
        let notice = FailedLogin {
            node: self.node,
            keys,
        };
        self.publish_soon(self.subjects.failed(), encode(&notice), "a failed login");
    }

    /// Tells every node (this one too) that an account was deleted or a password changed
    /// here, so that each looks in the store at once (best effort: each also polls it).
    pub(crate) fn accounts_changed(&self) {
        let subject = self.subjects.accounts();
        self.publish_soon(subject, bytes::Bytes::new(), "an account change");
    }

    /// Publishes `payload` on `subject` from the cluster's runtime, without waiting for it
    /// (a failure is logged as "cannot announce `what`").
    fn publish_soon(&self, subject: String, payload: bytes::Bytes, what: &'static str) {
        let nats = self.nats.clone();
        self.handle.spawn(async move {
            if let Err(e) = nats.publish(subject, payload).await {
                tracing::warn!("cluster: cannot announce {what}: {e}");
            }
        });
    }

    /// Announces that this node leaves, and stops (waits at most 2 s for NATS).
    pub(crate) async fn leave(&self) {
        let (done, left) = async_channel::bounded(1);
        if self.commands.try_send(Command::Leave(done)).is_err() {
            return;
        }
        let _ = self
            .handle
            .spawn(async move { tokio::time::timeout(Duration::from_secs(2), left.recv()).await })
            .await;
    }
}
