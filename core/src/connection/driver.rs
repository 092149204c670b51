//! The connection's one task: it owns the socket, reads, opens records, decodes frames
//! and hands them to the [`Dispatcher`], then seals and writes what the outbox holds.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use super::dispatch::Dispatcher;
use super::outbox::Outbox;
use super::{lock, Connection, OnClose, SendCheck, Shared};
use crate::config::Config;
use crate::error::Error;
use crate::frame::{self, Frame, FrameDecoder, Header, Kind, FLAG_COMPRESSED};
use crate::handler::{InFlight, Router};
use crate::read_buf;
use crate::request::RequestTable;
use crate::runtime::{BoxFuture, Runtime};
use crate::secure;
use crate::secure::cipher::TAG_LEN;
use crate::secure::record::{Opener, Sealer, MAX_RECORD_PLAINTEXT, RECORD_HEADER, RECORD_TARGET};
use crate::sequential::Sequential;
use crate::stats::Counters;
use crate::stream::Streams;
use crate::transport::{BoxRead, BoxWrite};

/// Size of the buffer (in the reader's own state, not on the heap) a connection waits
/// for data with, idle or in the middle of a frame.
const IDLE_READ: usize = 128;

/// Sealed batches up to this size are copied into one buffer and written with one write.
const SMALL_WRITE: usize = 64 * 1024;

/// Write buffers larger than this are freed after use instead of kept for the next batch.
const KEEP_WRITE_CAPACITY: usize = 64 * 1024;

/// The reader's heartbeat state: the armed timer, and when the peer was last heard.
struct Watch {
    timer: Option<BoxFuture<'static, ()>>,
    heard_at: Instant,
}

/// Everything a new connection needs from its server or client.
pub(crate) struct Setup {
    pub id: u64,
    pub runtime: Arc<dyn Runtime>,
    pub router: Arc<Router>,
    pub config: Arc<Config>,
    pub in_flight: Arc<InFlight>,
    pub on_close: Option<OnClose>,
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
            send_check: (!setup.router.hooks.send.is_empty())
                .then(|| setup.router.clone() as Arc<dyn SendCheck>),
            config: setup.config,
            outbox: Mutex::new(Outbox::new()),
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
        let dispatcher = Dispatcher {
            router: setup.router,
            in_flight: Arc::new(InFlight::child(setup.in_flight)),
        };
        let driver = conn.clone().run(dispatcher, read, write, opener, sealer);
        runtime.spawn(Box::pin(driver.instrument(span.clone())));
        conn
    }

    /// The connection's one task: reads and dispatches, and writes what is queued, until
    /// either direction ends or the connection is shut from elsewhere.
    async fn run(
        self,
        dispatcher: Dispatcher,
        mut read: BoxRead,
        mut write: BoxWrite,
        opener: Option<Opener>,
        sealer: Option<Sealer>,
    ) {
        let reading = async {
            let result = self.read_loop(&dispatcher, &mut read, opener).await;
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
    async fn read_loop(
        &self,
        dispatcher: &Dispatcher,
        read: &mut BoxRead,
        mut opener: Option<Opener>,
    ) -> Result<(), Error> {
        let counters = &self.shared.counters;
        let decoder = FrameDecoder::new(self.shared.config.max_frame);
        let mut plain = BytesMut::new();
        let mut sealed = BytesMut::new();
        // A record that failed to open: reported once the authenticated ones before it
        // have been dispatched.
        let mut failure = None;
        let mut first = [0u8; IDLE_READ];
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
                if matches!(frame.kind, Kind::Call | Kind::Send)
                    && dispatcher.peer_over_limits(self)
                {
                    dispatcher.wait_peer_under_limits(self).await;
                }
                dispatcher.dispatch(self, frame)?;
            }
            if let Some(e) = failure.take() {
                return Err(e);
            }
            self.yield_to_writer().await;
            // Memory grows with the bytes that arrived: a read that may wait does so with
            // the small buffer in the reader's state, after the heap buffers were cut down
            // to their contents (an idle connection holds none); a larger window is read
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
                let n = self.read_watched(read, &mut first, &mut watch).await?;
                buf.extend_from_slice(&first[..n]);
                more = n == first.len();
                n
            } else {
                let start = buf.len();
                let window = read_buf::read_window(wanted, start);
                buf.reserve(window);
                buf.resize(start + window, 0);
                let ready = self.try_read(read, &mut buf[start..], &mut watch).await;
                let waiting = ready.is_none();
                let n = ready.transpose()?.unwrap_or(0);
                buf.truncate(start + n);
                more = n == window;
                if waiting {
                    continue; // nothing waiting after all: wait with the small buffer
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

    /// Reads once if bytes are ready, without waiting (`None` if none are), noting that
    /// the peer was heard.
    async fn try_read(
        &self,
        read: &mut BoxRead,
        buf: &mut [u8],
        watch: &mut Watch,
    ) -> Option<io::Result<usize>> {
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut **read).poll_read(cx, buf))).await;
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

    /// Reads once. With a heartbeat configured, a silence of one heartbeat sends a `Ping`
    /// (the peer's `Pong` breaks the silence) and a silence of `idle_timeout` fails with
    /// [`Error::IdleTimeout`]. The timer is armed once per heartbeat, not per read.
    async fn read_watched(
        &self,
        read: &mut BoxRead,
        buf: &mut [u8],
        watch: &mut Watch,
    ) -> Result<usize, Error> {
        let config = &self.shared.config;
        let Some(beat) = config.heartbeat else {
            return Ok(read.read(buf).await?);
        };
        let runtime = &self.shared.runtime;
        loop {
            let polled = poll_fn(|cx| {
                if let Poll::Ready(r) = Pin::new(&mut **read).poll_read(cx, buf) {
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
            // Keep the buffers while busy; an idle connection (nothing queued) holds none.
            if batch.capacity() > KEEP_WRITE_CAPACITY
                || self.shared.queued.load(Ordering::Relaxed) == 0
            {
                batch = BytesMut::new();
                small = Vec::new();
            }
            self.shared.write_space.notify(usize::MAX);
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
