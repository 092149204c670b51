//! Big streams tied to one call: any `AsyncRead` of any length, sent in chunks under a
//! flow-control window, hashed end to end, resumable from an offset, cancellable from
//! either side.
//!
//! - An **upload** is a call whose body is a stream: [`Connection::upload`] on the caller,
//!   [`Router::upload`](crate::Router::upload) on the handler side, which reads it as an
//!   [`Incoming`].
//! - A **download** is a call whose reply is a stream: [`Connection::download`] on the
//!   caller, [`Router::download`](crate::Router::download) on the handler side, which
//!   answers with an [`Outgoing`].
//!
//! Both work in either direction (a server can download from a client it calls back).
//! The receiver grants credit as its consumer reads, so a slow consumer slows the sender
//! and neither side buffers more than a window. Each chunk is its own frame, so the small
//! calls on the same connection interleave with a transfer instead of queueing behind it.
//!
//! ```no_run
//! # async fn demo(client: zserver_core::Client) -> Result<(), zserver_core::Error> {
//! use zserver_core::{Error, Outgoing, Router};
//! let router = Router::new()
//!     .download("get", |_ctx, req| async move {
//!         match req.meta_str()? {
//!             "report.pdf" => Outgoing::file("files/report.pdf", req.offset).await,
//!             other => Err(Error::BadRequest(format!("no file `{other}`"))),
//!         }
//!     })
//!     .upload("put", |_ctx, body| async move { body.read_all(1 << 20).await });
//! // On the client: a file download, resumed where an earlier attempt stopped.
//! let written = client.download_to_file("get", "report.pdf", "report.pdf", true).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use std::io::{Read, Seek, Write};

use futures_lite::io::{AsyncRead, AsyncReadExt};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::error::Error;
use crate::frame::{Frame, Kind, FLAG_DOWNLOAD, FLAG_UPLOAD};

/// Largest piece of stream data in one `Data` frame.
pub const CHUNK: usize = 64 * 1024;

/// Credit every stream starts with: the sender may send this many bytes before the
/// receiver grants more with `Credit` frames. Part of the protocol.
pub const INITIAL_WINDOW: u64 = 256 * 1024;

/// Most bytes a stream sender lets queue in its connection's outbox before it waits: big
/// write batches for a lone transfer, and a bound on what a small call queued beside it
/// waits behind.
const STREAM_QUEUE_MAX: usize = 8 * CHUNK;

/// Least a stream sender may queue, however many transfers run.
const STREAM_QUEUE_MIN: usize = 2 * CHUNK;

/// Bytes all the stream senders of this process may queue together; each gets an equal
/// share between the two bounds above, so that a thousand transfers do not hold a thousand
/// full queues.
const STREAM_QUEUE_BUDGET: usize = 64 * 1024 * 1024;

/// Stream senders running in this process.
static SENDERS: AtomicUsize = AtomicUsize::new(0);

/// This sender's share of the queue budget right now.
fn queue_share() -> usize {
    let senders = SENDERS.load(Ordering::Relaxed).max(1);
    (STREAM_QUEUE_BUDGET / senders).clamp(STREAM_QUEUE_MIN, STREAM_QUEUE_MAX)
}

/// Length of the hash in an `End` frame (BLAKE3).
pub const HASH_LEN: usize = 32;

/// Which stream of a call a stream frame belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Dir {
    /// The caller's body; `id` is the caller's request id.
    Upload,
    /// The handler's answer; `id` is the caller's request id.
    Download,
}

impl Dir {
    pub(crate) fn flag(self) -> u8 {
        match self {
            Dir::Upload => FLAG_UPLOAD,
            Dir::Download => FLAG_DOWNLOAD,
        }
    }

    fn from_flags(flags: u8) -> Result<Self, Error> {
        match flags & (FLAG_UPLOAD | FLAG_DOWNLOAD) {
            FLAG_UPLOAD => Ok(Dir::Upload),
            FLAG_DOWNLOAD => Ok(Dir::Download),
            _ => Err(Error::Protocol(format!(
                "stream frame with flags {flags:#04x}: exactly one direction flag is required"
            ))),
        }
    }
}

/// Names one stream on a connection.
pub(crate) type Key = (Dir, u64);

