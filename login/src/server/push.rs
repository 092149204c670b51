//! Push: messages to users logged in here, on other nodes, or stored for their next login;
//! kicks; and what the cluster asks of this node (deliveries, kicks, counted failures).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::{Connection, Error, Runtime};

use super::sessions::replaced;
use super::{db, store_err, State};
use crate::cluster::{
    Answer, BoxFuture, Deliver, Handled, Handover, LocalSessions, NodeId, Outcome,
};
use crate::lock;
use crate::protocol::{Incoming, PushReport, MAX_REPORTED};
use crate::store::check_name;
use zserver::Calls;

/// How long a push waits for room in one recipient's send buffer (their client is not
/// reading) before it stores the message for them instead; a kick waits as long, then closes
/// the connection anyway. Shorter than a cluster request's time-out, so that a node asked to
/// deliver answers in time.
const SEND_PATIENCE: Duration = Duration::from_secs(1);

/// How long the client of a session has to show that it read the stored messages sent to
/// it (its answer to a ping queued after them) before they are stored again.
pub(super) const CONFIRM_PATIENCE: Duration = Duration::from_secs(10);

/// How long a node asked to deliver pushes waits for its claim on them in the store before
/// it delivers them anyway (well within the asking node's time-out, with SEND_PATIENCE).
const CLAIM_PATIENCE: Duration = Duration::from_millis(500);

/// Sends `command` with `payload` on `conn`, waiting at most `patience` for room in its
/// buffer; whether it was queued (a send given up on queues nothing).
async fn send_patiently(
    runtime: &dyn Runtime,
    conn: &Connection,
    command: &str,
    payload: &[u8],
    patience: Duration,
) -> bool {
    futures_lite::future::or(
        async { conn.send_bytes(command, payload).await.is_ok() },
        async {
            runtime.sleep(patience).await;
            false
        },
    )
    .await
}

/// Sends `message` to every session of each recipient (`conns[i]`: recipient i's sessions
/// here, empty if none) all at once, so that one session that does not read holds up no one
/// else, each waiting at most `patience` for room; for each recipient, for each of their
/// sessions, whether it was queued.
async fn send_to_each(
    runtime: &dyn Runtime,
    conns: &[Vec<Connection>],
    message: &Incoming,
    patience: Duration,
) -> Vec<Vec<bool>> {
    let Ok(payload) = postcard::to_allocvec(message) else {
        return conns.iter().map(|c| vec![false; c.len()]).collect();
    };
    let sends = conns.iter().map(|sessions| {
        let payload = &payload;
        futures_util::future::join_all(
            sessions
                .iter()
                .map(move |conn| send_patiently(runtime, conn, "message", payload, patience)),
        )
    });
    futures_util::future::join_all(sends).await
}

/// Tells `conn` it was kicked (waiting at most [`SEND_PATIENCE`]), then closes it.
pub(super) async fn kick_connection(runtime: &dyn Runtime, conn: &Connection, why: &str) {
    let payload = postcard::to_allocvec(why).unwrap_or_default();
    send_patiently(runtime, conn, "kicked", &payload, SEND_PATIENCE).await;
    conn.begin_close();
}

impl State {
    /// Ends `user`'s sessions on `conns` (already taken out of the sessions): the cluster
    /// hears of it now, and the future tells each why, then closes it (all at once).
    pub(super) fn kick_all(&self, user: &str, conns: Vec<Connection>, why: &str) -> BoxFuture<()> {
        if let Some(cluster) = &self.cluster {
            for conn in &conns {
                cluster.offline(user, conn.id());
            }
        }
        let (runtime, why) = (self.runtime.clone(), why.to_owned());
        Box::pin(async move {
            let kicks = conns
                .iter()
                .map(|conn| kick_connection(&*runtime, conn, &why));
            futures_util::future::join_all(kicks).await;
        })
    }

