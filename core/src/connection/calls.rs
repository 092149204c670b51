//! The call API of a [`Connection`]: calls awaited, with a time-out or with a callback,
//! one-way sends and pings.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{lock, Connection};
use crate::error::Error;
use crate::frame::{Header, Kind};
use crate::proto::CommandKind;
use crate::request::{CallResult, Callback};
use crate::stats::Counters;

impl Connection {
    /// Calls `command` with a raw payload and waits for the reply.
    pub async fn call_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> CallResult {
        self.wait_for_space().await;
        let id = self.start_call(command, payload.as_ref(), None).await?;
        CallFuture::registered(self, id).await
    }

    /// Like [`call_bytes`](Self::call_bytes), failing with [`Error::Timeout`] if no reply
    /// arrives within `timeout`.
    pub async fn call_bytes_timeout(
        &self,
        command: &str,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> CallResult {
        let deadline = self.shared.runtime.now() + timeout;
        self.wait_for_space().await;
        let id = self
            .start_call(command, payload.as_ref(), Some(deadline))
            .await?;
        // The driver's one timer expires the call at its deadline.
        CallFuture::registered(self, id).await
    }

    /// Calls a console command: text in, text out.
    pub async fn console(&self, command: &str, text: &str) -> Result<String, Error> {
        decode_text(self.call_bytes(command, text).await?)
    }

    /// Like [`console`](Self::console), with a time-out.
    pub async fn console_timeout(
        &self,
        command: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        decode_text(self.call_bytes_timeout(command, text, timeout).await?)
    }

    /// Calls a typed command: `value` is sent as postcard and the reply decoded as `R`.
    pub async fn call<T, R>(&self, command: &str, value: &T) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = postcard::to_allocvec(value)?;
        decode_value(&self.call_bytes(command, payload).await?)
    }

    /// Like [`call`](Self::call), with a time-out.
    pub async fn call_timeout<T, R>(
        &self,
        command: &str,
        value: &T,
        timeout: Duration,
    ) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = postcard::to_allocvec(value)?;
        decode_value(&self.call_bytes_timeout(command, payload, timeout).await?)
    }

    /// Calls `command` and runs `callback` with the result when it arrives (on the
    /// connection's reader task: keep it short). Returns at once; no back-pressure wait.
    pub fn call_bytes_with(
        &self,
        command: &str,
        payload: impl AsRef<[u8]>,
        callback: impl FnOnce(CallResult) + Send + 'static,
    ) -> Result<(), Error> {
        self.start_callback_call(command, payload.as_ref(), None, Box::new(callback))
    }

    /// Like [`call_bytes_with`](Self::call_bytes_with), running `callback` with
    /// [`Error::Timeout`] if no reply arrives within `timeout` (the connection's one timer
    /// expires it; a reply arriving later is dropped).
    pub fn call_bytes_with_timeout(
        &self,
        command: &str,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
        callback: impl FnOnce(CallResult) + Send + 'static,
    ) -> Result<(), Error> {
        let deadline = self.shared.runtime.now() + timeout;
        self.start_callback_call(
            command,
            payload.as_ref(),
            Some(deadline),
            Box::new(callback),
        )
    }

    fn start_callback_call(
        &self,
        command: &str,
        payload: &[u8],
        deadline: Option<Instant>,
        callback: Callback,
    ) -> Result<(), Error> {
        self.check_send(command, CommandKind::Call, payload)?;
        let id = lock(&self.shared.state)
            .proto
            .requests()
            .start_callback(callback, deadline)?;
        self.deadline_added(deadline);
        self.send_call_frame(id, command, payload)
    }

    /// Console command with a callback; see [`call_bytes_with`](Self::call_bytes_with).
    pub fn console_with(
        &self,
        command: &str,
        text: &str,
        callback: impl FnOnce(Result<String, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        self.call_bytes_with(command, text, move |r| callback(r.and_then(decode_text)))
    }

    /// Typed call with a callback; see [`call_bytes_with`](Self::call_bytes_with).
    pub fn call_with<T, R>(
        &self,
        command: &str,
        value: &T,
        callback: impl FnOnce(Result<R, Error>) + Send + 'static,
    ) -> Result<(), Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = postcard::to_allocvec(value)?;
        self.call_bytes_with(command, payload, move |r| {
            callback(r.and_then(|b| decode_value(&b)))
        })
    }

    /// Sends a one-way message: the peer runs the handler and no reply comes back.
    /// Sends from one task arrive in the order they were made.
    pub async fn send_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.wait_for_space().await;
        self.send_now(command, payload.as_ref())
    }

    /// Sends a one-way serde value (postcard).
    pub async fn send<T: Serialize + ?Sized>(&self, command: &str, value: &T) -> Result<(), Error> {
        let payload = postcard::to_allocvec(value)?;
        self.send_bytes(command, payload).await
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

    /// Measures one round trip with a ping frame.
    pub async fn ping(&self) -> Result<Duration, Error> {
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

fn decode_text(bytes: Bytes) -> Result<String, Error> {
    String::from_utf8(bytes.into()).map_err(|e| Error::Codec(format!("reply is not UTF-8: {e}")))
}

fn decode_value<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, Error> {
    postcard::from_bytes(bytes).map_err(Error::from)
}