/// The head of a stream: sent as the payload of an upload `Call` and of a download `Reply`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct StreamHead<'a> {
    /// Bytes the stream will carry, if known.
    pub total: Option<u64>,
    /// Application data about the stream (a file name, a content type, ...).
    #[serde(borrow)]
    pub meta: &'a [u8],
}

/// What a download `Call` carries: where to start, and what to send.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct WantStream<'a> {
    /// Offset to resume from (0 for a fresh download).
    pub offset: u64,
    /// Application data naming what to send.
    #[serde(borrow)]
    pub meta: &'a [u8],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- sans-IO state -------------------------------------------------------------------

/// Receiving side of one stream: chunks not yet consumed, and the credit accounting.
#[derive(Debug)]
pub(crate) struct Inbound {
    queue: VecDeque<Bytes>,
    /// Bytes received, and the most the sender may have sent (credit granted so far).
    received: u64,
    allowed: u64,
    /// Bytes handed to the consumer.
    consumed: u64,
    window: u64,
    /// `End`'s hash, or why the stream failed.
    end: Option<Result<[u8; HASH_LEN], Error>>,
    waker: Option<Waker>,
}

impl Inbound {
    /// A stream whose consumer keeps up to `window` bytes buffered (at least the initial one).
    pub(crate) fn new(window: u64) -> Self {
        Self {
            queue: VecDeque::new(),
            received: 0,
            allowed: INITIAL_WINDOW,
            consumed: 0,
            window: window.max(INITIAL_WINDOW),
            end: None,
            waker: None,
        }
    }

    /// A `Data` frame arrived. Data beyond the granted credit breaks the protocol. (So
    /// does data after the end, but the reader only meets that when the connection closed
    /// under it: `End` and `Abort` make the connection forget the stream, so later `Data`
    /// finds none and is answered with `Stop`, as docs/PROTOCOL.md §5b says.)
    pub(crate) fn on_data(&mut self, data: Bytes) -> Result<(), Error> {
        if self.end.is_some() {
            return Err(Error::Protocol(
                "stream data after the end of the stream".into(),
            ));
        }
        let n = data.len() as u64;
        if self.received + n > self.allowed {
            return Err(Error::Protocol(format!(
                "stream data beyond the window: {} bytes allowed, {} sent",
                self.allowed,
                self.received + n
            )));
        }
        self.received += n;
        if n > 0 {
            self.queue.push_back(data);
            self.wake();
        }
        Ok(())
    }

    /// The stream ended (`End`) or failed (`Abort`, connection closed). The first wins.
    pub(crate) fn on_end(&mut self, end: Result<[u8; HASH_LEN], Error>) {
        if self.end.is_none() {
            self.end = Some(end);
            self.wake();
        }
    }

    /// Bytes buffered and not yet consumed.
    pub(crate) fn buffered(&self) -> u64 {
        self.received - self.consumed
    }

    /// Credit to grant now, if the consumer has freed at least half a window.
    pub(crate) fn take_credit(&mut self) -> Option<u64> {
        let target = self.consumed + self.window;
        let grant = target - self.allowed.min(target);
        (grant >= self.window / 2 && self.end.is_none()).then(|| {
            self.allowed = target;
            grant
        })
    }

