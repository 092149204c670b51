//! Pushes bound for other nodes, coalesced: one request per node is in flight at a time, and
//! the pushes that arrive meanwhile go together in the next one. A lone push goes at once
//! (no added delay); under load, many share one NATS round trip. One queue per node also
//! keeps pushes to a node in the order they were made. Each request is a [`Handover`] with
//! an id of its own; a push whose request went unanswered is told that id, for the caller to
//! claim in the shared store before storing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::messages::{encode, Handled, Handover, Outcome, Subjects};
use super::{Deliver, NodeId};
use crate::lock;

/// Most payload bytes one request carries (NATS refuses messages over 1 MiB by default); a
/// single larger push still goes, alone, and is stored if NATS refuses it.
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// What a push to another node got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The node took it: whom it reached, and whom it stored it for.
    Handled(Outcome),
    /// No answer in time (or a refusal): the hand-over's id, to be claimed before the push
    /// is stored here (the node may yet take it, if the request is only late).
    Unanswered(String),
}

type Waiting = (Deliver, oneshot::Sender<Answer>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
}

/// The queues of pushes to other nodes.
pub(super) struct Outbound {
    nats: async_nats::Client,
    subjects: Arc<Subjects>,
    timeout: Duration,
    /// A node has an entry while a flusher runs for it.
    queues: Mutex<HashMap<NodeId, Queue>>,
    /// This node, and its count of hand-overs: together, each request's id.
    me: NodeId,
    sent: std::sync::atomic::AtomicU64,
}

impl Outbound {
    pub(super) fn new(
        me: NodeId,
        nats: async_nats::Client,
        subjects: Arc<Subjects>,
        timeout: Duration,
    ) -> Self {
        Self {
            nats,
            subjects,
            timeout,
            queues: Mutex::new(HashMap::new()),
            me,
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Queues `push` for `node`; the receiver gets what the node did with it, or the id to
    /// claim if it did not answer in time.
    pub(super) fn push(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        node: NodeId,
        push: Deliver,
    ) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = lock(&self.queues);
            let idle = !queues.contains_key(&node);
            queues.entry(node).or_default().waiting.push((push, tx));
            idle
        };
        if start {
            runtime.spawn(self.clone().flush(node));
        }
        rx
    }

    /// Sends `node`'s queue, batch after batch, until it is empty.
    async fn flush(self: Arc<Self>, node: NodeId) {
        loop {
            let batch = {
                let mut queues = lock(&self.queues);
                let Some(queue) = queues.get_mut(&node) else {
                    return;
                };
                if queue.waiting.is_empty() {
                    queues.remove(&node);
                    return;
                }
                take_batch(&mut queue.waiting)
            };
            let (pushes, replies): (Vec<Deliver>, Vec<_>) = batch.into_iter().unzip();
            let seq = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let handover = Handover {
                id: format!("{:016x}-{seq}", self.me),
                pushes,
            };
            match self.request(node, &handover).await {
                Some(Handled::Taken(outcomes)) if outcomes.len() == replies.len() => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Answer::Handled(outcome));
                    }
                }
                _ => {
                    for reply in replies {
                        let _ = reply.send(Answer::Unanswered(handover.id.clone()));
                    }
                }
            }
        }
    }

    /// One request with `handover`; what the node did, if it answered in time.
    async fn request(&self, node: NodeId, handover: &Handover) -> Option<Handled> {
        let asked = self
            .nats
            .request(self.subjects.deliver(node), encode(handover));
        let reply = tokio::time::timeout(self.timeout, asked).await.ok()?.ok()?;
        postcard::from_bytes(&reply.payload).ok()
    }
}

/// About how many bytes `push` takes in a request without its recipients.
fn fixed_size(push: &Deliver) -> usize {
    push.text.len() + push.from.len() + 8
}

/// About how many bytes one recipient adds to a request (postcard adds a length byte or two
/// to each string).
fn user_size(user: &str) -> usize {
    user.len() + 2
}

