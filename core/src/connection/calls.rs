//! What the call surface ([`Calls`](crate::Calls)) asks of a [`Connection`]: calls
//! awaited or with a callback, one-way sends and pings.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{lock, Connection};
use crate::error::Error;
use crate::frame::{Header, Kind};
use crate::proto::CommandKind;
use crate::request::{CallResult, Callback};
use crate::stats::Counters;

impl Connection {
    /// Calls `command` and waits for the reply, failing with [`Error::Timeout`] after
    /// `timeout` (the driver's one timer expires the call at its deadline).
    pub(crate) async fn call_raw(
        &self,
        command: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> CallResult {
        let deadline = timeout.map(|t| self.shared.runtime.now() + t);
        self.wait_for_space().await;
        let id = self.start_call(command, payload, deadline).await?;
        CallFuture::registered(self, id).await
    }

    /// Calls `command` and runs `callback` with the result when it arrives (on the
    /// connection's task), or with [`Error::Timeout`] after `timeout` (a reply arriving
    /// later is dropped). Returns at once; no back-pressure wait.
    pub(crate) fn call_with_callback(
        &self,
        command: &str,
        payload: &[u8],
        timeout: Option<Duration>,
        callback: Callback,
    ) -> Result<(), Error> {
        let deadline = timeout.map(|t| self.shared.runtime.now() + t);
        self.check_send(command, CommandKind::Call, payload)?;
        let id = lock(&self.shared.state)
            .proto
            .requests()
            .start_callback(callback, deadline)?;
        self.deadline_added(deadline);
        self.send_call_frame(id, command, payload)
    }

    /// Queues a one-way message without waiting for buffer space.
    pub(crate) fn send_now(&self, command: &str, payload: &[u8]) -> Result<(), Error> {
        self.check_send(command, CommandKind::Send, payload)?;
        let header = Header {
            kind: Kind::Send,
            flags: 0,
            id: 0,
            command,
        };
        self.enqueue(&header, payload)?;
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok(())
    }

    /// Queues a one-way frame encoded beforehand (a `Send` of `command`, length prefix
    /// included) without waiting for buffer space, past the send hooks; returns the bytes
    /// then queued on this connection. It goes uncompressed, whatever codec was negotiated.
    pub(crate) fn send_encoded(
        &self,
        command: &str,
        frame: &[u8],
        payload_len: usize,
    ) -> Result<usize, Error> {
        if let Some(check) = &self.shared.send_check {
            check.check_send(self, command, CommandKind::Send, payload_len)?;
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let queued = self.with_state(|proto| proto.queue_encoded(frame))?;
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok(queued)
    }

    /// Measures one round trip with a ping frame.
    pub(crate) async fn round_trip(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        let id = lock(&self.shared.state).proto.requests().start(None)?;
        let header = Header {
            kind: Kind::Ping,
            flags: 0,
            id,
            command: "",
        };
        if let Err(e) = self.enqueue(&header, &[]) {
            lock(&self.shared.state).proto.requests().cancel(id);
            return Err(e);
        }
        CallFuture::new(self, id).await?;
        Ok(start.elapsed())
    }

    /// Awaits the reply to call `id`; dropping the future abandons the call.
    pub(crate) fn call_future(&self, id: u64) -> impl Future<Output = CallResult> + '_ {
        CallFuture::new(self, id)
    }

    /// Starts a call with the waker of the task that awaits it, so that the task's first
    /// poll of the reply needs no second look at the table.
    async fn start_call(
        &self,
        command: &str,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<u64, Error> {
        self.check_send(command, CommandKind::Call, payload)?;
        let started = poll_fn(|cx| {
            Poll::Ready(
                lock(&self.shared.state)
                    .proto
                    .requests()
                    .start_waiting(deadline, cx.waker()),
            )
        });
        let id = started.await?;
        self.deadline_added(deadline);
        self.send_call_frame(id, command, payload)?;
        Ok(id)
    }

    /// Tells the driver to look at its timer again (before the call's frame wakes it): a
    /// deadline registered while it was between reading and writing would otherwise wait
    /// for the next wake-up.
    fn deadline_added(&self, deadline: Option<Instant>) {
        if deadline.is_some() {
            self.shared.rearm.store(true, Ordering::Release);
        }
    }

    fn send_call_frame(&self, id: u64, command: &str, payload: &[u8]) -> Result<(), Error> {
        let header = Header {
            kind: Kind::Call,
            flags: 0,
            id,
            command,
        };
        if let Err(e) = self.enqueue(&header, payload) {
            lock(&self.shared.state).proto.requests().cancel(id);
            return Err(e);
        }
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok(())
    }
}

/// Awaits the reply to one call; dropping it abandons the call.
struct CallFuture<'a> {
    conn: &'a Connection,
    id: u64,
    done: bool,
    /// The call was started with this task's waker and this is the first poll, in the same
    /// poll of the task: nothing to look up yet (a reply already in would have woken it).
    fresh: bool,
}

impl<'a> CallFuture<'a> {
    fn new(conn: &'a Connection, id: u64) -> Self {
        Self {
            conn,
            id,
            done: false,
            fresh: false,
        }
    }

    /// For a call started by [`Connection::start_call`] in the same poll of the same task.
    /// (Built field by field: a temporary `CallFuture` would cancel the call when dropped.)
    fn registered(conn: &'a Connection, id: u64) -> Self {
        Self {
            conn,
            id,
            done: false,
            fresh: true,
        }
    }
}

impl Future for CallFuture<'_> {
    type Output = CallResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        if std::mem::take(&mut self.fresh) {
            return Poll::Pending;
        }
        let polled = lock(&self.conn.shared.state)
            .proto
            .requests()
            .poll(self.id, cx);
        if polled.is_ready() {
            self.done = true;
        }
        polled
    }
}

impl Drop for CallFuture<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.conn.shared.state)
                .proto
                .requests()
                .cancel(self.id);
        }
    }
}