    /// The next chunk, or the end of the stream.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some(chunk) = self.queue.pop_front() {
            self.consumed += chunk.len() as u64;
            return Poll::Ready(Next::Chunk(chunk));
        }
        match &self.end {
            Some(Ok(hash)) => Poll::Ready(Next::End(*hash, self.received)),
            Some(Err(e)) => Poll::Ready(Next::Failed(e.clone())),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

enum Next {
    Chunk(Bytes),
    End([u8; HASH_LEN], u64),
    Failed(Error),
}

/// Sending side of one stream: the credit the receiver has granted.
#[derive(Debug)]
pub(crate) struct Outbound {
    credit: u64,
    stopped: Option<Error>,
    waker: Option<Waker>,
}

impl Outbound {
    pub(crate) fn new() -> Self {
        Self {
            credit: INITIAL_WINDOW,
            stopped: None,
            waker: None,
        }
    }

    pub(crate) fn on_credit(&mut self, n: u64) {
        self.credit = self.credit.saturating_add(n);
        self.wake();
    }

    /// The receiver stopped the stream, or the connection closed. The first reason wins.
    pub(crate) fn on_stop(&mut self, why: Error) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
            self.wake();
        }
    }

    /// Waits for credit; returns how many bytes may be sent now.
    fn poll_credit(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, Error>> {
        if let Some(e) = &self.stopped {
            return Poll::Ready(Err(e.clone()));
        }
        if self.credit > 0 {
            return Poll::Ready(Ok(self.credit));
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The streams open on one connection.
#[derive(Default)]
pub(crate) struct Streams {
    incoming: FxHashMap<Key, Arc<Mutex<Inbound>>>,
    outgoing: FxHashMap<Key, Arc<Mutex<Outbound>>>,
    closed: Option<Error>,
}

impl Streams {
    /// Streams open in both directions.
    pub(crate) fn len(&self) -> usize {
        self.incoming.len() + self.outgoing.len()
    }

    pub(crate) fn open_incoming(
        &mut self,
        key: Key,
        window: u64,
    ) -> Result<Arc<Mutex<Inbound>>, Error> {
        if let Some(e) = &self.closed {
            return Err(e.clone());
        }
        if self.incoming.contains_key(&key) {
            return Err(already_open(key));
        }
        let state = Arc::new(Mutex::new(Inbound::new(window)));
        self.incoming.insert(key, state.clone());
        Ok(state)
    }

    pub(crate) fn open_outgoing(&mut self, key: Key) -> Result<Arc<Mutex<Outbound>>, Error> {
        if let Some(e) = &self.closed {
            return Err(e.clone());
        }
        if self.outgoing.contains_key(&key) {
            return Err(already_open(key));
        }
        let state = Arc::new(Mutex::new(Outbound::new()));
        self.outgoing.insert(key, state.clone());
        Ok(state)
    }

    /// The sending state of stream `key`, if it is open.
    pub(crate) fn outgoing(&self, key: Key) -> Option<Arc<Mutex<Outbound>>> {
        self.outgoing.get(&key).cloned()
    }

    pub(crate) fn forget_incoming(&mut self, key: Key) {
        self.incoming.remove(&key);
    }

    pub(crate) fn forget_outgoing(&mut self, key: Key) -> Option<Arc<Mutex<Outbound>>> {
        self.outgoing.remove(&key)
    }

    /// The connection closed: every stream fails with `error`, and no new one opens.
    pub(crate) fn close(&mut self, error: &Error) {
        self.closed = Some(error.clone());
        for (_, s) in self.incoming.drain() {
            lock(&s).on_end(Err(error.clone()));
        }
        for (_, s) in self.outgoing.drain() {
            lock(&s).on_stop(error.clone());
        }
    }
}

/// A peer reused the id of a stream that is still open (replacing it would orphan the
/// handler or sender waiting on the first one).
fn already_open(key: Key) -> Error {
    Error::BadRequest(format!("stream {:?} {} is already open", key.0, key.1))
}

/// Opens and forgets streams of one direction, so that a call can open either kind.
pub(crate) trait Open<S> {
    fn open(&mut self, key: Key, window: u64) -> Result<Arc<Mutex<S>>, Error>;
    fn forget(&mut self, key: Key);
}

impl Open<Inbound> for Streams {
    fn open(&mut self, key: Key, window: u64) -> Result<Arc<Mutex<Inbound>>, Error> {
        self.open_incoming(key, window)
    }
    fn forget(&mut self, key: Key) {
        self.forget_incoming(key);
    }
}

impl Open<Outbound> for Streams {
    fn open(&mut self, key: Key, _window: u64) -> Result<Arc<Mutex<Outbound>>, Error> {
        self.open_outgoing(key)
    }
    fn forget(&mut self, key: Key) {
        self.forget_outgoing(key);
    }
}

// ----- the reader's side ---------------------------------------------------------------

/// Routes one stream frame from the peer. An error closes the connection.
pub(crate) fn on_frame(conn: &Connection, frame: Frame) -> Result<(), Error> {
    let key = (Dir::from_flags(frame.flags)?, frame.id);
    match frame.kind {
        Kind::Data | Kind::End | Kind::Abort => {
            let state = lock(conn.streams()).incoming.get(&key).cloned();
            let Some(state) = state else {
                // Stopped or never opened here: tell the sender once it sends data.
                if frame.kind == Kind::Data {
                    conn.send_stream_frame(Kind::Stop, key, &[]);
                }
                return Ok(());
            };
            let mut state = lock(&state);
            match frame.kind {
                Kind::Data => state.on_data(frame.payload)?,
                Kind::End => {
                    let hash: [u8; HASH_LEN] = frame.payload[..].try_into().map_err(|_| {
                        Error::Protocol(format!(
                            "End frame with a {}-byte hash, {HASH_LEN} expected",
                            frame.payload.len()
                        ))
                    })?;
                    state.on_end(Ok(hash));
                    drop(state);
                    lock(conn.streams()).forget_incoming(key);
                }
                _ => {
                    let why = String::from_utf8_lossy(&frame.payload).into_owned();
                    state.on_end(Err(Error::StreamAborted(why)));
                    drop(state);
                    lock(conn.streams()).forget_incoming(key);
                }
            }
        }
        Kind::Credit | Kind::Stop => {
            let state = lock(conn.streams()).outgoing.get(&key).cloned();
            if let Some(state) = state {
                if frame.kind == Kind::Credit {
                    let n: [u8; 8] = frame.payload[..].try_into().map_err(|_| {
                        Error::Protocol("Credit frame without an 8-byte amount".into())
                    })?;
                    lock(&state).on_credit(u64::from_le_bytes(n));
                } else {
                    lock(&state).on_stop(Error::StreamAborted(
                        "the receiver stopped the stream".into(),
                    ));
                }
            }
        }
        _ => unreachable!("only stream frames are routed here"),
    }
    Ok(())
}

// ----- progress ------------------------------------------------------------------------

/// Bytes done and expected of one transfer, readable from any task while it runs.
/// Cheap to clone; all clones see the same transfer.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<ProgressInner>);

#[derive(Debug, Default)]
struct ProgressInner {
    done: AtomicU64,
    /// `u64::MAX` while unknown.
    total: AtomicU64,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        let p = Progress::default();
        p.0.total
            .store(total.unwrap_or(u64::MAX), Ordering::Relaxed);
        p
    }

    /// Bytes sent or received so far.
    pub fn done(&self) -> u64 {
        self.0.done.load(Ordering::Relaxed)
    }

    /// Bytes the transfer carries in all, when the sender said.
    pub fn total(&self) -> Option<u64> {
        match self.0.total.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    fn advance(&self, n: u64) -> u64 {
        self.0.done.fetch_add(n, Ordering::Relaxed) + n
    }
}

/// A progress callback: bytes done, bytes in all (if known).
type OnProgress = Box<dyn FnMut(u64, Option<u64>) + Send>;

// ----- sending -------------------------------------------------------------------------

enum Source {
    Reader(Pin<Box<dyn AsyncRead + Send>>),
    Bytes(Bytes),
    /// Read a chunk at a time on the blocking pool: no read-ahead buffer.
    File(Arc<std::fs::File>),
}

/// A stream to send: an upload's body or a download's answer.
pub struct Outgoing {
    source: Source,
    total: Option<u64>,
    meta: Bytes,
    progress: Progress,
    on_progress: Option<OnProgress>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("total", &self.total)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// Streams everything `reader` yields. `total`, if given, is announced to the receiver
    /// (for its progress) and checked: a source that yields another length fails the stream.
    /// For tokio's readers, wrap them with `tokio_util::compat`.
    pub fn reader(reader: impl AsyncRead + Send + 'static, total: Option<u64>) -> Self {
        Self::from_source(Source::Reader(Box::pin(reader)), total)
    }

    /// Sends one in-memory block (ZServer4D's complete buffer): chunks are slices of it,
    /// never copies of the whole.
    pub fn bytes(block: impl Into<Bytes>) -> Self {
        let block = block.into();
        let total = Some(block.len() as u64);
        Self::from_source(Source::Bytes(block), total)
    }

    /// Streams the file at `path` from byte `offset` (to resume a download), without
    /// loading it into memory. An offset past the end is [`Error::BadRequest`].
    pub async fn file(path: impl AsRef<Path>, offset: u64) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let opened = blocking::unblock(move || {
            let mut file = std::fs::File::open(&path)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            let len = file.metadata()?.len();
            if offset > len {
                return Err(Error::BadRequest(format!(
                    "offset {offset} is past the end of a {len}-byte file"
                )));
            }
            file.seek(io::SeekFrom::Start(offset))?;
            Ok((file, len))
        });
        let (file, len) = opened.await?;
        Ok(Self::from_source(
            Source::File(Arc::new(file)),
            Some(len - offset),
        ))
    }

    fn from_source(source: Source, total: Option<u64>) -> Self {
        Self {
            source,
            total,
            meta: Bytes::new(),
            progress: Progress::new(total),
            on_progress: None,
        }
    }

    /// Application data sent ahead of the stream (a name, a size, a content type).
    pub fn meta(mut self, meta: impl Into<Bytes>) -> Self {
        self.meta = meta.into();
        self
    }

    /// Calls `f(done, total)` as the stream is sent (on the sending task: keep it short).
    pub fn on_progress(mut self, f: impl FnMut(u64, Option<u64>) + Send + 'static) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }

    /// A handle on this transfer's progress, readable from another task.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The announced length, if any.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub(crate) fn head(&self) -> Result<Vec<u8>, Error> {
        Ok(postcard::to_allocvec(&StreamHead {
            total: self.total,
            meta: &self.meta,
        })?)
    }
}

/// Sends `body` as stream `key`: chunks under the receiver's credit, then `End` with the
/// hash. Dropped or failed before the end, it tells the receiver with `Abort`.
pub(crate) async fn pump(
    conn: &Connection,
    key: Key,
    state: Arc<Mutex<Outbound>>,
    mut body: Outgoing,
) -> Result<u64, Error> {
    struct Guard<'a> {
        conn: &'a Connection,
        key: Key,
        done: bool,
    }
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            SENDERS.fetch_sub(1, Ordering::Relaxed);
            lock(self.conn.streams()).forget_outgoing(self.key);
            if !self.done {
                self.conn.send_stream_frame(
                    Kind::Abort,
                    self.key,
                    b"the sender cancelled the stream",
                );
            }
        }
    }
    SENDERS.fetch_add(1, Ordering::Relaxed);
    let mut guard = Guard {
        conn,
        key,
        done: false,
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    let mut sent = 0u64;
    loop {
        let mut held = Bytes::new();
        let read = match &mut body.source {
            Source::Bytes(block) => {
                if block.is_empty() {
                    break;
                }
                held = block.split_to(block.len().min(CHUNK));
                None
            }
            Source::Reader(reader) => {
                buf.resize(CHUNK, 0);
                Some(reader.read(&mut buf).await)
            }
            Source::File(file) => {
                let (file, mut taken) = (file.clone(), std::mem::take(&mut buf));
                taken.resize(CHUNK, 0);
                let (read, taken) = blocking::unblock(move || {
                    let read = (&*file).read(&mut taken);
                    (read, taken)
                })
                .await;
                buf = taken;
                Some(read)
            }
        };
        let chunk: &[u8] = match read {
            None => &held,
            Some(Ok(0)) => break,
            Some(Ok(n)) => &buf[..n],
            Some(Err(e)) => {
                let why = format!("the sender's source failed: {e}");
                guard.done = true;
                conn.send_stream_frame(Kind::Abort, key, why.as_bytes());
                return Err(e.into());
            }
        };
        hasher.update(chunk);
        let mut rest = chunk;
        while !rest.is_empty() {
            let credit = std::future::poll_fn(|cx| lock(&state).poll_credit(cx)).await?;
            let take = rest.len().min(credit.min(CHUNK as u64) as usize);
            conn.wait_for_stream_space(queue_share()).await;
            conn.send_stream_data(key, &rest[..take])?;
            lock(&state).credit -= take as u64;
            rest = &rest[take..];
            sent += take as u64;
            let done = body.progress.advance(take as u64);
            if let Some(f) = &mut body.on_progress {
                f(done, body.total);
            }
        }
    }
    if let Some(total) = body.total.filter(|t| *t != sent) {
        let why = format!("the source yielded {sent} bytes but {total} were announced");
        guard.done = true;
        conn.send_stream_frame(Kind::Abort, key, why.as_bytes());
        return Err(Error::Integrity(why));
    }
    guard.done = true;
    conn.send_stream_frame(Kind::End, key, hasher.finalize().as_bytes());
    Ok(sent)
}

