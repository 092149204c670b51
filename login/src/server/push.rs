//! Push: messages to users logged in here, on other nodes, or stored for their next login;
//! kicks; and what the cluster asks of this node (deliveries, kicks, counted failures).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::{Connection, Error, Runtime};

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

/// Sends `message` to each of `conns` (`None`: not logged in here) all at once, so that one
/// recipient who does not read holds up no one else, each waiting at most `patience` for
/// room; for each, whether it was queued.
async fn send_to_each(
    runtime: &dyn Runtime,
    conns: &[Option<Connection>],
    message: &Incoming,
    patience: Duration,
) -> Vec<bool> {
    let Ok(payload) = postcard::to_allocvec(message) else {
        return vec![false; conns.len()];
    };
    let sends = conns.iter().map(|conn| {
        let payload = &payload;
        async move {
            match conn {
                Some(conn) => send_patiently(runtime, conn, "message", payload, patience).await,
                None => false,
            }
        }
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
    /// Delivers `text` from `from` to each of `users`: here, through the node they are logged
    /// in on, or (offline, or unreachable) stored for their next login.
    pub(super) async fn push_to(
        self: &Arc<Self>,
        from: &str,
        users: Vec<String>,
        text: &str,
    ) -> Result<PushReport, Error> {
        let message = Incoming {
            from: from.to_owned(),
            text: text.to_owned(),
        };
        let mut report = PushReport::default();
        let mut remote: HashMap<NodeId, Vec<String>> = HashMap::new();
        let mut offline = Vec::new();
        for user in &users {
            check_name(user).map_err(store_err)?;
        }
        let conns = self.local_sessions(&users);
        let sent = send_to_each(&*self.runtime, &conns, &message, SEND_PATIENCE).await;
        for (user, sent) in users.into_iter().zip(sent) {
            if sent {
                report.delivered.push(user);
            } else if let Some(node) = self.cluster.as_ref().and_then(|c| c.locate(&user)) {
                remote.entry(node).or_default().push(user);
            } else {
                offline.push(user);
            }
        }
        let (mut undecided, mut stored_there) = (Vec::new(), Vec::new());
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
                    Answer::Handled(outcome) => {
                        let done: HashSet<&String> =
                            outcome.reached.iter().chain(&outcome.stored).collect();
                        // Neither reached nor stored there (its store failed): stored here.
                        offline.extend(users.iter().filter(|u| !done.contains(u)).cloned());
                        report.delivered.extend(outcome.reached);
                        stored_there.extend(outcome.stored);
                    }
                    Answer::Unanswered(id) => undecided.push((id, users)),
                }
            }
        }
        // A node that did not answer in time may still get the request: whoever claims the
        // hand-over first acts on it, that node (delivering) or this one (storing).
        let mut unknown = None;
        if let Some(cluster) = &self.cluster {
            for (id, users) in undecided {
                let me = cluster.claimer();
                match db(self, move |s| s.claim_handover(&id, &me)).await {
                    Ok(true) => offline.extend(users),
                    Ok(false) => report.unconfirmed.extend(users),
                    Err(e) => unknown = Some((users, e)),
                }
            }
        }
        let stored = if offline.is_empty() {
            Ok(())
        } else {
            let (to, from, text) = (offline.clone(), from.to_owned(), text.to_owned());
            db(self, move |s| s.queue_for_many(&to, &from, &text)).await
        };
        // Also on an error for an unknown recipient: the others' messages were stored.
        report.stored = offline;
        if let Some(cluster) = &self.cluster {
            // A recipient may have logged in somewhere since we looked: that node takes it.
            cluster.stored(&report.stored);
            report.stored.extend(stored_there);
        } else {
            // A recipient may have logged in here since we looked, and taken their messages
            // before this one was stored: it is delivered now, not at their next login.
            for deliver in self.collect(report.stored.clone()) {
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

    /// Takes `user`'s stored messages and sends them on `conn`, their session here, then
    /// waits for the client's answer to a ping queued after them (which proves it read
    /// them). If the session ends first, or its client stops reading, they are stored
    /// again for the next login: a client may see one twice, never none.
    fn deliver_stored(&self, user: String, conn: Connection) -> BoxFuture<()> {
        let (store, runtime) = (self.store.clone(), self.runtime.clone());
        Box::pin(async move {
            let (st, name) = (store.clone(), user.clone());
            let Ok(messages) = blocking::unblock(move || st.take_messages(&name)).await else {
                return;
            };
            if messages.is_empty() {
                return;
            }
            let mut sent = true;
            for m in &messages {
                let incoming = Incoming {
                    from: m.from.clone(),
                    text: m.text.clone(),
                };
                let payload = postcard::to_allocvec(&incoming).unwrap_or_default();
                if !send_patiently(&*runtime, &conn, "message", &payload, SEND_PATIENCE).await {
                    sent = false;
                    break;
                }
            }
            let read = sent && {
                let ping = async { conn.ping().await.is_ok() };
                let patience = async {
                    runtime.sleep(CONFIRM_PATIENCE).await;
                    false
                };
                futures_lite::future::or(ping, patience).await
            };
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
                for conn in &mut conns {
                    if conn.as_ref().is_some_and(|c| stalled.contains(&c.id())) {
                        *conn = None;
                    }
                }
                let message = Incoming {
                    from: push.from,
                    text: push.text,
                };
                let patience = deadline.saturating_duration_since(runtime.now());
                let sent = send_to_each(&*runtime, &conns, &message, patience).await;
                for (conn, sent) in conns.iter().zip(&sent) {
                    if let (Some(conn), false) = (conn, sent) {
                        stalled.insert(conn.id());
                    }
                }
                reached.push(
                    push.users
                        .into_iter()
                        .zip(sent)
                        .filter_map(|(user, sent)| sent.then_some(user))
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
            .filter_map(|(user, conn)| Some(self.deliver_stored(user, conn?)))
            .collect()
    }

    fn count_failure(&self, keys: Vec<String>) {
        self.count_failures(keys, Instant::now());
    }

    fn kick(&self, user: String, connection: u64) -> BoxFuture<()> {
        let conn = {
            let mut sessions = lock(&self.sessions);
            match sessions.by_user.get(&user) {
                Some(c) if c.id() == connection => {
                    let conn = c.clone();
                    sessions.by_user.remove(&user);
                    sessions.by_conn.remove(&connection);
                    Some(conn)
                }
                _ => None,
            }
        };
        if conn.is_some() {
            if let Some(cluster) = &self.cluster {
                cluster.offline(&user, connection);
            }
        }
        let runtime = self.runtime.clone();
        Box::pin(async move {
            if let Some(conn) = conn {
                kick_connection(&*runtime, &conn, "logged in on another node").await;
            }
        })
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
