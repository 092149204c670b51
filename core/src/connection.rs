//! One live connection: the reader and writer tasks that drive the framing and the
//! request table, and the [`Connection`] handle that makes calls over it.
//!
//! Both ends are the same: each side can call the handlers the other registered.
//! Writes are coalesced: frames are encoded into one shared buffer under a short lock and
//! the writer task sends everything queued in one write.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use futures_lite::io::AsyncWriteExt;
use futures_lite::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::codec::Codec;
use crate::config::Config;
use crate::error::Error;
use crate::frame::{
    self, EncodeError, Frame, FrameDecoder, Header, Kind, FLAG_COMPRESSED, FLAG_DOWNLOAD,
    FLAG_UPLOAD,
};
use crate::handler::{
    Context as HandlerContext, InFlight, Request, Responder, Router, Shape, SyncHandler,
};
use crate::hooks::{self, CommandInfo, CommandKind, Completion};
use crate::read_buf;
use crate::request::{CallResult, Callback, RequestTable, Wake};
use crate::runtime::{BoxFuture, Runtime};
use crate::secure;
use crate::secure::cipher::TAG_LEN;
use crate::secure::record::{Opener, Sealer, MAX_RECORD_PLAINTEXT, RECORD_HEADER, RECORD_TARGET};
use crate::sequential::Sequential;
use crate::stats::{Counters, Stats};
use crate::stream::{self, Dir, Incoming, Key, Outbound, StreamHead, Streams, WantStream};
use crate::transport::{BoxRead, BoxWrite};

/// Sealed batches up to this size are copied into one buffer and written with one write.
const SMALL_WRITE: usize = 64 * 1024;

/// Write buffers larger than this, and than twice the batch just written, are freed after
/// use instead of kept for the next batch.
const KEEP_WRITE_CAPACITY: usize = 64 * 1024;

/// The reader's heartbeat state: the armed timer, and when the peer was last heard.
struct Watch {
    timer: Option<BoxFuture<'static, ()>>,
    heard_at: Instant,
}

/// Called once when a connection ends, before anyone waiting on [`Connection::closed`]
/// is woken.
pub(crate) type OnClose = Box<dyn FnOnce(&Connection) + Send>;

/// Everything a new connection needs from its server or client.
pub(crate) struct Setup {
    pub id: u64,
    pub runtime: Arc<dyn Runtime>,
    pub router: Arc<Router>,
    pub config: Arc<Config>,
    pub in_flight: Arc<InFlight>,
    pub on_close: Option<OnClose>,
}

struct Outbox {
    buf: BytesMut,
    /// Frames in `buf` (counted into `frames_out` once per batch, not per frame).
    frames: u64,
    /// Flush what is queued, then close.
    closing: bool,
    /// The driver, when its writer waits for something to send: taken (and woken) by the
    /// first frame queued, so that later frames of the same batch cost no wake-up at all.
    writer: Option<Waker>,
}

struct Shared {
    id: u64,
    peer: SocketAddr,
    peer_key: Option<[u8; 32]>,
    /// The payload codec negotiated in the handshake, if any.
    codec: Option<Arc<dyn Codec>>,
    runtime: Arc<dyn Runtime>,
    router: Arc<Router>,
    config: Arc<Config>,
    in_flight: Arc<InFlight>,
    outbox: Mutex<Outbox>,
    /// Bytes in the outbox (kept beside it so back-pressure checks need no lock).
    queued: AtomicUsize,
    /// Set by the reader when it hands the driver's turn to the writer (see
    /// [`Connection::yield_to_writer`]).
    handed_over: AtomicBool,
    write_space: Event,
    table: Mutex<RequestTable>,
    streams: Mutex<Streams>,
    counters: Counters,
    closed: AtomicBool,
    /// Set once closing is complete (owner notified), just before `closed_event` fires.
    ended: AtomicBool,
    closed_event: Event,
    refusing_calls: AtomicBool,
    peer_going_away: AtomicBool,
    sequential: Option<Sequential>,
    on_close: Mutex<Option<OnClose>>,
    /// Per-connection state of other modules (such as services' remote objects), one
    /// value per type; cleared when the connection closes.
    extensions: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// The `connection` tracing span (id, peer, user): the reader and spawned handlers run
    /// in it.
    span: tracing::Span,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its state valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle to one connection. Cheap to clone; every clone refers to the same connection.
///
/// Calls may be made from any task and any number may be in flight at once: replies are
/// matched by request id and may arrive in any order.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A process-wide unique id for a new connection.
pub(crate) fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the link negotiation settled (keys when encrypted, the payload codec), which a
/// connection starts with.
pub(crate) use crate::secure::Established as Handshaken;

impl Connection {
    /// Starts the reader and writer tasks of a connection whose handshake is done.
    pub(crate) fn start(
        setup: Setup,
        peer: SocketAddr,
        read: BoxRead,
        write: BoxWrite,
        handshaken: Handshaken,
    ) -> Self {
        let (sealer, opener, peer_key) = match handshaken.secure {
            Some(s) => (Some(s.sealer), Some(s.opener), Some(s.peer_key)),
            None => (None, None, None),
        };
        let span = tracing::info_span!(
            "connection",
            id = setup.id,
            %peer,
            user = tracing::field::Empty
        );
        let sequential = setup
            .config
            .sequential
            .then(|| Sequential::start(&*setup.runtime, &span));
        let shared = Arc::new(Shared {
            id: setup.id,
            peer,
            peer_key,
            codec: handshaken.codec,
            runtime: setup.runtime,
            router: setup.router,
            config: setup.config,
            in_flight: Arc::new(InFlight::child(setup.in_flight)),
            outbox: Mutex::new(Outbox {
                buf: BytesMut::new(),
                frames: 0,
                closing: false,
                writer: None,
            }),
            queued: AtomicUsize::new(0),
            handed_over: AtomicBool::new(false),
            write_space: Event::new(),
            table: Mutex::new(RequestTable::new()),
            streams: Mutex::new(Streams::default()),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            closed_event: Event::new(),
            refusing_calls: AtomicBool::new(false),
            peer_going_away: AtomicBool::new(false),
            sequential,
            on_close: Mutex::new(setup.on_close),
            extensions: Mutex::new(Vec::new()),
            span,
        });
        let conn = Connection { shared };
        let (runtime, span) = (&conn.shared.runtime, &conn.shared.span);
        // One task drives both directions: replies that handlers queue while a read is
        // dispatched leave in the write that follows it, with no wake-up of another task.
        let driver = conn.clone().run(read, write, opener, sealer);
        runtime.spawn(Box::pin(driver.instrument(span.clone())));
        conn
    }

