//! Counting a handler's panic once, and before its caller can see the `NoResponse` that
//! the panic causes.
//!
//! A handler's responder lives in the handler's future. When the handler panics, the
//! unwinding drops what the future held at that point, the responder included, and the
//! responder's drop queues `NoResponse` for the caller at once, before `catch_unwind`
//! returns to the place that counts the panic. So the responder counts the panic itself
//! as it is dropped by an unwinding (and marks it counted on this thread), and the catch
//! site counts only a panic that no responder counted.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Connection;
use crate::runtime::BoxFuture;

thread_local! {
    /// A responder dropped by the current panic's unwinding has counted it.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

impl Connection {
    /// A responder is being dropped by a handler's panic: count the panic now, before its
    /// `NoResponse` leaves, and tell the catch site it is counted.
    pub(crate) fn handler_panicked_while_answering(&self) {
        self.handler_panicked();
        COUNTED.with(|c| c.set(true));
    }

    /// Runs `f` (a handler's invoke or one poll of its future), counting a panic out of it
    /// once; `None` if it panicked.
    pub(crate) fn catch_handler<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        COUNTED.with(|c| c.set(false));
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(_) => {
                if !COUNTED.with(|c| c.replace(false)) {
                    self.handler_panicked();
                }
                None
            }
        }
    }
}

/// A handler's future run as a task (spawned, or queued in sequential mode): a panic in it
/// is counted on its connection once and ends it.
pub(crate) struct Caught {
    conn: Connection,
    work: BoxFuture<'static, ()>,
}

impl Caught {
    pub(crate) fn new(conn: Connection, work: BoxFuture<'static, ()>) -> Self {
        Self { conn, work }
    }
}

impl Future for Caught {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let (conn, work) = (&this.conn, &mut this.work);
        conn.catch_handler(|| work.as_mut().poll(cx))
            .unwrap_or(Poll::Ready(()))
    }
}