// ----- receiving -----------------------------------------------------------------------

/// A stream being received: an upload's body in a handler, or a download's answer.
///
/// Read it as an `AsyncRead`, chunk by chunk with [`chunk`](Self::chunk), whole with
/// [`read_all`](Self::read_all), or into a file with [`save`](Self::save). The end is
/// reported only after the hash of everything received matched the sender's. Dropping it
/// before the end stops the sender at once.
pub struct Incoming {
    conn: Connection,
    key: Key,
    state: Arc<Mutex<Inbound>>,
    meta: Bytes,
    progress: Progress,
    on_progress: Option<OnProgress>,
    hasher: blake3::Hasher,
    current: Bytes,
    finished: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("key", &self.key)
            .field("meta", &self.meta)
            .field("done", &self.progress.done())
            .field("total", &self.progress.total())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    pub(crate) fn new(
        conn: Connection,
        key: Key,
        state: Arc<Mutex<Inbound>>,
        head: StreamHead<'_>,
    ) -> Self {
        Self {
            conn,
            key,
            state,
            meta: Bytes::copy_from_slice(head.meta),
            progress: Progress::new(head.total),
            on_progress: None,
            hasher: blake3::Hasher::new(),
            current: Bytes::new(),
            finished: false,
        }
    }

    /// The sender's application data about the stream.
    pub fn meta(&self) -> &Bytes {
        &self.meta
    }