    /// Delivers `text` from `from` to each of `users`: here, through the node they are logged
    /// in on, or (offline, or unreachable) stored for their next login.
    pub(super) async fn push_to(
        self: &Arc<Self>,
        from: &str,
        mut users: Vec<String>,
        text: &str,
    ) -> Result<PushReport, Error> {
        let message = Incoming {
            from: from.to_owned(),
            text: text.to_owned(),
        };
        let mut report = PushReport::default();
        for user in &users {
            check_name(user).map_err(store_err)?;
        }
        let mut once = HashSet::new();
        users.retain(|u| once.insert(u.clone()));
        // Every session here gets it, and every node holding another session of the user.
        let conns = self.local_sessions(&users);
        let sent = send_to_each(&*self.runtime, &conns, &message, SEND_PATIENCE).await;
        let mut reached: HashSet<String> = HashSet::new();
        let mut remote: HashMap<NodeId, Vec<String>> = HashMap::new();
        for (user, sent) in users.iter().zip(sent) {
            if sent.contains(&true) {
                reached.insert(user.clone());
            }
            for node in self
                .cluster
                .as_ref()
                .map(|c| c.locate(user))
                .unwrap_or_default()
            {
                remote.entry(node).or_default().push(user.clone());
            }
        }
        let (mut undecided, mut stored_there) = (Vec::new(), HashSet::new());
        if let Some(cluster) = &self.cluster {
            let pushes = remote
                .into_iter()
                .map(|(node, users)| {
                    let push = Deliver {
                        from: from.to_owned(),
                        users,
                        text: text.to_owned(),
                    };
                    (node, push)
                })
                .collect();
            for (users, answer) in cluster.deliver(pushes).await.into_iter().flatten() {
                match answer {
                    // Those neither reached nor stored there (its store failed) are stored
                    // here, unless reached elsewhere.
                    Answer::Handled(outcome) => {
                        reached.extend(outcome.reached);
                        stored_there.extend(outcome.stored);
                    }
                    Answer::Unanswered(id) => undecided.push((id, users)),
                }
            }
        }
        // A node that did not answer in time may still get the request: whoever claims the
        // hand-over first acts on it, that node (delivering) or this one (storing).
        let (mut unconfirmed, mut unknown) = (HashSet::new(), None);
        if let Some(cluster) = &self.cluster {
            for (id, users) in undecided {
                let me = cluster.claimer();
                match db(self, move |s| s.claim_handover(&id, &me)).await {
                    Ok(true) => {}
                    Ok(false) => unconfirmed.extend(users),
                    Err(e) => {
                        unconfirmed.extend(users.iter().cloned());
                        unknown = Some((users, e));
                    }
                }
            }
        }
        // Each recipient once: reached anywhere, else stored there, else (given up on by
        // a node that may have delivered it) unconfirmed, else stored here.
        let mut offline = Vec::new();
        for user in users {
            if reached.contains(&user) {
                report.delivered.push(user);
            } else if stored_there.contains(&user) {
                report.stored.push(user);
            } else if unconfirmed.contains(&user) {
                if unknown.as_ref().is_none_or(|(u, _)| !u.contains(&user)) {
                    report.unconfirmed.push(user);
                }
            } else {
                offline.push(user);
            }
        }
        let stored = if offline.is_empty() {
            Ok(())
        } else {
            let (to, from, text) = (offline.clone(), from.to_owned(), text.to_owned());
            db(self, move |s| s.queue_for_many(&to, &from, &text)).await
        };
        // Also on an error for an unknown recipient: the others' messages were stored.
        if let Some(cluster) = &self.cluster {
            // A recipient may have logged in somewhere since we looked: that node takes it.
            cluster.stored(&offline);
        }
        let stored_here = offline.clone();
        report.stored.extend(offline);
        if self.cluster.is_none() {
            // A recipient may have logged in here since we looked, and taken their messages
            // before this one was stored: it is delivered now, not at their next login.
            for deliver in self.collect(stored_here) {
                deliver.await;
            }
        }
        report.delivered_count = report.delivered.len() as u64;
        report.stored_count = report.stored.len() as u64;
        self.metrics
            .pushed(report.delivered.len(), report.stored.len());
        if let Some((users, e)) = unknown {
            return Err(Error::msg(format!(
                "cannot tell whether {} got it: their node did not answer and the store failed \
                 ({e}); the push was delivered or stored for everyone else",
                users.join(", ")
            )));
        }
        stored.map(|()| report)
    }