    /// This connection's id, unique within the process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The peer's static public key, proven in the handshake (`None` on a plain link).
    pub fn peer_key(&self) -> Option<[u8; 32]> {
        self.shared.peer_key
    }

    /// Whether this connection is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.shared.peer_key.is_some()
    }

    /// The name of the payload codec negotiated in the handshake (such as `"lz4"`), or
    /// `None` when payloads travel as they are.
    pub fn codec(&self) -> Option<&'static str> {
        self.shared.codec.as_ref().map(|c| c.name())
    }

    /// This connection's tracing span, `connection` with fields `id`, `peer` and `user`
    /// (empty until recorded): its reader task and spawned handlers run in it, so every
    /// event they log carries them. A login handler records the user once known:
    /// `conn.span().record("user", name)`.
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// A snapshot of this connection's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the peer announced that it is shutting down.
    pub fn peer_going_away(&self) -> bool {
        self.shared.peer_going_away.load(Ordering::Acquire)
    }

    /// Calls awaiting a reply on this connection.
    pub fn calls_in_flight(&self) -> usize {
        lock(&self.shared.table).in_flight()
    }

    /// Completes when the connection has closed (and its server has forgotten it).
    pub async fn closed(&self) {
        let ended = || self.shared.ended.load(Ordering::Acquire);
        loop {
            if ended() {
                return;
            }
            let listener = self.shared.closed_event.listen();
            if ended() {
                return;
            }
            listener.await;
        }
    }

    /// Closes gracefully: frames already queued are sent, then the connection closes.
    /// Calls still waiting for a reply fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.begin_close();
        self.closed().await;
    }

    /// Starts a graceful close without waiting for it: frames already queued are sent,
    /// then the connection closes.
    pub fn begin_close(&self) {
        let writer = {
            let mut out = lock(&self.shared.outbox);
            out.closing = true;
            out.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
    }

    /// Whether this side runs its handlers one at a time ([`Config::sequential`]).
    pub(crate) fn is_sequential(&self) -> bool {
        self.shared.sequential.is_some()
    }

    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.shared.runtime
    }

    pub(crate) fn router(&self) -> &Router {
        &self.shared.router
    }

    /// Runs the `on_send` hooks (if any) before a command leaves: an error vetoes it.
    fn check_send(&self, command: &str, kind: CommandKind, payload: &[u8]) -> Result<(), Error> {
        let send = &self.shared.router.hooks.send;
        if send.is_empty() {
            return Ok(());
        }
        let info = CommandInfo {
            command,
            kind,
            payload_len: payload.len(),
            conn: self,
        };
        hooks::check(send, &info)
    }

    // ----- calls -----------------------------------------------------------------------

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
        self.await_with_deadline(CallFuture::registered(self, id), deadline)
            .await
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
        self.check_send(command, CommandKind::Call, payload.as_ref())?;
        let id = lock(&self.shared.table).start_callback(Box::new(callback) as Callback, None)?;
        self.send_call_frame(id, command, payload.as_ref())
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
        let id = lock(&self.shared.table).start(None)?;
        let header = Header {
            kind: Kind::Ping,
            flags: 0,
            id,
            command: "",
        };
        if let Err(e) = self.enqueue(&header, &[]) {
            lock(&self.shared.table).cancel(id);
            return Err(e);
        }
        CallFuture::new(self, id).await?;
        Ok(start.elapsed())
    }

    // ----- internals -------------------------------------------------------------------

    pub(crate) fn streams(&self) -> &Mutex<Streams> {
        &self.shared.streams
    }

    /// The sending state of stream `key`, if it is open.
    pub(crate) fn stream_outbound(&self, key: Key) -> Option<Arc<Mutex<Outbound>>> {
        lock(&self.shared.streams).outgoing(key)
    }

    pub(crate) fn forget_outbound(&self, key: Key) {
        lock(&self.shared.streams).forget_outgoing(key);
    }

    /// Starts a call that opens a stream: registers the stream's state (so that frames for
    /// it that arrive at once find it), then sends the `Call` frame with `flag`.
    pub(crate) async fn start_stream_call<S>(
        &self,
        command: &str,
        flag: u8,
        payload: &[u8],
    ) -> Result<(u64, Arc<Mutex<S>>), Error>
    where
        Streams: stream::Open<S>,
    {
        self.wait_for_space().await;
        self.check_send(command, CommandKind::of(Kind::Call, flag), payload)?;
        let id = lock(&self.shared.table).start(None)?;
        let dir = if flag == FLAG_UPLOAD {
            Dir::Upload
        } else {
            Dir::Download
        };
        let key = (dir, id);
        let window = self.shared.config.stream_window as u64;
        let opened = stream::Open::<S>::open(&mut *lock(&self.shared.streams), key, window);
        let state = match opened {
            Ok(state) => state,
            Err(e) => {
                lock(&self.shared.table).cancel(id);
                return Err(e);
            }
        };
        let header = Header {
            kind: Kind::Call,
            flags: flag,
            id,
            command,
        };
        if let Err(e) = self.enqueue(&header, payload) {
            lock(&self.shared.table).cancel(id);
            stream::Open::<S>::forget(&mut *lock(&self.shared.streams), key);
            return Err(e);
        }
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok((id, state))
    }

    /// Awaits the reply to call `id`; dropping the future abandons the call.
    pub(crate) fn call_future(&self, id: u64) -> impl Future<Output = CallResult> + '_ {
        CallFuture::new(self, id)
    }

    /// Queues a stream control frame (`End`, `Abort`, `Credit`, `Stop`); if the connection
    /// has closed there is nobody to tell, so failures are ignored.
    pub(crate) fn send_stream_frame(&self, kind: Kind, key: Key, payload: &[u8]) {
        let header = Header {
            kind,
            flags: key.0.flag(),
            id: key.1,
            command: "",
        };
        let _ = self.enqueue(&header, payload);
    }

    /// Queues one `Data` frame of stream `key`.
    pub(crate) fn send_stream_data(&self, key: Key, data: &[u8]) -> Result<(), Error> {
        let header = Header {
            kind: Kind::Data,
            flags: key.0.flag(),
            id: key.1,
            command: "",
        };
        self.enqueue(&header, data)
    }

    /// Waits until the outbox is short enough for a stream's next chunk (fairness: small
    /// calls queued beside a transfer wait behind at most this much).
    pub(crate) async fn wait_for_stream_space(&self, limit: usize) {
        self.wait_for_space_above(limit).await
    }

    /// Queues a reply with flags (a download's stream head).
    pub(crate) fn reply_flagged(&self, id: u64, flags: u8, payload: &[u8]) {
        let header = Header {
            kind: Kind::Reply,
            flags,
            id,
            command: "",
        };
        if let Err(e) = self.enqueue(&header, payload) {
            if matches!(e, Error::Encode(_)) {
                self.reply_error(id, &e);
            }
        }
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
        let started =
            poll_fn(|cx| Poll::Ready(lock(&self.shared.table).start_waiting(deadline, cx.waker())));
        let id = started.await?;
        self.send_call_frame(id, command, payload)?;
        Ok(id)
    }

    fn send_call_frame(&self, id: u64, command: &str, payload: &[u8]) -> Result<(), Error> {
        let header = Header {
            kind: Kind::Call,
            flags: 0,
            id,
            command,
        };
        if let Err(e) = self.enqueue(&header, payload) {
            lock(&self.shared.table).cancel(id);
            return Err(e);
        }
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok(())
    }

    async fn await_with_deadline(&self, call: CallFuture<'_>, deadline: Instant) -> CallResult {
        let mut call = call;
        loop {
            let remaining = deadline.saturating_duration_since(self.shared.runtime.now());
            let sleep = self.shared.runtime.sleep(remaining);
            let reply = poll_fn(|cx| Pin::new(&mut call).poll(cx).map(Some));
            let woke = futures_lite::future::or(reply, async {
                sleep.await;
                None
            })
            .await;
            match woke {
                Some(result) => return result,
                None => {
                    let now = self.shared.runtime.now();
                    let wakes = lock(&self.shared.table).expire(now);
                    wakes.into_iter().for_each(Wake::fire);
                }
            }
        }
    }

    /// Encodes one frame into the outbox and wakes the writer. With a codec negotiated, a
    /// payload at or above the threshold is compressed first (if that makes it smaller);
    /// the frame must fit `max_frame` uncompressed all the same.
    fn enqueue(&self, header: &Header<'_>, payload: &[u8]) -> Result<(), Error> {
        let config = &self.shared.config;
        let mut packed = Vec::new();
        let flagged;
        let mut raw_len = 0;
        let (header, payload) = match &self.shared.codec {
            Some(codec) if !payload.is_empty() && payload.len() >= config.compression.threshold => {
                let len = frame::header_len(header) + payload.len();
                if len > config.max_frame {
                    return Err(EncodeError::TooLarge {
                        len,
                        max: config.max_frame,
                    }
                    .into());
                }
                match codec.encode(payload, &mut packed) {
                    Ok(()) if packed.len() < payload.len() => {
                        raw_len = payload.len();
                        flagged = Header {
                            flags: header.flags | FLAG_COMPRESSED,
                            ..*header
                        };
                        (&flagged, &packed[..])
                    }
                    Ok(()) => (header, payload),
                    Err(e) => {
                        tracing::debug!(conn = self.id(), codec = codec.name(), error = %e, "sending uncompressed");
                        (header, payload)
                    }
                }
            }
            _ => (header, payload),
        };
        let writer = {
            let mut out = lock(&self.shared.outbox);
            if out.closing || self.is_closed() {
                return Err(Error::Closed);
            }
            frame::encode(&mut out.buf, header, payload, self.shared.config.max_frame)?;
            out.frames += 1;
            self.shared.queued.store(out.buf.len(), Ordering::Relaxed);
            out.writer.take()
        };
        if raw_len > 0 {
            let counters = &self.shared.counters;
            Counters::bump(&counters.uncompressed_out, raw_len as u64);
            Counters::bump(&counters.compressed_out, payload.len() as u64);
        }
        if let Some(w) = writer {
            w.wake();
        }
        Ok(())
    }

    /// Waits while more than `max_pending_write` bytes are queued (back-pressure).
    async fn wait_for_space(&self) {
        self.wait_for_space_above(self.shared.config.max_pending_write)
            .await
    }

    /// Waits while `limit` bytes or more are queued and the connection is open.
    async fn wait_for_space_above(&self, limit: usize) {
        let full = || !self.is_closed() && self.shared.queued.load(Ordering::Relaxed) >= limit;
        while full() {
            let listener = self.shared.write_space.listen();
            if !full() {
                return;
            }
            listener.await;
        }
    }

    pub(crate) fn reply(&self, id: u64, payload: &[u8]) {
        let header = Header {
            kind: Kind::Reply,
            flags: 0,
            id,
            command: "",
        };
        if let Err(e) = self.enqueue(&header, payload) {
            if matches!(e, Error::Encode(_)) {
                // The reply itself is unsendable (too large): tell the caller why.
                self.reply_error(id, &e);
            }
        }
    }

    pub(crate) fn reply_error(&self, id: u64, err: &Error) {
        let header = Header {
            kind: Kind::Error,
            flags: 0,
            id,
            command: err.code().as_str(),
        };
        let message = err.wire_message();
        let max = self.shared.config.max_frame.saturating_sub(64);
        let message = truncate_utf8(&message, max);
        if self.enqueue(&header, message.as_bytes()).is_ok() {
            Counters::bump(&self.shared.counters.errors_out, 1);
        }
    }

    /// Refuses new incoming calls from now on and tells the peer so.
    pub(crate) fn go_away(&self) {
        self.shared.refusing_calls.store(true, Ordering::Release);
        let header = Header {
            kind: Kind::GoAway,
            flags: 0,
            id: 0,
            command: "",
        };
        let _ = self.enqueue(&header, &[]);
    }

    /// This connection's state of type `T`, created on first use. After the connection
    /// has closed a fresh, unattached value is returned.
    pub(crate) fn extension<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut extensions = lock(&self.shared.extensions);
        if let Some(found) = extensions
            .iter()
            .find_map(|e| e.clone().downcast::<T>().ok())
        {
            return found;
        }
        let made = Arc::new(T::default());
        if !self.is_closed() {
            extensions.push(made.clone());
        }
        made
    }

    /// Closes at once: pending calls fail, queued frames are dropped, both tasks end.
    pub(crate) fn shut(&self, error: Error) {
        let s = &self.shared;
        if s.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // For calls and streams still waiting, a socket that failed (reset, broken pipe)
        // is the connection closing under them: they get `Closed`, as for a clean close.
        let error = match error {
            Error::Io(_) => Error::Closed,
            other => other,
        };
        lock(&s.streams).close(&error);
        // What the connection owned (remote objects, caches) goes with it.
        drop(std::mem::take(&mut *lock(&s.extensions)));
        let wakes = lock(&s.table).close(error);
        wakes.into_iter().for_each(Wake::fire);
        self.begin_close();
        s.write_space.notify(usize::MAX);
        // The owner forgets the connection before waiters learn it is closed, so that
        // whoever awaited `closed()` sees it gone.
        let on_close = lock(&s.on_close).take();
        if let Some(on_close) = on_close {
            on_close(self);
        }
        s.ended.store(true, Ordering::Release);
        s.closed_event.notify(usize::MAX);
    }

    /// The connection's one task: reads and dispatches, and writes what is queued, until
    /// either direction ends or the connection is shut from elsewhere.
    async fn run(
        self,
        mut read: BoxRead,
        mut write: BoxWrite,
        opener: Option<Opener>,
        sealer: Option<Sealer>,
    ) {
        let reading = async {
            let result = self.read_loop(&mut read, opener).await;
            if let Err(e) = &result {
                tracing::debug!(conn = self.id(), peer = %self.peer_addr(), error = %e, "connection failed");
                Counters::bump(&self.shared.counters.errors_in, 1);
            }
            result
        };
        let writing = async {
            let result = self.write_loop(&mut write, sealer).await;
            if let Err(e) = &result {
                tracing::debug!(conn = self.id(), error = %e, "write failed");
            }
            result
        };
        let closed = self.closed();
        let (mut reading, mut writing, mut closed) = (pin!(reading), pin!(writing), pin!(closed));
        let shared = &self.shared;
        let result = poll_fn(|cx| loop {
            // Frames the reader queues from here on need no wake-up: the writer is polled
            // right after it.
            drop(lock(&shared.outbox).writer.take());
            shared.handed_over.store(false, Ordering::Relaxed);
            if let Poll::Ready(r) = reading.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if let Poll::Ready(r) = writing.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            if !shared.handed_over.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
        })
        .await;
        (self.shared.counters.read_buffered).store(0, Ordering::Relaxed);
        self.shut(result.err().unwrap_or(Error::Closed));
    }

    /// Lets the writer send what the frames just dispatched queued before the reader reads
    /// again. Only the driver ([`run`](Self::run)) polls the reader, and it polls the reader
    /// again at once when this returns `Pending` (so no waker is registered).
    async fn yield_to_writer(&self) {
        if self.shared.queued.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut handed = false;
        poll_fn(|_| {
            if handed {
                return Poll::Ready(());
            }
            handed = true;
            self.shared.handed_over.store(true, Ordering::Relaxed);
            Poll::Pending
        })
        .await
    }

    /// Reads bytes, opens records (when encrypted), decodes frames and dispatches them.
    async fn read_loop(&self, read: &mut BoxRead, mut opener: Option<Opener>) -> Result<(), Error> {
        let counters = &self.shared.counters;
        let decoder = FrameDecoder::new(self.shared.config.max_frame);
        let mut plain = BytesMut::new();
        let mut sealed = BytesMut::new();
        // A record that failed to open: reported once the authenticated ones before it
        // have been dispatched.
        let mut failure = None;
        let mut watch = Watch {
            timer: None,
            heard_at: self.shared.runtime.now(),
        };
        // Whether the last read filled its buffer, so that more is probably waiting.
        let mut more = false;
        let mut held = 0;
        if opener.is_some() {
            let limit = secure::record::record_limit(self.shared.config.max_frame);
            opener = opener.map(|o| o.capped(limit));
        }
        loop {
            while let Some(frame) = decoder.decode(&mut plain)? {
                Counters::bump(&counters.frames_in, 1);
                let frame = self.inflate(frame)?;
                if matches!(frame.kind, Kind::Call | Kind::Send) && self.peer_over_limits() {
                    self.wait_peer_under_limits().await;
                }
                self.dispatch(frame)?;
            }
            if let Some(e) = failure.take() {
                return Err(e);
            }
            self.yield_to_writer().await;
            // Memory grows with the bytes that arrived: a read that may wait goes through a
            // buffer of the thread, after the heap buffers were cut down to their contents
            // (an idle connection holds none); a larger window is read
            // only while data keeps coming, and only as large as what is already held.
            if !more {
                read_buf::compact(&mut plain);
                read_buf::compact(&mut sealed);
            }
            held = self.account_read_buffers(held, plain.capacity() + sealed.capacity());
            let (buf, wanted) = match &opener {
                Some(o) => {
                    let wanted = o.bytes_wanted(&sealed);
                    (&mut sealed, wanted)
                }
                None => {
                    let wanted = decoder.bytes_wanted(&plain);
                    (&mut plain, wanted)
                }
            };
            let n = if !more {
                let n = self.read_watched(read, buf, &mut watch).await?;
                more = n == read_buf::IDLE_READ;
                n
            } else {
                let window = read_buf::read_window(wanted, buf.len());
                let ready = self.try_read(read, buf, window, &mut watch).await;
                let waiting = ready.is_none();
                let n = ready.transpose()?.unwrap_or(0);
                more = n == window;
                if waiting {
                    continue; // nothing waiting after all: wait (no buffer held)
                }
                n
            };
            if n == 0 {
                let unread = plain.len() + sealed.len();
                return if unread == 0 {
                    Ok(())
                } else {
                    Err(Error::Protocol(format!(
                        "connection closed inside a frame ({unread} bytes unread)"
                    )))
                };
            }
            Counters::bump(&counters.bytes_in, n as u64);
            Counters::bump(&counters.reads, 1);
            if let Some(o) = &mut opener {
                let before = o.rekeys();
                let opened = o.open(&mut sealed, &mut plain);
                Counters::bump(&counters.rekeys_in, o.rekeys() - before);
                if let Err(e) = opened {
                    failure = Some(if matches!(e, secure::record::RecordError::Auth { .. }) {
                        Counters::bump(&counters.auth_failures, 1);
                        tracing::warn!(conn = self.id(), peer = %self.peer_addr(), error = %e, "closing connection");
                        Error::Auth(e.to_string())
                    } else {
                        Error::Protocol(e.to_string())
                    });
                }
            }
        }
    }

    /// Decodes a compressed frame's payload with the negotiated codec, bounded by
    /// `max_frame`. A compressed frame without a codec, or one that does not decode, breaks
    /// the protocol.
    fn inflate(&self, mut frame: Frame) -> Result<Frame, Error> {
        if frame.flags & FLAG_COMPRESSED == 0 {
            return Ok(frame);
        }
        let Some(codec) = &self.shared.codec else {
            return Err(Error::Protocol(
                "compressed frame, but no codec was negotiated".into(),
            ));
        };
        let max = self.shared.config.max_frame;
        let mut out = Vec::new();
        codec
            .decode(&frame.payload, max, &mut out)
            .map_err(|e| Error::Protocol(format!("bad {} payload: {e}", codec.name())))?;
        if out.len() > max {
            return Err(Error::Protocol(format!(
                "{} payload decodes to {} bytes, over the limit of {max}",
                codec.name(),
                out.len()
            )));
        }
        let counters = &self.shared.counters;
        Counters::bump(&counters.compressed_in, frame.payload.len() as u64);
        Counters::bump(&counters.uncompressed_in, out.len() as u64);
        frame.payload = Bytes::from(out);
        frame.flags &= !FLAG_COMPRESSED;
        Ok(frame)
    }

    /// Reads up to `max` bytes onto `buf` if bytes are ready, without waiting (`None` if
    /// none are), noting that the peer was heard.
    async fn try_read(
        &self,
        read: &mut BoxRead,
        buf: &mut BytesMut,
        max: usize,
        watch: &mut Watch,
    ) -> Option<io::Result<usize>> {
        let polled =
            poll_fn(|cx| Poll::Ready(read_buf::poll_read_append(&mut **read, cx, buf, max))).await;
        match polled {
            Poll::Ready(result) => {
                if self.shared.config.heartbeat.is_some() {
                    watch.heard_at = self.shared.runtime.now();
                }
                Some(result)
            }
            Poll::Pending => None,
        }
    }

    /// Records the read buffers' capacity now (`Stats::read_buffered`); returns it.
    fn account_read_buffers(&self, before: usize, now: usize) -> usize {
        if now != before {
            self.shared
                .counters
                .read_buffered
                .store(now as u64, Ordering::Relaxed);
        }
        now
    }

    /// Reads once, appending to `buf` (see [`read_buf::poll_read_append`]). With a
    /// heartbeat configured, a silence of one heartbeat sends a `Ping` (the peer's `Pong`
    /// breaks the silence) and a silence of `idle_timeout` fails with [`Error::IdleTimeout`]. The timer is armed once per heartbeat, not per read.
    async fn read_watched(
        &self,
        read: &mut BoxRead,
        buf: &mut BytesMut,
        watch: &mut Watch,
    ) -> Result<usize, Error> {
        let config = &self.shared.config;
        let Some(beat) = config.heartbeat else {
            let idle = read_buf::IDLE_READ;
            return Ok(poll_fn(|cx| read_buf::poll_read_append(&mut **read, cx, buf, idle)).await?);
        };
        let runtime = &self.shared.runtime;
        loop {
            let polled = poll_fn(|cx| {
                if let Poll::Ready(r) =
                    read_buf::poll_read_append(&mut **read, cx, buf, read_buf::IDLE_READ)
                {
                    return Poll::Ready(Some(r));
                }
                let timer = watch.timer.get_or_insert_with(|| runtime.sleep(beat));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        watch.timer = None;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let now = runtime.now();
            match polled {
                Some(result) => {
                    watch.heard_at = now;
                    return Ok(result?);
                }
                None => {
                    let silent = now.saturating_duration_since(watch.heard_at);
                    if silent >= config.idle_timeout {
                        return Err(Error::IdleTimeout(silent));
                    }
                    if silent >= beat {
                        let header = Header {
                            kind: Kind::Ping,
                            flags: 0,
                            id: 0,
                            command: "",
                        };
                        let _ = self.enqueue(&header, &[]);
                    }
                }
            }
        }
    }

    /// Back-pressure on the peer: whether too many of its requests are being handled
    /// (on a sequential connection: queued calls over their byte budget, or too many
    /// handlers in flight besides those queued), or too many of its replies wait unread.
    /// While so, the reader takes no new call and so stops reading.
    fn peer_over_limits(&self) -> bool {
        let config = &self.shared.config;
        let queued = self.shared.sequential.as_ref();
        let waiting = queued.map_or(0, Sequential::waiting);
        queued.is_some_and(Sequential::is_full)
            || self.shared.in_flight.count().saturating_sub(waiting)
                >= config.max_handlers_in_flight
            || self.shared.queued.load(Ordering::Relaxed)
                >= config.max_pending_write.saturating_mul(2)
    }

    async fn wait_peer_under_limits(&self) {
        let config = &self.shared.config;
        let queued = self.shared.sequential.as_ref();
        if let Some(queued) = queued {
            queued.room().await;
        }
        let waiting = queued.map_or(0, Sequential::waiting);
        self.shared
            .in_flight
            .below(config.max_handlers_in_flight.saturating_add(waiting))
            .await;
        self.wait_for_space_above(config.max_pending_write.saturating_mul(2))
            .await;
    }

    /// Acts on one frame without waiting. An error breaks the protocol and closes the
    /// connection.
    fn dispatch(&self, frame: Frame) -> Result<(), Error> {
        match frame.kind {
            Kind::Call | Kind::Send => self.dispatch_request(frame),
            Kind::Data | Kind::End | Kind::Abort | Kind::Credit | Kind::Stop => {
                stream::on_frame(self, frame)?
            }
            Kind::Reply => self.complete(frame.id, Ok(frame.payload)),
            Kind::Error => {
                Counters::bump(&self.shared.counters.errors_in, 1);
                let message = String::from_utf8_lossy(&frame.payload).into_owned();
                self.complete(frame.id, Err(Error::from_wire(frame.command(), message)));
            }
            Kind::Ping => {
                let header = Header {
                    kind: Kind::Pong,
                    flags: 0,
                    id: frame.id,
                    command: "",
                };
                let _ = self.enqueue(&header, &[]);
            }
            Kind::Pong => self.complete(frame.id, Ok(Bytes::new())),
            Kind::GoAway => self.shared.peer_going_away.store(true, Ordering::Release),
        }
        Ok(())
    }

    fn complete(&self, id: u64, result: CallResult) {
        let wake = lock(&self.shared.table).complete(id, result);
        if let Some(wake) = wake {
            wake.fire();
        }
    }

    fn dispatch_request(&self, mut frame: Frame) {
        Counters::bump(&self.shared.counters.calls_in, 1);
        let is_call = frame.kind == Kind::Call;
        if is_call && self.shared.refusing_calls.load(Ordering::Acquire) {
            self.reply_error(frame.id, &Error::ShuttingDown);
            return;
        }
        let payload_len = frame.payload.len();
        if self.shared.sequential.is_some() {
            // A queued call may wait long: its payload gets an allocation of its own instead
            // of pinning the read buffer it was cut from, so the queue holds what it counts.
            frame.payload = Bytes::copy_from_slice(&frame.payload);
        }
        let hooks = &self.shared.router.hooks;
        let info = CommandInfo {
            command: frame.command(),
            kind: CommandKind::of(frame.kind, frame.flags),
            payload_len: frame.payload.len(),
            conn: self,
        };
        if !hooks.execute.is_empty() {
            if let Err(e) = hooks::check(&hooks.execute, &info) {
                Counters::bump(&self.shared.counters.commands_vetoed, 1);
                if is_call {
                    self.reply_error(frame.id, &e);
                    if frame.flags & FLAG_UPLOAD != 0 {
                        self.send_stream_frame(Kind::Stop, (Dir::Upload, frame.id), &[]);
                    }
                }
                return;
            }
        }
        let Some(handler) = self.shared.router.get(frame.command()) else {
            if is_call {
                self.reply_error(frame.id, &Error::UnknownCommand(frame.command().to_owned()));
            } else {
                Counters::bump(&self.shared.counters.errors_in, 1);
            }
            return;
        };
        if let Some(sync) = handler.as_sync() {
            if self.shared.sequential.is_none() && hooks.complete.is_empty() && frame.flags == 0 {
                self.run_sync(sync, frame, is_call);
                return;
            }
        }
        let shape = handler.shape();
        let request = match self.open_request_streams(&frame, shape) {
            Ok(request) => request,
            Err(e) => {
                if is_call {
                    self.reply_error(frame.id, &e);
                } else {
                    Counters::bump(&self.shared.counters.errors_in, 1);
                }
                if frame.flags & FLAG_UPLOAD != 0 && is_call {
                    self.send_stream_frame(Kind::Stop, (Dir::Upload, frame.id), &[]);
                }
                return;
            }
        };
        let responder = if is_call {
            let r = Responder::new(self.clone(), frame.id, &self.shared.in_flight);
            if shape == Shape::Download {
                r.for_download()
            } else {
                r
            }
        } else {
            Responder::one_way(&self.shared.in_flight)
        };
        let responder = if hooks.complete.is_empty() {
            responder
        } else {
            responder.track(Completion::new(self, &info))
        };
        let ctx = HandlerContext::new(self.clone());
        // Per-call span at debug level: when disabled (the usual case) this is one check of
        // a cached flag and the handler's future is not wrapped.
        let span = tracing::debug_span!("call", command = info.command, kind = ?info.kind);
        let invoked = catch_unwind(AssertUnwindSafe(|| handler.invoke(ctx, request, responder)));
        let Some(mut work) = invoked.unwrap_or_else(|_| {
            self.handler_panicked();
            None
        }) else {
            return;
        };
        if !span.is_disabled() {
            work = Box::pin(work.instrument(span));
        }
        if let Some(queue) = &self.shared.sequential {
            // A panic fails that one call (its responder is dropped), not the queue.
            let conn = self.clone();
            let work: BoxFuture<'static, ()> = Box::pin(async move {
                if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                    conn.handler_panicked();
                }
            });
            queue.push(work, payload_len);
            return;
        }
        // Most handlers finish at once: poll inline and spawn only if the handler waits.
        // The spawned task polls again with its own waker, as the future contract requires.
        let mut cx = Context::from_waker(Waker::noop());
        match catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                let conn = self.clone();
                let task = async move {
                    if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                        conn.handler_panicked();
                    }
                };
                // In the connection's span (a clone of a disabled span costs nothing).
                let task = task.instrument(self.shared.span.clone());
                self.shared.runtime.spawn(Box::pin(task));
            }
            Err(_) => self.handler_panicked(),
        }
    }

    /// Runs a synchronous handler at once and queues its answer: no responder, no future.
    /// It counts as in flight while it runs, like any handler.
    fn run_sync(&self, handler: &dyn SyncHandler, frame: Frame, is_call: bool) {
        let _in_flight = self.shared.in_flight.enter();
        let ctx = HandlerContext::new(self.clone());
        let id = frame.id;
        let mut answered = false;
        let ran = catch_unwind(AssertUnwindSafe(|| {
            handler.call(&ctx, frame.payload, &mut |result| {
                answered = true;
                match result {
                    Ok(reply) if is_call => self.reply(id, reply),
                    Err(e) if is_call => self.reply_error(id, e),
                    _ => {}
                }
            })
        }));
        if ran.is_err() {
            self.handler_panicked();
            if is_call && !answered {
                self.reply_error(id, &Error::NoResponse);
            }
        }
    }

    /// Checks that a request has the shape its handler takes, and opens its stream: the
    /// upload it carries, or the download it asks for.
    fn open_request_streams(&self, frame: &Frame, shape: Shape) -> Result<Request, Error> {
        let asked = match frame.flags & (FLAG_UPLOAD | FLAG_DOWNLOAD) {
            0 => Shape::Call,
            FLAG_UPLOAD if frame.kind == Kind::Call => Shape::Upload,
            FLAG_DOWNLOAD if frame.kind == Kind::Call => Shape::Download,
            flags => {
                return Err(Error::BadRequest(format!(
                    "a {:?} frame with stream flags {flags:#04x}",
                    frame.kind
                )))
            }
        };
        if asked != shape {
            return Err(Error::BadRequest(format!(
                "`{}` takes {}, not {}",
                frame.command(),
                shape.describe(),
                asked.describe()
            )));
        }
        let mut request = Request {
            payload: frame.payload.clone(),
            body: None,
            offset: 0,
        };
        if shape == Shape::Call {
            return Ok(request);
        }
        let config = &self.shared.config;
        let mut streams = lock(&self.shared.streams);
        if streams.len() >= config.max_streams {
            return Err(Error::BadRequest(format!(
                "too many streams open on this connection (limit {})",
                config.max_streams
            )));
        }
        let bad = |e: postcard::Error| Error::BadRequest(format!("bad stream request: {e}"));
        if shape == Shape::Upload {
            let head: StreamHead<'_> = postcard::from_bytes(&frame.payload).map_err(bad)?;
            let key = (Dir::Upload, frame.id);
            let state = streams.open_incoming(key, config.stream_window as u64)?;
            drop(streams);
            request.body = Some(Incoming::new(self.clone(), key, state, head));
        } else {
            let want: WantStream<'_> = postcard::from_bytes(&frame.payload).map_err(bad)?;
            streams.open_outgoing((Dir::Download, frame.id))?;
            request.payload = frame.payload.slice_ref(want.meta);
            request.offset = want.offset;
        }
        Ok(request)
    }

    /// A handler panicked: its responder was dropped (the caller gets [`Error::NoResponse`]);
    /// the connection and the server carry on.
    fn handler_panicked(&self) {
        tracing::error!(conn = self.id(), "a handler panicked");
        Counters::bump(&self.shared.counters.handler_panics, 1);
    }

    /// A hook panicked: caught and counted; the connection carries on.
    pub(crate) fn hook_panicked(&self, command: &str) {
        tracing::error!(conn = self.id(), command, "a hook panicked");
        Counters::bump(&self.shared.counters.hook_panics, 1);
    }

    /// Takes everything queued, seals it in place as records (when encrypted) and writes it
    /// at once: a plain write, or one vectored write of headers, ciphertext and tags.
    async fn write_loop(
        &self,
        write: &mut BoxWrite,
        mut sealer: Option<Sealer>,
    ) -> Result<(), Error> {
        let counters = &self.shared.counters;
        let mut batch = BytesMut::new();
        let (mut parts, mut sizes) = (Vec::new(), Vec::new());
        let mut small = Vec::new();
        loop {
            let closing = poll_fn(|cx| self.take_batch(&mut batch, cx)).await;
            if batch.is_empty() {
                if closing {
                    write.close().await?;
                    return Ok(());
                }
                continue;
            }
            let written = match &mut sealer {
                Some(s) => {
                    let before = s.rekeys();
                    sizes.clear();
                    frame::group_frames(&batch, RECORD_TARGET, MAX_RECORD_PLAINTEXT, &mut sizes);
                    s.seal_in_place(&mut batch, &sizes, &mut parts, self.shared.runtime.now());
                    Counters::bump(&counters.rekeys_out, s.rekeys() - before);
                    let total = batch.len() + parts.len() * (RECORD_HEADER + TAG_LEN);
                    if total <= SMALL_WRITE {
                        // One contiguous write: the copy is cheaper than several syscalls
                        // on a stream without real vectored writes.
                        small.clear();
                        let mut rest = &batch[..];
                        for (size, part) in sizes.iter().zip(&parts) {
                            let (chunk, tail) = rest.split_at(*size);
                            rest = tail;
                            small.extend_from_slice(&part.header);
                            small.extend_from_slice(chunk);
                            small.extend_from_slice(&part.tag);
                        }
                        write.write_all(&small).await?;
                    } else {
                        let mut slices = Vec::with_capacity(parts.len() * 3);
                        let mut rest = &batch[..];
                        for (size, part) in sizes.iter().zip(&parts) {
                            let (chunk, tail) = rest.split_at(*size);
                            rest = tail;
                            slices.push(IoSlice::new(&part.header));
                            slices.push(IoSlice::new(chunk));
                            slices.push(IoSlice::new(&part.tag));
                        }
                        write_all_vectored(write, &mut slices).await?;
                    }
                    total
                }
                None => {
                    write.write_all(&batch).await?;
                    batch.len()
                }
            };
            Counters::bump(&counters.bytes_out, written as u64);
            Counters::bump(&counters.writes, 1);
            batch.clear();
            // Keep the buffers while busy, if sized like the batches being sent (a steady
            // stream of large batches must not grow a fresh buffer, page by page, for each);
            // an idle connection (nothing queued) holds none.
            if batch.capacity() > KEEP_WRITE_CAPACITY.max(2 * written)
                || self.shared.queued.load(Ordering::Relaxed) == 0
            {
                batch = BytesMut::new();
                small = Vec::new();
            }
            self.shared.write_space.notify(usize::MAX);
        }
    }

    /// Swaps the queued bytes into `batch`; returns whether the connection is closing.
    fn take_batch(&self, batch: &mut BytesMut, cx: &mut Context<'_>) -> Poll<bool> {
        let mut out = lock(&self.shared.outbox);
        if !out.buf.is_empty() {
            std::mem::swap(&mut out.buf, batch);
            self.shared.queued.store(0, Ordering::Relaxed);
            let (closing, frames) = (out.closing, std::mem::take(&mut out.frames));
            drop(out);
            Counters::bump(&self.shared.counters.frames_out, frames);
            // The outbox is empty again: senders may fill it while this batch is written.
            self.shared.write_space.notify(usize::MAX);
            return Poll::Ready(closing);
        }
        if out.closing {
            return Poll::Ready(true);
        }
        match &mut out.writer {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
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
        let polled = lock(&self.conn.shared.table).poll(self.id, cx);
        if polled.is_ready() {
            self.done = true;
        }
        polled
    }
}

impl Drop for CallFuture<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.conn.shared.table).cancel(self.id);
        }
    }
}

/// Writes every byte of `slices`, with as few vectored writes as the socket allows.
async fn write_all_vectored(
    write: &mut BoxWrite,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = write.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn decode_text(bytes: Bytes) -> Result<String, Error> {
    String::from_utf8(bytes.into()).map_err(|e| Error::Codec(format!("reply is not UTF-8: {e}")))
}

fn decode_value<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, Error> {
    postcard::from_bytes(bytes).map_err(Error::from)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