    /// Bytes the stream carries in all, if the sender said.
    pub fn total(&self) -> Option<u64> {
        self.progress.total()
    }

    /// A handle on this transfer's progress, readable from another task.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Calls `f(done, total)` as chunks are consumed (on the consuming task).
    pub fn on_progress(&mut self, f: impl FnMut(u64, Option<u64>) + Send + 'static) {
        self.on_progress = Some(Box::new(f));
    }

    /// Bytes received and not yet consumed (never more than the receive window).
    pub fn buffered(&self) -> u64 {
        lock(&self.state).buffered()
    }

    /// The next chunk; `Ok(None)` at the end once the hash has been checked.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, Error>> {
        if self.finished {
            return Poll::Ready(Ok(None));
        }
        let next = lock(&self.state).poll_next(cx);
        let Poll::Ready(next) = next else {
            return Poll::Pending;
        };
        Poll::Ready(match next {
            Next::Chunk(chunk) => {
                self.grant_credit();
                self.hasher.update(&chunk);
                let done = self.progress.advance(chunk.len() as u64);
                if let Some(f) = &mut self.on_progress {
                    f(done, self.progress.total());
                }
                Ok(Some(chunk))
            }
            Next::End(hash, received) => {
                self.finished = true;
                self.verify(hash, received).map(|()| None)
            }
            Next::Failed(e) => {
                self.finished = true;
                Err(e)
            }
        })
    }

    /// The next chunk; `Ok(None)` at the end once the hash has been checked.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Receives the whole stream into one buffer (ZServer4D's complete buffer), allocated
    /// once when the length is announced. A stream longer than `limit` bytes is refused
    /// before it is received.
    pub async fn read_all(mut self, limit: usize) -> Result<Bytes, Error> {
        let too_long = |n: u64| Error::BadRequest(format!("stream of {n} bytes exceeds {limit}"));
        let announced = self.total().unwrap_or(0);
        if announced > limit as u64 {
            return Err(too_long(announced));
        }
        let mut all = Vec::with_capacity(announced as usize);
        while let Some(chunk) = self.chunk().await? {
            if all.len() + chunk.len() > limit {
                return Err(too_long((all.len() + chunk.len()) as u64));
            }
            if all.is_empty() && announced as usize == chunk.len() {
                return match self.chunk().await? {
                    None => Ok(chunk),
                    Some(_) => Err(too_long(announced + 1)),
                };
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.into())
    }

    /// Writes the stream to the file at `path` (appending when `append`, to resume; else
    /// replacing it). Returns the bytes written. On an error the bytes received so far stay
    /// in the file, so that a later download can resume from its length.
    pub async fn save(mut self, path: impl AsRef<Path>, append: bool) -> Result<u64, Error> {
        let path = path.as_ref().to_owned();
        let file = blocking::unblock(move || {
            let mut options = std::fs::OpenOptions::new();
            options.create(true);
            if append {
                options.append(true);
            } else {
                options.write(true).truncate(true);
            }
            options
                .open(&path)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))
        });
        let file = Arc::new(file.await?);
        let mut written = 0u64;
        // One chunk at a time on the blocking pool, so nothing is buffered ahead.
        while let Some(chunk) = self.chunk().await? {
            let file = file.clone();
            let len = chunk.len() as u64;
            blocking::unblock(move || (&*file).write_all(&chunk)).await?;
            written += len;
        }
        Ok(written)
    }

    fn verify(&self, hash: [u8; HASH_LEN], received: u64) -> Result<(), Error> {
        if let Some(total) = self.total().filter(|t| *t != received) {
            return Err(Error::Integrity(format!(
                "received {received} bytes of a stream announced as {total}"
            )));
        }
        if self.hasher.finalize().as_bytes() != &hash {
            return Err(Error::Integrity(
                "the stream's hash does not match the sender's".into(),
            ));
        }
        Ok(())
    }

    fn grant_credit(&self) {
        let credit = lock(&self.state).take_credit();
        if let Some(n) = credit {
            self.conn
                .send_stream_frame(Kind::Credit, self.key, &n.to_le_bytes());
        }
    }
}

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        while self.current.is_empty() {
            match self.poll_chunk(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => self.current = chunk,
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Poll::Ready(Ok(n))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        lock(self.conn.streams()).forget_incoming(self.key);
        if !self.finished {
            self.conn.send_stream_frame(Kind::Stop, self.key, &[]);
        }
    }
}

