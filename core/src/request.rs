//! The table of calls awaiting replies: plain state, no I/O, time passed in.
//!
//! The connection glue locks it, starts calls, feeds it replies and asks it to expire
//! deadlines at a given instant. Wakers and callbacks it hands back are fired by the
//! caller after the lock is released.

use std::collections::BTreeSet;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::error::Error;

/// The result a call resolves to: the reply payload or an error.
pub type CallResult = Result<Bytes, Error>;

/// A closure run once with a call's result (the callback style of ZServer4D).
pub type Callback = Box<dyn FnOnce(CallResult) + Send>;

enum Waiter {
    Task(Option<Waker>),
    Callback(Callback),
}

enum Slot {
    Waiting {
        waiter: Waiter,
        deadline: Option<Instant>,
    },
    Done(CallResult),
}

/// Something to do once the table's lock is released.
#[must_use = "a wake-up must be fired or the caller hangs"]
pub enum Wake {
    /// Nobody to tell (the caller has gone, or had not polled yet).
    Nobody,
    /// Wake the task awaiting the call.
    Task(Waker),
    /// Run the call's callback with its result.
    Callback(Callback, CallResult),
}

impl Wake {
    /// Delivers the wake-up.
    pub fn fire(self) {
        match self {
            Wake::Nobody => {}
            Wake::Task(w) => w.wake(),
            Wake::Callback(cb, result) => cb(result),
        }
    }
}

/// Calls in flight on one connection, keyed by request id.
#[derive(Default)]
pub struct RequestTable {
    next_id: u64,
    slots: FxHashMap<u64, Slot>,
    deadlines: BTreeSet<(Instant, u64)>,
    closed: bool,
}