/// About how many bytes `push` takes in a request.
fn size(push: &Deliver) -> usize {
    fixed_size(push) + push.users.iter().map(|u| user_size(u)).sum::<usize>()
}

/// The oldest pushes, up to [`MAX_BATCH_BYTES`] (at least one).
fn take_batch(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut bytes = 0;
    let fit = waiting
        .iter()
        .take_while(|(push, _)| {
            bytes += size(push);
            bytes <= MAX_BATCH_BYTES
        })
        .count()
        .max(1);
    waiting.drain(..fit).collect()
}

/// `push` as pushes of the same text to parts of its recipients, each part small enough for
/// one request, in order (a push to very many users on one node would not fit NATS's
/// payload limit). A text too big for a request on its own is left whole: it goes alone and,
/// if NATS refuses it, is stored for its recipients, whose node then delivers it from the
/// store.
pub(super) fn split(push: Deliver) -> Vec<Deliver> {
    let fixed = fixed_size(&push);
    if size(&push) <= MAX_BATCH_BYTES || fixed >= MAX_BATCH_BYTES / 2 {
        return vec![push];
    }
    let room = MAX_BATCH_BYTES - fixed;
    let mut parts = Vec::new();
    let mut users = Vec::new();
    let mut bytes = 0;
    for user in push.users {
        let cost = user_size(&user);
        if !users.is_empty() && bytes + cost > room {
            parts.push(std::mem::take(&mut users));
            bytes = 0;
        }
        bytes += cost;
        users.push(user);
    }
    parts.push(users);
    parts
        .into_iter()
        .map(|users| Deliver {
            from: push.from.clone(),
            text: push.text.clone(),
            users,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(text_len: usize) -> Waiting {
        let deliver = Deliver {
            from: "a".into(),
            users: vec!["b".into()],
            text: "x".repeat(text_len),
        };
        (deliver, oneshot::channel().0)
    }

    #[test]
    fn a_push_to_very_many_users_is_split_into_parts_that_fit() {
        let users: Vec<String> = (0..200_000).map(|i| format!("user{i:0>20}")).collect();
        let push = Deliver {
            from: "ann".into(),
            users: users.clone(),
            text: "hello".into(),
        };
        let parts = split(push);
        assert!(parts.len() > 1);
        let mut heard = Vec::new();
        for part in &parts {
            assert_eq!((part.from.as_str(), part.text.as_str()), ("ann", "hello"));
            assert!(
                encode(part).len() <= MAX_BATCH_BYTES,
                "{}",
                encode(part).len()
            );
            heard.extend(part.users.iter().cloned());
        }
        assert_eq!(heard, users);

        // Small pushes stay whole, and so does a huge text (splitting would repeat it).
        let small = Deliver {
            from: "ann".into(),
            users: vec!["bob".into()],
            text: "hi".into(),
        };
        assert_eq!(split(small).len(), 1);
        let huge = Deliver {
            from: "ann".into(),
            users: (0..1000).map(|i| format!("u{i}")).collect(),
            text: "x".repeat(2 * MAX_BATCH_BYTES),
        };
        assert_eq!(split(huge).len(), 1);
    }

    #[test]
    fn batches_are_bounded_in_bytes_and_take_at_least_one() {
        let mut waiting: Vec<Waiting> = (0..100).map(|_| push(10_000)).collect();
        let first = take_batch(&mut waiting);
        assert!(first.len() > 1 && first.len() < 100, "{}", first.len());
        let total: usize = first.iter().map(|(p, _)| p.text.len()).sum();
        assert!(total <= MAX_BATCH_BYTES);
        assert_eq!(first.len() + waiting.len(), 100);
        let mut big = vec![push(2 * MAX_BATCH_BYTES), push(1)];
        assert_eq!(take_batch(&mut big).len(), 1);
        assert_eq!(big.len(), 1);
    }
}
