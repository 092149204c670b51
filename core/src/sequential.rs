//! The handler queue of a sequential connection ([`Config::sequential`](crate::Config)):
//! one task runs the connection's handlers one at a time, in arrival order.
//!
//! The reader never waits to queue a handler, so it keeps reading (and handing on the
//! `Data`, `End` and `Credit` frames that a running upload needs) while calls wait behind
//! that upload. It stops taking new calls, and so stops reading, only while the waiting
//! calls hold more than [`BUDGET`] bytes: memory stays bounded by what the peer sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use event_listener::Event;
use tracing::Instrument;

use crate::runtime::{BoxFuture, Runtime};

/// Bytes the calls waiting in one connection's queue may hold before the reader stops
/// taking new ones. One call is always taken, however large.
pub(crate) const BUDGET: usize = 8 << 20;

/// What a waiting call is charged beyond its payload: its handler's boxed future, its
/// responder and context (an estimate; typical handler futures are a few hundred bytes).
pub(crate) const CALL_OVERHEAD: usize = 512;

/// A handler waiting its turn, with what it is charged against the budget.
struct Queued {
    work: BoxFuture<'static, ()>,
    cost: usize,
}

/// The calls waiting (queued, not yet started) and what they hold.
#[derive(Default)]
struct Backlog {
    calls: AtomicUsize,
    cost: AtomicUsize,
    /// Fires each time the worker takes a call off the queue.
    taken: Event,
}

/// The sending side of a sequential connection's queue; its worker task ends once this is
/// dropped and the queue is empty.
pub(crate) struct Sequential {
    tx: async_channel::Sender<Queued>,
    backlog: Arc<Backlog>,
}

impl Sequential {
    /// Starts the worker that runs queued handlers one after another, in `span`.
    pub(crate) fn start(runtime: &dyn Runtime, span: &tracing::Span) -> Self {
        let (tx, rx) = async_channel::unbounded::<Queued>();
        let backlog = Arc::new(Backlog::default());
        let waiting = backlog.clone();
        let worker = async move {
            while let Ok(queued) = rx.recv().await {
                waiting.release(queued.cost);
                queued.work.await;
            }
        };
        runtime.spawn(Box::pin(worker.instrument(span.clone())));
        Self { tx, backlog }
    }

    /// Queues a handler behind the others; never waits. `payload` is the request's size.
    pub(crate) fn push(&self, work: BoxFuture<'static, ()>, payload: usize) {
        let cost = payload.saturating_add(CALL_OVERHEAD);
        self.backlog.calls.fetch_add(1, Ordering::AcqRel);
        self.backlog.cost.fetch_add(cost, Ordering::AcqRel);
        // The worker holds the receiver for as long as this sender lives.
        if self.tx.try_send(Queued { work, cost }).is_err() {
            self.backlog.release(cost);
        }
    }

    /// Calls queued and not yet started.
    pub(crate) fn waiting(&self) -> usize {
        self.backlog.calls.load(Ordering::Acquire)
    }

    /// Whether the waiting calls hold the whole budget: the reader takes no new call.
    pub(crate) fn is_full(&self) -> bool {
        self.backlog.cost.load(Ordering::Acquire) >= BUDGET
    }

    /// Completes once the waiting calls hold less than the budget.
    pub(crate) async fn room(&self) {
        while self.is_full() {
            let listener = self.backlog.taken.listen();
            if !self.is_full() {
                return;
            }
            listener.await;
        }
    }
}

impl Backlog {
    fn release(&self, cost: usize) {
        self.calls.fetch_sub(1, Ordering::AcqRel);
        self.cost.fetch_sub(cost, Ordering::AcqRel);
        self.taken.notify(usize::MAX);
    }
}