    /// Takes `user`'s stored messages and sends them on each of `conns`, their sessions
    /// here, then waits for a client's answer to a ping queued after them (which proves it
    /// read them). If no session's client answers (they ended, or stopped reading), they are
    /// stored again for the next login: a client may see one twice, never none.
    fn deliver_stored(&self, user: String, conns: Vec<Connection>) -> BoxFuture<()> {
        let (store, runtime) = (self.store.clone(), self.runtime.clone());
        Box::pin(async move {
            let (st, name) = (store.clone(), user.clone());
            let Ok(messages) = blocking::unblock(move || st.take_messages(&name)).await else {
                return;
            };
            if messages.is_empty() {
                return;
            }
            let payloads: Vec<Vec<u8>> = messages
                .iter()
                .map(|m| {
                    let incoming = Incoming {
                        from: m.from.clone(),
                        text: m.text.clone(),
                    };
                    postcard::to_allocvec(&incoming).unwrap_or_default()
                })
                .collect();
            let runtime = &*runtime;
            let reads = conns.iter().map(|conn| {
                let payloads = &payloads;
                async move {
                    for payload in payloads {
                        if !send_patiently(runtime, conn, "message", payload, SEND_PATIENCE).await {
                            return false;
                        }
                    }
                    let ping = async { conn.ping().await.is_ok() };
                    let patience = async {
                        runtime.sleep(CONFIRM_PATIENCE).await;
                        false
                    };
                    futures_lite::future::or(ping, patience).await
                }
            });
            let read = futures_util::future::join_all(reads).await.contains(&true);
            if !read {
                blocking::unblock(move || {
                    for m in messages {
                        let _ = store.queue_message(&user, &m.from, &m.text);
                    }
                })
                .await;
            }
        })
    }
}

impl State {
    /// Sends each push to those of its users logged in here; for each push, the ones reached.
    fn send_batch(&self, pushes: Vec<Deliver>) -> BoxFuture<Vec<Vec<String>>> {
        // One look at the sessions for every recipient of every push in the batch.
        let all: Vec<String> = pushes
            .iter()
            .flat_map(|p| p.users.iter().cloned())
            .collect();
        let mut conns = self.local_sessions(&all).into_iter();
        let looked_up: Vec<_> = pushes
            .into_iter()
            .map(|push| {
                let mine: Vec<_> = conns.by_ref().take(push.users.len()).collect();
                (push, mine)
            })
            .collect();
        let runtime = self.runtime.clone();
        Box::pin(async move {
            // The whole batch gets SEND_PATIENCE, well within the sender's time-out; a
            // recipient found not reading is not waited for again in the same batch.
            let deadline = runtime.now() + SEND_PATIENCE;
            let mut stalled = std::collections::HashSet::new();
            let mut reached = Vec::with_capacity(looked_up.len());
            for (push, mut conns) in looked_up {
                for sessions in &mut conns {
                    sessions.retain(|c| !stalled.contains(&c.id()));
                }
                let message = Incoming {
                    from: push.from,
                    text: push.text,
                };
                let patience = deadline.saturating_duration_since(runtime.now());
                let sent = send_to_each(&*runtime, &conns, &message, patience).await;
                for (sessions, sent) in conns.iter().zip(&sent) {
                    for (conn, sent) in sessions.iter().zip(sent) {
                        if !sent {
                            stalled.insert(conn.id());
                        }
                    }
                }
                reached.push(
                    push.users
                        .into_iter()
                        .zip(sent)
                        .filter_map(|(user, sent)| sent.contains(&true).then_some(user))
                        .collect(),
                );
            }
            reached
        })
    }
}