/// What a download handler is asked for.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// The caller's application data (a file name, a query, ...).
    pub meta: Bytes,
    /// Where to start: non-zero when the caller resumes an interrupted download.
    pub offset: u64,
}

impl DownloadRequest {
    /// `meta` as UTF-8 text.
    pub fn meta_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.meta)
            .map_err(|e| Error::BadRequest(format!("download name is not UTF-8: {e}")))
    }
}

// ----- the caller's side ---------------------------------------------------------------

impl Connection {
    /// Calls `command` with `body` as a stream after `meta`, and waits for the handler's
    /// reply. The body is read and sent chunk by chunk as the receiver's window allows;
    /// if the handler answers before reading it all, sending stops.
    pub async fn upload(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        body: Outgoing,
    ) -> Result<Bytes, Error> {
        let head = postcard::to_allocvec(&StreamHead {
            total: body.total,
            meta: meta.as_ref(),
        })?;
        let (id, state) = self.start_stream_call(command, FLAG_UPLOAD, &head).await?;
        let mut reply = std::pin::pin!(self.call_future(id));
        enum First {
            Sent(Result<u64, Error>),
            Replied(Result<Bytes, Error>),
        }
        let first = futures_lite::future::or(
            async { First::Sent(pump(self, (Dir::Upload, id), state, body).await) },
            async { First::Replied(reply.as_mut().await) },
        )
        .await;
        match first {
            First::Replied(result) => result,
            // The source itself failed: that is this side's error.
            First::Sent(Err(e @ (Error::Io(_) | Error::Integrity(_)))) => Err(e),
            First::Sent(_) => reply.await,
        }
    }

