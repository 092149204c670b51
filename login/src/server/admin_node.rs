//! The server API's work on this node: its figures and rates, a user's sessions here, and
//! the disconnects and unsubscribes that end them here, for this node's own API calls and
//! for another node's (`NAME.node.ID.admin`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::State;
use crate::cluster::{AdminAsk, AdminReply, NodeInfo, SessionInfo};
use crate::lock;

/// How far back the rates look.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Samples of the counters (publications, deliveries, pushes) taken at each look at the
/// figures, the oldest dropped past [`RATE_WINDOW`].
#[derive(Default)]
pub(super) struct Rates {
    samples: VecDeque<(Instant, [u64; 3])>,
}

impl Rates {
    /// Records `now`'s counters; the rate of each since the oldest sample of the last
    /// [`RATE_WINDOW`] (0 if there is none: the first look, or the first after a long
    /// pause).
    fn sample(&mut self, now: Instant, counts: [u64; 3]) -> [f64; 3] {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let rates = match self.samples.front() {
            Some((at, before)) if now > *at => {
                let secs = now.duration_since(*at).as_secs_f64();
                std::array::from_fn(|i| counts[i].saturating_sub(before[i]) as f64 / secs)
            }
            _ => [0.0; 3],
        };
        // At most one sample per 100 ms: a page polling fast does not grow the queue.
        let recent = self
            .samples
            .back()
            .is_some_and(|(at, _)| now.duration_since(*at) < Duration::from_millis(100));
        if !recent {
            self.samples.push_back((now, counts));
        }
        rates
    }
}

impl State {
    /// This node's id as the server API shows it.
    pub(super) fn node_name(&self) -> String {
        format!("{:016x}", self.instance)
    }

    /// This node's figures now.
    pub(super) fn node_info(&self) -> NodeInfo {
        let connections = lock(&self.server)
            .as_ref()
            .map_or(0, |s| s.connection_count());
        let (users, sessions) = {
            let mut sessions = lock(&self.sessions);
            sessions.prune();
            sessions.counts()
        };
        let counts = self.channels.counts();
        let metrics = self.metrics.snapshot();
        let pushes = metrics.pushes_live + metrics.pushes_stored;
        let now = Instant::now();
        let [publications_per_sec, deliveries_per_sec, pushes_per_sec] =
            lock(&self.rates).sample(now, [counts.published, counts.delivered, pushes]);
        NodeInfo {
            node: self.node_name(),
            connections: connections as u64,
            users: users as u64,
            sessions: sessions as u64,
            channels: self.channels.channel_count() as u64,
            publications: counts.published,
            deliveries: counts.delivered,
            pushes,
            publications_per_sec,
            deliveries_per_sec,
            pushes_per_sec,
            uptime_secs: now.duration_since(self.started).as_secs(),
        }
    }

    /// `user`'s sessions here.
    pub(super) fn local_session_info(&self, user: &str) -> Vec<SessionInfo> {
        let mut sessions = lock(&self.sessions);
        sessions.prune();
        sessions
            .of(user)
            .iter()
            .map(|conn| SessionInfo {
                node: self.node_name(),
                connection: conn.id(),
                address: conn.peer_addr().to_string(),
            })
            .collect()
    }

    /// Ends `user`'s sessions here (only the one on `connection`, if given), each told
    /// `reason` before its connection closes; how many.
    pub(super) async fn disconnect_local(
        &self,
        user: &str,
        connection: Option<u64>,
        reason: &str,
    ) -> u64 {
        let taken = lock(&self.sessions).take_user(user, connection);
        let count = taken.len() as u64;
        if count > 0 {
            tracing::info!(
                user,
                sessions = count,
                "disconnected through the server API"
            );
        }
        self.kick_all(user, taken, reason).await;
        count
    }

    /// Ends the subscriptions of `user`'s sessions here to `channel`, each client told
    /// `reason`; how many.
    pub(super) fn unsubscribe_local(&self, user: &str, channel: &str, reason: &str) -> u64 {
        let conns = self
            .local_sessions(&[user.to_owned()])
            .pop()
            .unwrap_or_default();
        conns
            .iter()
            .filter(|conn| self.channels.unsubscribe(conn, channel, reason))
            .count() as u64
    }

    /// Answers a server API request for this node (from this node or another).
    pub(super) async fn answer_admin(self: Arc<Self>, ask: AdminAsk) -> AdminReply {
        match ask {
            AdminAsk::Info => AdminReply::Info(self.node_info()),
            AdminAsk::Sessions { user } => AdminReply::Sessions(self.local_session_info(&user)),
            AdminAsk::Disconnect {
                user,
                connection,
                reason,
            } => AdminReply::Count(self.disconnect_local(&user, connection, &reason).await),
            AdminAsk::Unsubscribe {
                user,
                channel,
                reason,
            } => AdminReply::Count(self.unsubscribe_local(&user, &channel, &reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_counted_over_the_last_seconds() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        assert_eq!(rates.sample(t0, [0, 0, 0]), [0.0; 3]);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(rates.sample(t1, [20, 200, 2]), [10.0, 100.0, 1.0]);
        // Samples older than the window are dropped: the rate is of the recent past only.
        let t2 = t0 + Duration::from_secs(30);
        rates.sample(t2, [20, 200, 2]);
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(rates.sample(t3, [25, 200, 2]), [5.0, 0.0, 0.0]);
        // Fast looks add no samples.
        let before = rates.samples.len();
        for i in 0..100 {
            rates.sample(t3 + Duration::from_millis(i / 10), [25, 200, 2]);
        }
        assert!(rates.samples.len() <= before + 1);
    }
}
