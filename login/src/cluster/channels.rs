//! Channels across the cluster: every node relays its publications on `NAME.channels`
//! and applies the other nodes' ones ([`zserver::channels::Channels::apply_remote`]).
//! Channel presence (who is subscribed where) travels with the users' presence on
//! `NAME.presence` (`Announce::Joined`/`Left`), so that it has the same ordering, snapshots
//! and expiry of dead nodes.
//! The shared PostgreSQL store gives each durable channel its one order (an append must
//! follow the stored last offset); NATS only carries the publications, and a node that
//! missed one (NATS was away) fills the gap from the store.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use zserver::channels::{Channels, Member, PresenceChange, Relay, Relayed, StoredPublication};

use super::messages::Command;
use super::presence::RemoteView;
use super::NodeId;
use crate::lock;

/// Publications waiting for the NATS connection, at most (past it they are dropped here;
/// the other nodes catch up from the store at their next gap).
const QUEUE: usize = 65_536;

/// One publication on `NAME.channels` (postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Relaying {
    node: NodeId,
    channel: String,
    epoch: u64,
    offset: u64,
    at_unix_ms: i64,
    from: String,
    data: Vec<u8>,
}

/// This node's side of the channels bridge.
pub(crate) struct ChannelBridge {
    node: NodeId,
    subject: String,
    nats: async_nats::Client,
    handle: tokio::runtime::Handle,
    queue: async_channel::Sender<bytes::Bytes>,
    /// The presence actor, which announces this node's subscribers with its users.
    presence: async_channel::Sender<Command>,
    /// The other nodes' subscribers, as presence knows them.
    view: Arc<Mutex<RemoteView>>,
}

impl ChannelBridge {
    /// A bridge on `nats` for the cluster `prefix`; its sending task runs on `handle`.
    /// Channel presence goes with the users' presence: changes to the presence actor
    /// (`presence`), the other nodes' subscribers from its `view`.
    pub(super) fn new(
        node: NodeId,
        prefix: &str,
        nats: async_nats::Client,
        handle: tokio::runtime::Handle,
        presence: async_channel::Sender<Command>,
        view: Arc<Mutex<RemoteView>>,
    ) -> Arc<Self> {
        let subject = format!("{prefix}.channels");
        let (queue, queued) = async_channel::bounded::<bytes::Bytes>(QUEUE);
        let (out, to) = (nats.clone(), subject.clone());
        // One task, so that publications leave in the order they were made.
        handle.spawn(async move {
            while let Ok(payload) = queued.recv().await {
                if let Err(e) = out.publish(to.clone(), payload).await {
                    tracing::warn!(error = %e, "cannot relay a channel publication");
                }
            }
        });
        Arc::new(Self {
            node,
            subject,
            nats,
            handle,
            queue,
            presence,
            view,
        })
    }

    /// Applies the other nodes' publications to `channels` from now on.
    pub(crate) async fn start(&self, channels: Channels) -> Result<(), zserver::Error> {
        let (nats, subject, me) = (self.nats.clone(), self.subject.clone(), self.node);
        let subscribed = self
            .handle
            .spawn(async move {
                let subscription = nats.subscribe(subject).await?;
                nats.flush().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(subscription)
            })
            .await
            .map_err(|e| zserver::Error::msg(format!("cluster runtime failed: {e}")))?
            .map_err(|e| zserver::Error::msg(format!("cannot subscribe on NATS: {e}")))?;
        self.handle.spawn(async move {
            use futures_util::StreamExt;
            let mut subscription = subscribed;
            while let Some(message) = subscription.next().await {
                let Ok(r) = postcard::from_bytes::<Relaying>(&message.payload) else {
                    tracing::warn!("a malformed channel publication on NATS");
                    continue;
                };
                if r.node == me {
                    continue;
                }
                let relayed = Relayed {
                    channel: r.channel,
                    epoch: r.epoch,
                    publication: StoredPublication {
                        offset: r.offset,
                        at_unix_ms: r.at_unix_ms,
                        from: r.from,
                        data: r.data,
                    },
                };
                // In order, one at a time, off this runtime: a gap reads the store.
                let channels = channels.clone();
                let applied = blocking::unblock(move || channels.apply_remote(&relayed)).await;
                if let Err(e) = applied {
                    tracing::warn!(error = %e, "cannot apply a channel publication from another node");
                }
            }
        });
        Ok(())
    }
}

impl Relay for ChannelBridge {
    fn relay(&self, relayed: Relayed) {
        let message = Relaying {
            node: self.node,
            channel: relayed.channel,
            epoch: relayed.epoch,
            offset: relayed.publication.offset,
            at_unix_ms: relayed.publication.at_unix_ms,
            from: relayed.publication.from,
            data: relayed.publication.data,
        };
        match postcard::to_stdvec(&message) {
            Ok(payload) => {
                if self.queue.try_send(payload.into()).is_err() {
                    tracing::warn!(
                        "the channel relay's queue is full: a publication stays on this node"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode a channel publication"),
        }
    }

    fn relay_presence(&self, change: PresenceChange) {
        // The actor's inbox is unbounded: this never waits (it is called with the channel
        // locked), and presence changes are never dropped here.
        let _ = self.presence.try_send(Command::Channel(change));
    }

    fn remote_members(&self, channel: &str) -> Vec<Member> {
        lock(&self.view).members(channel)
    }
}