    /// Calls `command`, whose handler answers with a stream, starting at byte `offset`
    /// (non-zero to resume). Returns as soon as the stream starts.
    pub async fn download(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        offset: u64,
    ) -> Result<Incoming, Error> {
        let want = postcard::to_allocvec(&WantStream {
            offset,
            meta: meta.as_ref(),
        })?;
        let (id, state) = self
            .start_stream_call(command, FLAG_DOWNLOAD, &want)
            .await?;
        let key = (Dir::Download, id);
        let head = match self.call_future(id).await {
            Ok(head) => head,
            Err(e) => {
                lock(self.streams()).forget_incoming(key);
                return Err(e);
            }
        };
        match postcard::from_bytes::<StreamHead<'_>>(&head) {
            Ok(head) => Ok(Incoming::new(self.clone(), key, state, head)),
            Err(e) => {
                lock(self.streams()).forget_incoming(key);
                self.send_stream_frame(Kind::Stop, key, &[]);
                Err(Error::Codec(format!("bad stream head: {e}")))
            }
        }
    }

    /// Downloads into the file at `path`. With `resume`, an existing file is kept and the
    /// download continues from its length; otherwise the file is replaced. Returns the
    /// bytes written by this call.
    pub async fn download_to_file(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        path: impl AsRef<Path>,
        resume: bool,
    ) -> Result<u64, Error> {
        let path = path.as_ref();
        let offset = match resume {
            true => {
                let path = path.to_owned();
                blocking::unblock(move || std::fs::metadata(path).map_or(0, |m| m.len())).await
            }
            false => 0,
        };
        self.download(command, meta, offset)
            .await?
            .save(path, resume)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn data_beyond_the_window_is_a_protocol_error() {
        let mut s = Inbound::new(INITIAL_WINDOW);
        s.on_data(Bytes::from(vec![0; INITIAL_WINDOW as usize]))
            .unwrap();
        assert!(matches!(
            s.on_data(Bytes::from_static(b"x")),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn credit_follows_consumption_and_bounds_the_buffer() {
        let window = 4 * INITIAL_WINDOW;
        let mut s = Inbound::new(window);
        // Credit past the initial window is granted once the consumer starts taking data
        // (an unread stream costs only the initial window); here, up to its window at once.
        assert_eq!(s.take_credit(), Some(window - INITIAL_WINDOW));
        assert_eq!(s.take_credit(), None);
        let chunk = Bytes::from(vec![7; CHUNK]);
        let mut sent = 0;
        while sent + (CHUNK as u64) <= window {
            s.on_data(chunk.clone()).unwrap();
            sent += CHUNK as u64;
        }
        assert_eq!(s.buffered(), window);
        assert!(s.on_data(chunk.clone()).is_err(), "the window is full");
        let mut cx = noop_cx();
        let mut consumed = 0;
        while consumed < window / 2 {
            assert!(matches!(s.poll_next(&mut cx), Poll::Ready(Next::Chunk(_))));
            consumed += CHUNK as u64;
            if consumed < window / 2 {
                assert_eq!(s.take_credit(), None, "no credit before half a window");
            }
        }
        assert_eq!(s.take_credit(), Some(window / 2));
    }

    #[test]
    fn end_comes_after_the_last_chunk_and_the_first_end_wins() {
        let mut s = Inbound::new(INITIAL_WINDOW);
        s.on_data(Bytes::from_static(b"abc")).unwrap();
        s.on_end(Ok([1; HASH_LEN]));
        s.on_end(Err(Error::Closed));
        assert!(s.on_data(Bytes::from_static(b"late")).is_err());
        let mut cx = noop_cx();
        assert!(matches!(s.poll_next(&mut cx), Poll::Ready(Next::Chunk(c)) if &c[..] == b"abc"));
        assert!(matches!(
            s.poll_next(&mut cx),
            Poll::Ready(Next::End(h, 3)) if h == [1; HASH_LEN]
        ));
    }

    #[test]
    fn a_sender_waits_for_credit_and_stops_when_told() {
        let mut s = Outbound::new();
        let mut cx = noop_cx();
        assert!(matches!(
            s.poll_credit(&mut cx),
            Poll::Ready(Ok(INITIAL_WINDOW))
        ));
        s.credit = 0;
        assert!(s.poll_credit(&mut cx).is_pending());
        s.on_credit(10);
        assert!(matches!(s.poll_credit(&mut cx), Poll::Ready(Ok(10))));
        s.on_stop(Error::Closed);
        assert!(matches!(
            s.poll_credit(&mut cx),
            Poll::Ready(Err(Error::Closed))
        ));
    }

    #[test]
    fn closing_fails_every_stream_and_refuses_new_ones() {
        let mut streams = Streams::default();
        let inbound = streams.open_incoming((Dir::Upload, 1), 0).unwrap();
        let outbound = streams.open_outgoing((Dir::Download, 1)).unwrap();
        streams.close(&Error::Closed);
        assert_eq!(streams.len(), 0);
        let mut cx = noop_cx();
        assert!(matches!(
            lock(&inbound).poll_next(&mut cx),
            Poll::Ready(Next::Failed(Error::Closed))
        ));
        assert!(lock(&outbound).poll_credit(&mut cx).is_ready());
        assert!(streams.open_outgoing((Dir::Upload, 2)).is_err());
    }

    #[test]
    fn a_stream_id_in_use_cannot_be_opened_again() {
        let mut streams = Streams::default();
        streams.open_incoming((Dir::Upload, 7), 0).unwrap();
        streams.open_outgoing((Dir::Download, 7)).unwrap();
        assert!(matches!(
            streams.open_incoming((Dir::Upload, 7), 0),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            streams.open_outgoing((Dir::Download, 7)),
            Err(Error::BadRequest(_))
        ));
        assert_eq!(streams.len(), 2);
    }

    #[test]
    fn stream_heads_round_trip() {
        let head = StreamHead {
            total: Some(5),
            meta: b"name",
        };
        let bytes = postcard::to_allocvec(&head).unwrap();
        assert_eq!(
            postcard::from_bytes::<StreamHead<'_>>(&bytes).unwrap(),
            head
        );
    }
}