impl LocalSessions for State {
    fn deliver_local(self: Arc<Self>, handover: Handover) -> BoxFuture<Handled> {
        Box::pin(async move {
            let Some(cluster) = &self.cluster else {
                return Handled::Refused;
            };
            let (id, me) = (handover.id, cluster.claimer());
            let claim = db(&self, move |s| s.claim_handover(&id, &me));
            let waited = async {
                self.runtime.sleep(CLAIM_PATIENCE).await;
                Err(Error::msg("the store did not answer in time"))
            };
            match futures_lite::future::or(claim, waited).await {
                Ok(true) => {}
                // The asking node gave up waiting and claimed it first: it stores the pushes.
                Ok(false) => return Handled::Refused,
                // Live pushes go on without the store: delivered, at the risk of a duplicate
                // should the answer be lost too and the asking node then store them.
                Err(e) => tracing::warn!("cluster: a push from another node, unclaimed: {e}"),
            }
            let texts: Vec<(String, String, Vec<String>)> = handover
                .pushes
                .iter()
                .map(|p| (p.from.clone(), p.text.clone(), p.users.clone()))
                .collect();
            let reached = self.send_batch(handover.pushes).await;
            let mut outcomes = Vec::with_capacity(reached.len());
            let mut stored_all = Vec::new();
            for ((from, text, users), reached) in texts.into_iter().zip(reached) {
                let got: HashSet<&String> = reached.iter().collect();
                let rest: Vec<String> = users.into_iter().filter(|u| !got.contains(u)).collect();
                // This node took the hand-over, so it stores what it could not deliver (if the
                // store fails, the asking node is told nothing was stored, and stores it).
                let stored = match rest.is_empty() {
                    true => Vec::new(),
                    false => db(&self, move |s| s.queue_for_existing(&rest, &from, &text))
                        .await
                        .unwrap_or_default(),
                };
                stored_all.extend(stored.iter().cloned());
                outcomes.push(Outcome { reached, stored });
            }
            cluster.stored(&stored_all);
            Handled::Taken(outcomes)
        })
    }

    fn collect(&self, users: Vec<String>) -> Vec<BoxFuture<()>> {
        let conns = self.local_sessions(&users);
        users
            .into_iter()
            .zip(conns)
            .filter(|(_, conns)| !conns.is_empty())
            .map(|(user, conns)| self.deliver_stored(user, conns))
            .collect()
    }

    fn count_failure(&self, keys: Vec<String>) {
        self.count_failures(keys, Instant::now());
    }

    fn channel_presence(&self, change: &zserver::channels::PresenceChange) {
        self.channels.apply_remote_presence(change);
    }

    fn accounts_changed(&self) {
        self.look_at_accounts();
    }

    fn admin(
        self: Arc<Self>,
        ask: crate::cluster::AdminAsk,
    ) -> BoxFuture<crate::cluster::AdminReply> {
        Box::pin(async move { self.answer_admin(ask).await })
    }

    fn kick(&self, user: String, connection: u64) -> BoxFuture<()> {
        let conn = lock(&self.sessions).take(&user, connection);
        self.kick_all(
            &user,
            conn.into_iter().collect(),
            &replaced(self.config().max_sessions),
        )
    }
}

/// A push-to-everyone's report with at most [`MAX_REPORTED`] names in each list (the counts
/// stay whole), so that it fits in a reply however many users are online.
pub(super) fn bounded(mut report: PushReport) -> PushReport {
    report.delivered.truncate(MAX_REPORTED);
    report.stored.truncate(MAX_REPORTED);
    report.unconfirmed.truncate(MAX_REPORTED);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("u{i:06}")).collect()
    }

    #[test]
    fn a_report_to_everyone_lists_a_bounded_number_of_names() {
        let report = PushReport {
            delivered: names(0..MAX_REPORTED + 5),
            stored: names(0..3),
            delivered_count: (MAX_REPORTED + 5) as u64,
            stored_count: 3,
            unconfirmed: Vec::new(),
        };
        let bounded = bounded(report);
        assert_eq!(bounded.delivered, names(0..MAX_REPORTED));
        assert_eq!(bounded.stored, names(0..3));
        assert_eq!(bounded.delivered_count, (MAX_REPORTED + 5) as u64);
        // Even a full report of MAX_REPORTED longest names each fits in one frame.
        let longest: Vec<String> = (0..MAX_REPORTED).map(|i| format!("{i:0>32}")).collect();
        let full = PushReport {
            delivered: longest.clone(),
            stored: longest,
            ..PushReport::default()
        };
        let bytes = postcard::to_allocvec(&full).unwrap().len();
        assert!(
            bytes < zserver::internal::frame::DEFAULT_MAX_FRAME / 4,
            "{bytes}"
        );
    }
}
