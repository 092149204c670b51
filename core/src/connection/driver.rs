//! The connection's one task: it owns the socket and one timer. It reads, feeds the bytes
//! to the protocol state, acts on its events (handing requests and stream frames to the
//! [`Dispatcher`]), and writes what the state hands out; its timer is re-armed to the
//! state's next deadline and fires [`Proto::handle_timeout`].

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use event_listener::{Event as Notify, EventListener};
use futures_lite::io::AsyncWriteExt;
use tracing::Instrument;

use super::dispatch::Dispatcher;
use super::outbox::State;
use super::{lock, Connection, OnClose, SendCheck, Shared};
use crate::config::Config;
use crate::error::Error;
use crate::handler::{InFlight, Router};
use crate::proto::{Event, Keys, Limits, Packer, Proto, Transmit};
use crate::read_buf;
use crate::request::Wake;
use crate::runtime::{BoxFuture, Runtime};
use crate::sequential::Sequential;
use crate::stats::Counters;
use crate::transport::{BoxRead, BoxWrite};

/// The driver's one timer: armed for the protocol state's next deadline, re-made only
/// when that deadline comes earlier than the one it is armed for.
#[derive(Default)]
struct Timer {
    at: Option<Instant>,
    sleep: Option<BoxFuture<'static, ()>>,
}