impl RequestTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn insert(&mut self, waiter: Waiter, deadline: Option<Instant>) -> Result<u64, Error> {
        if self.closed {
            return Err(Error::Closed);
        }
        let id = self.next_id();
        if let Some(at) = deadline {
            self.deadlines.insert((at, id));
        }
        self.slots.insert(id, Slot::Waiting { waiter, deadline });
        Ok(id)
    }

    /// Registers a call to be awaited with [`poll`](Self::poll); returns its request id.
    pub fn start(&mut self, deadline: Option<Instant>) -> Result<u64, Error> {
        self.insert(Waiter::Task(None), deadline)
    }

    /// Like [`start`](Self::start), with the waker of the task that will await the call
    /// already known: it is woken when the result arrives, even if it never polled.
    pub fn start_waiting(
        &mut self,
        deadline: Option<Instant>,
        waker: &Waker,
    ) -> Result<u64, Error> {
        self.insert(Waiter::Task(Some(waker.clone())), deadline)
    }

    /// Registers a call whose result goes to `callback`; returns its request id.
    pub fn start_callback(
        &mut self,
        callback: Callback,
        deadline: Option<Instant>,
    ) -> Result<u64, Error> {
        self.insert(Waiter::Callback(callback), deadline)
    }

    /// Takes the result of call `id` if it is there, or remembers the waker.
    pub fn poll(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<CallResult> {
        match self.slots.get_mut(&id) {
            None => Poll::Ready(Err(Error::Closed)),
            Some(Slot::Done(_)) => match self.slots.remove(&id) {
                Some(Slot::Done(result)) => Poll::Ready(result),
                _ => unreachable!("slot was just seen done"),
            },
            Some(Slot::Waiting {
                waiter: Waiter::Task(w),
                ..
            }) => {
                match w {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Some(Slot::Waiting { .. }) => Poll::Pending,
        }
    }

    /// Delivers the result of call `id`. Returns `None` if no such call is waiting
    /// (it timed out or was cancelled: a late reply is dropped).
    pub fn complete(&mut self, id: u64, result: CallResult) -> Option<Wake> {
        let slot = self.slots.get_mut(&id)?;
        let Slot::Waiting { deadline, .. } = slot else {
            return None;
        };
        if let Some(at) = *deadline {
            self.deadlines.remove(&(at, id));
        }
        Some(self.finish(id, result))
    }

    /// Stores `result` for a task to collect, or hands it to the callback.
    fn finish(&mut self, id: u64, result: CallResult) -> Wake {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Wake::Nobody;
        };
        match slot {
            Slot::Waiting {
                waiter: Waiter::Task(waker),
                ..
            } => {
                let waker = waker.take();
                *slot = Slot::Done(result);
                waker.map_or(Wake::Nobody, Wake::Task)
            }
            Slot::Waiting {
                waiter: Waiter::Callback(_),
                ..
            } => match self.slots.remove(&id) {
                Some(Slot::Waiting {
                    waiter: Waiter::Callback(cb),
                    ..
                }) => Wake::Callback(cb, result),
                _ => unreachable!("slot was just seen waiting on a callback"),
            },
            Slot::Done(_) => Wake::Nobody,
        }
    }

    /// Forgets call `id` (its future was dropped); a reply arriving later is ignored.
    pub fn cancel(&mut self, id: u64) {
        if let Some(Slot::Waiting {
            deadline: Some(at), ..
        }) = self.slots.remove(&id)
        {
            self.deadlines.remove(&(at, id));
        }
    }

    /// Fails every call whose deadline is at or before `now` with [`Error::Timeout`].
    pub fn expire(&mut self, now: Instant) -> Vec<Wake> {
        let mut wakes = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            wakes.push(self.finish(id, Err(Error::Timeout)));
        }
        wakes
    }

    /// The earliest deadline still pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Fails every waiting call with `error` and refuses new ones: the connection is gone.
    pub fn close(&mut self, error: Error) -> Vec<Wake> {
        self.closed = true;
        self.deadlines.clear();
        let waiting: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Waiting { .. }))
            .map(|(&id, _)| id)
            .collect();
        waiting
            .into_iter()
            .map(|id| self.finish(id, Err(error.clone())))
            .collect()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Calls still waiting for a reply.
    pub fn in_flight(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Waiting { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    struct Flag(Mutex<bool>);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() = true;
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(Mutex::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    #[test]
    fn replies_match_by_id_in_any_order() {
        let mut t = RequestTable::new();
        let a = t.start(None).unwrap();
        let b = t.start(None).unwrap();
        assert_ne!(a, b);
        let (flag, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(t.poll(a, &mut cx).is_pending());
        assert!(t.poll(b, &mut cx).is_pending());
        t.complete(b, Ok(Bytes::from_static(b"B"))).unwrap().fire();
        assert!(*flag.0.lock().unwrap());
        assert_eq!(
            t.poll(b, &mut cx),
            Poll::Ready(Ok(Bytes::from_static(b"B")))
        );
        assert!(t.poll(a, &mut cx).is_pending());
        t.complete(a, Ok(Bytes::from_static(b"A"))).unwrap().fire();
        assert_eq!(
            t.poll(a, &mut cx),
            Poll::Ready(Ok(Bytes::from_static(b"A")))
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn simulated_time_expires_only_due_calls() {
        let mut t = RequestTable::new();
        let t0 = Instant::now();
        let soon = t.start(Some(t0 + Duration::from_secs(1))).unwrap();
        let late = t.start(Some(t0 + Duration::from_secs(10))).unwrap();
        let never = t.start(None).unwrap();
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.expire(t0).len(), 0);
        let wakes = t.expire(t0 + Duration::from_secs(5));
        assert_eq!(wakes.len(), 1);
        wakes.into_iter().for_each(Wake::fire);
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert_eq!(t.poll(soon, &mut cx), Poll::Ready(Err(Error::Timeout)));
        assert!(t.poll(late, &mut cx).is_pending());
        assert!(t.poll(never, &mut cx).is_pending());
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(10)));
        // A reply to the expired call arriving late is dropped, not delivered twice.
        assert!(t.complete(soon, Ok(Bytes::new())).is_none());
    }

    #[test]
    fn callbacks_run_with_the_result() {
        let mut t = RequestTable::new();
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let id = t
            .start_callback(Box::new(move |r| *s.lock().unwrap() = Some(r)), None)
            .unwrap();
        t.complete(id, Err(Error::Remote("no".into())))
            .unwrap()
            .fire();
        assert_eq!(*seen.lock().unwrap(), Some(Err(Error::Remote("no".into()))));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn close_fails_everything_and_refuses_new_calls() {
        let mut t = RequestTable::new();
        let a = t.start(Some(Instant::now())).unwrap();
        t.close(Error::Closed).into_iter().for_each(Wake::fire);
        let (_, w) = waker();
        assert_eq!(
            t.poll(a, &mut Context::from_waker(&w)),
            Poll::Ready(Err(Error::Closed))
        );
        assert_eq!(t.start(None), Err(Error::Closed));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_call_started_with_its_waker_is_woken_without_polling() {
        let mut t = RequestTable::new();
        let (flag, w) = waker();
        let id = t.start_waiting(None, &w).unwrap();
        t.complete(id, Ok(Bytes::from_static(b"R"))).unwrap().fire();
        assert!(*flag.0.lock().unwrap());
        let mut cx = Context::from_waker(&w);
        assert_eq!(
            t.poll(id, &mut cx),
            Poll::Ready(Ok(Bytes::from_static(b"R")))
        );
    }

    #[test]
    fn cancel_forgets_the_call() {
        let mut t = RequestTable::new();
        let a = t.start(Some(Instant::now())).unwrap();
        t.cancel(a);
        assert_eq!(t.next_deadline(), None);
        assert!(t.complete(a, Ok(Bytes::new())).is_none());
    }
}