impl Timer {
    /// Rings when `due` (the protocol state's next deadline) comes. Re-made only for an
    /// earlier deadline: one that moved later (the peer was heard) lets the armed timer
    /// ring early, and it is re-armed then.
    fn poll(
        &mut self,
        due: Option<Instant>,
        runtime: &dyn Runtime,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if let Some(at) = due.filter(|&at| self.at.is_none_or(|armed| at < armed)) {
            self.at = Some(at);
            self.sleep = Some(runtime.sleep(at.saturating_duration_since(runtime.now())));
        }
        if let Some(sleep) = &mut self.sleep {
            if sleep.as_mut().poll(cx).is_ready() {
                *self = Timer::default();
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// What ended the driver's wait for input.
enum Woke {
    /// This many bytes were read and handed to the protocol state (0: the peer closed).
    Read(usize),
    /// The protocol state's next deadline came.
    Timer,
    /// The writer made room in a congested connection: reading may go on.
    Space,
}

/// Everything a new connection needs from its server or client.
pub(crate) struct Setup {
    pub id: u64,
    pub runtime: Arc<dyn Runtime>,
    pub router: Arc<Router>,
    pub config: Arc<Config>,
    pub in_flight: Arc<InFlight>,
    /// The trusted proxy the connection came through, when `peer` is the client's address
    /// as that proxy announced it.
    pub proxy: Option<SocketAddr>,
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
        let (keys, peer_key) = match handshaken.secure {
            Some(s) => {
                let keys = Keys {
                    sealer: s.sealer,
                    opener: s.opener,
                };
                (Some(keys), Some(s.peer_key))
            }
            None => (None, None),
        };
        let span = tracing::info_span!(
            "connection",
            id = setup.id,
            %peer,
            proxy = tracing::field::Empty,
            user = tracing::field::Empty
        );
        if let Some(proxy) = setup.proxy {
            span.record("proxy", tracing::field::display(proxy));
        }
        let sequential = setup
            .config
            .sequential
            .then(|| Sequential::start(&*setup.runtime, &span));
        let counters = Arc::new(Counters::default());
        let proto = Proto::new(
            Limits::of(&setup.config),
            keys,
            handshaken.codec.clone(),
            counters.clone(),
            setup.runtime.now(),
        );
        let shared = Arc::new(Shared {
            id: setup.id,
            peer,
            proxy: setup.proxy,
            peer_key,
            packer: Packer::new(
                handshaken.codec,
                setup.config.compression.threshold,
                setup.config.max_frame,
            ),
            runtime: setup.runtime,
            send_check: (!setup.router.hooks.send.is_empty())
                .then(|| setup.router.clone() as Arc<dyn SendCheck>),
            config: setup.config,
            state: Mutex::new(State {
                proto,
                writer: None,
            }),
            queued: AtomicUsize::new(0),
            handed_over: AtomicBool::new(false),
            rearm: AtomicBool::new(false),
            write_space: Notify::new(),
            counters,
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            closed_event: Notify::new(),
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
        let driver = conn.clone().run(dispatcher, read, write);
        runtime.spawn(Box::pin(driver.instrument(span.clone())));
        conn
    }

    /// The connection's one task: reads and dispatches, and writes what is queued, until
    /// either direction ends or the connection is shut from elsewhere.
    async fn run(self, dispatcher: Dispatcher, mut read: BoxRead, mut write: BoxWrite) {
        let reading = async {
            let result = self.read_loop(&dispatcher, &mut read).await;
            if let Err(e) = &result {
                tracing::debug!(conn = self.id(), peer = %self.peer_addr(), error = %e, "connection failed");
                Counters::bump(&self.shared.counters.errors_in, 1);
            }
            result
        };
        let writing = async {
            let result = self.write_loop(&mut write).await;
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
            drop(lock(&shared.state).writer.take());
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
            if shared.rearm.swap(false, Ordering::AcqRel) {
                continue; // a new deadline: the reader re-arms the timer
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

    /// Reads bytes into the protocol state and acts on what it makes of them; fires its
    /// deadlines when the timer rings.
    async fn read_loop(&self, dispatcher: &Dispatcher, read: &mut BoxRead) -> Result<(), Error> {
        let runtime = &self.shared.runtime;
        let mut timer = Timer::default();
        // Whether the last read filled its buffer, so that more is probably waiting.
        let mut more = false;
        let mut held = 0;
        loop {
            if self.act(dispatcher, &mut timer).await? {
                return Ok(()); // the peer closed cleanly
            }
            self.yield_to_writer().await;
            // Memory grows with the bytes that arrived: a read that may wait goes through a
            // buffer of the thread (up to a whole batch of small frames at once), after the
            // heap buffers were cut down to their contents (an idle connection holds none);
            // a larger window is read only while data keeps coming, and only as large as
            // what is already held.
            let (wanted, buffered, due) = {
                let mut state = lock(&self.shared.state);
                // A peer whose answers pile up unsent (it sends pings, calls or data for
                // unknown streams and never reads) is read no further until they drain:
                // the wait below reads nothing while congested.
                more &= !state.proto.is_congested();
                if !more {
                    state.proto.compact();
                }
                held = self.account_read_buffers(held, state.proto.read_buffered());
                let due = state.proto.poll_timeout();
                (
                    state.proto.bytes_wanted(),
                    state.proto.buffered_input(),
                    due,
                )
            };
            if more && due.is_some_and(|at| at <= runtime.now()) {
                // Busy reading: the timer is not polled, so look at the clock here.
                lock(&self.shared.state).proto.handle_timeout(runtime.now());
                continue;
            }
            let n = if !more {
                match self.read_or_timer(read, &mut timer).await? {
                    Woke::Read(n) => {
                        more = n == read_buf::IDLE_READ;
                        n
                    }
                    Woke::Timer => {
                        lock(&self.shared.state).proto.handle_timeout(runtime.now());
                        continue;
                    }
                    Woke::Space => continue,
                }
            } else {
                // Read in place, into the state's own input buffer (no copy).
                let size = read_buf::read_window(wanted, buffered);
                let (mut buf, start) = lock(&self.shared.state).proto.lend_input(size);
                let polled = poll_fn(|cx| {
                    Poll::Ready(Pin::new(&mut **read).poll_read(cx, &mut buf[start..]))
                })
                .await;
                let n = match &polled {
                    Poll::Ready(Ok(n)) => *n,
                    _ => 0,
                };
                let now = runtime.now();
                lock(&self.shared.state)
                    .proto
                    .handle_read(now, buf, start, n);
                let Poll::Ready(result) = polled else {
                    more = false;
                    continue; // nothing waiting after all: wait (holding no buffer)
                };
                result?;
                more = n == size;
                n
            };
            if n == 0 {
                // The peer closed: clean between frames, an error inside one.
                lock(&self.shared.state).proto.handle_eof();
                self.act(dispatcher, &mut timer).await?;
                return Ok(());
            }
        }
    }

    /// Hands bytes read to the protocol state.
    fn input(&self, bytes: &[u8]) {
        let now = self.shared.runtime.now();
        lock(&self.shared.state).proto.handle_input(now, bytes);
    }

    /// Acts on every event the protocol state has: requests go to the dispatcher (waiting
    /// first while the peer is over its limits, the timer still firing), finished calls are
    /// woken. Returns whether the peer closed cleanly; a failure is returned as the error.
    async fn act(&self, dispatcher: &Dispatcher, timer: &mut Timer) -> Result<bool, Error> {
        loop {
            // One lock per event: take it, and what the state queued meanwhile (pongs).
            let (event, congested) = {
                let mut state = lock(&self.shared.state);
                let event = state.proto.poll_event();
                let pending = state.proto.pending();
                self.shared.queued.store(pending, Ordering::Relaxed);
                (event, state.proto.is_congested())
            };
            match event {
                None => return Ok(false),
                Some(Event::Completed(wake)) => wake.fire(),
                Some(Event::Request(frame)) => {
                    if dispatcher.peer_over_limits(self, congested) {
                        let under = dispatcher.wait_peer_under_limits(self);
                        if !self.wait_keeping_time(under, timer).await {
                            continue; // failed meanwhile (idle): `Failed` comes next
                        }
                    }
                    dispatcher.dispatch(self, frame);
                }
                Some(Event::PeerGoingAway) => {}
                Some(Event::Failed(Error::Closed)) => return Ok(true),
                Some(Event::Failed(e)) => {
                    if matches!(e, Error::Auth(_)) {
                        tracing::warn!(conn = self.id(), peer = %self.peer_addr(), error = %e, "closing connection");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Polls the driver's one timer, armed for the protocol state's next deadline.
    fn poll_timer(&self, timer: &mut Timer, cx: &mut Context<'_>) -> Poll<()> {
        let due = lock(&self.shared.state).proto.poll_timeout();
        timer.poll(due, &*self.shared.runtime, cx)
    }

    /// Waits for `until` while the protocol state's deadlines keep firing, so that calls
    /// time out and heartbeats go on while the reader waits for the peer's requests to
    /// drain. Returns `false` if the connection failed meanwhile (the idle time-out).
    async fn wait_keeping_time(&self, until: impl Future<Output = ()>, timer: &mut Timer) -> bool {
        let runtime = &self.shared.runtime;
        let mut until = pin!(until);
        loop {
            let rang = poll_fn(|cx| {
                if until.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                self.poll_timer(timer, cx).map(|()| true)
            })
            .await;
            if !rang {
                return true;
            }
            let (wakes, open) = {
                let mut state = lock(&self.shared.state);
                state.proto.handle_timeout(runtime.now());
                (state.proto.take_completed(), !state.proto.is_closed())
            };
            wakes.into_iter().for_each(Wake::fire);
            if !open {
                return false;
            }
        }
    }

    /// Reads once (through the thread's buffer, handing what arrived to the protocol
    /// state), or returns when the timer rings first. While the connection is congested
    /// (twice `max_pending_write` queued unsent) it reads nothing and returns when the
    /// writer made room, the timer still armed (so a peer that neither reads nor sends
    /// still times out). The timer is
    /// re-made only when the protocol state's next deadline comes earlier than the one it
    /// is armed for (a call with a shorter time-out started), not on every read.
    async fn read_or_timer(&self, read: &mut BoxRead, timer: &mut Timer) -> io::Result<Woke> {
        let mut space: Option<EventListener> = None;
        poll_fn(|cx| {
            if self.is_congested() {
                let listener = space.get_or_insert_with(|| self.shared.write_space.listen());
                if !self.is_congested() || Pin::new(listener).poll(cx).is_ready() {
                    return Poll::Ready(Ok(Woke::Space));
                }
            } else {
                let read = read_buf::poll_read_with(&mut **read, cx, read_buf::IDLE_READ, |got| {
                    self.input(got)
                });
                if let Poll::Ready(r) = read {
                    return Poll::Ready(r.map(Woke::Read));
                }
            }
            self.poll_timer(timer, cx).map(|()| Ok(Woke::Timer))
        })
        .await
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

    /// Takes everything the protocol state has to send (sealed when encrypted) and writes
    /// it at once: one write, or one vectored write of headers, ciphertext and tags.
    async fn write_loop(&self, write: &mut BoxWrite) -> Result<(), Error> {
        let counters = &self.shared.counters;
        let mut batch = Transmit::default();
        loop {
            let closing = poll_fn(|cx| self.take_batch(&mut batch, cx)).await;
            if batch.is_empty() {
                if closing {
                    write.close().await?;
                    return Ok(());
                }
                continue;
            }
            let written = batch.len();
            match batch.contiguous() {
                Some(bytes) => write.write_all(bytes).await?,
                None => write_all_vectored(write, &mut batch.slices()).await?,
            }
            Counters::bump(&counters.bytes_out, written as u64);
            Counters::bump(&counters.writes, 1);
            // Keep the buffers while busy; an idle connection (nothing queued) holds none.
            batch.clear(self.shared.queued.load(Ordering::Relaxed) == 0);
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
