//! One stable session's driver: runs one link at a time between the connection's pipes
//! and the network, and gets a new link when one drops (the client dials, the server
//! waits for the client).

use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use event_listener::Event;
use futures_io::AsyncRead;
use futures_lite::future::or;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::replay::Replay;
use super::wire::{self, Answer, Record, SessionId, KEY_LEN, MAX_CHUNK};
use super::{reconnect, ResumeError, StableSession};
use crate::error::Error;
use crate::runtime::Runtime;
use crate::transport::{BoxRead, BoxWrite, Transport};

/// Bytes buffered between the connection and the session, each way.
const PIPE: usize = 64 * 1024;

/// The read size of a link with nothing buffered: an idle link holds no large buffer.
const IDLE_READ: usize = 4 * 1024;

/// How much the writer takes from the connection at a time.
const TAKE: usize = 16 * 1024;

/// Received bytes after which an acknowledgement is sent without waiting for other
/// traffic to carry it.
const ACK_EVERY: u64 = 64 * 1024;

/// Most bytes of records written to a link at once.
const BATCH: usize = 256 * 1024;

/// First and longest pause between the client's attempts to resume.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Longest one resume attempt may take.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);

/// One TCP link, and how much of this side's stream the peer says it has.
pub(crate) struct Link {
    read: BoxRead,
    write: BoxWrite,
    peer_received: u64,
}

impl Link {
    pub(crate) fn new(read: BoxRead, write: BoxWrite, peer_received: u64) -> Self {
        Self {
            read,
            write,
            peer_received,
        }
    }
}

/// Where the next link comes from.
pub(crate) enum Source {
    /// The client dials the server again.
    Client {
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
    },
    /// The server gets links that the accept path has checked for this session.
    Server(async_channel::Receiver<Link>),
}

/// How a link ended.
enum End {
    /// Both streams ended and were acknowledged: the session is over.
    Finished,
    /// The link dropped or went silent; the session lives on.
    Lost(String),
    /// The peer broke the protocol: the session fails.
    Broken(Error),
    /// (Server) the client came back on a new link before this one was seen to drop.
    Replaced(Link),
}

/// The session's state shared by the two pumps of the current link.
#[derive(Default)]
struct State {
    replay: Replay,
    /// Units of the peer's stream delivered to the connection (bytes, plus one for its end).
    received: u64,
    /// The largest `received` told to the peer.
    ack_sent: u64,
    peer_fin: bool,
}

impl State {
    fn finished(&self) -> bool {
        self.replay.all_acked() && self.peer_fin && self.ack_sent == self.received
    }
}

/// The connection's ends of its two pipes, owned by the driver.
struct Ends {
    /// Into the connection's reader; `None` once closed.
    inbound: Option<piper::Writer>,
    /// From the connection's writer.
    outbound: piper::Reader,
}

/// One stable session.
pub(crate) struct Session {
    id: SessionId,
    token: [u8; KEY_LEN],
    key: OnceLock<[u8; KEY_LEN]>,
    config: StableSession,
    runtime: Arc<dyn Runtime>,
    state: Mutex<State>,
    changed: Event,
    failure: OnceLock<String>,
    aborted: AtomicBool,
    abort_event: Event,
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        token: [u8; KEY_LEN],
        config: StableSession,
        runtime: Arc<dyn Runtime>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            token,
            key: OnceLock::new(),
            config,
            runtime,
            state: Mutex::new(State::default()),
            changed: Event::new(),
            failure: OnceLock::new(),
            aborted: AtomicBool::new(false),
            abort_event: Event::new(),
        })
    }

    /// Binds resumption to the finished handshake (its hash, when encrypted). Until then
    /// the session cannot be resumed.
    pub(crate) fn bind(&self, handshake_hash: Option<&[u8]>) {
        let _ = self.key.set(wire::resume_key(&self.token, handshake_hash));
    }

    /// Ends the session at once (its connection never got going): no link is waited for.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.abort_event.notify(usize::MAX);
    }

    async fn until_aborted(&self) {
        while !self.aborted.load(Ordering::Acquire) {
            let listener = self.abort_event.listen();
            if self.aborted.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }

    pub(crate) fn resume_key(&self) -> Option<[u8; KEY_LEN]> {
        self.key.get().copied()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the driver on `first`; returns the halves the connection reads and writes.
    pub(crate) fn start(
        self: Arc<Self>,
        first: Link,
        source: Source,
        on_end: Option<Box<dyn FnOnce() + Send>>,
    ) -> (BoxRead, BoxWrite) {
        let (inbound_read, inbound_write) = piper::pipe(PIPE);
        let (outbound_read, outbound_write) = piper::pipe(PIPE);
        let ends = Ends {
            inbound: Some(inbound_write),
            outbound: outbound_read,
        };
        let reader = InboundReader {
            pipe: inbound_read,
            session: self.clone(),
        };
        let runtime = self.runtime.clone();
        runtime.spawn(Box::pin(async move {
            self.drive(ends, first, source).await;
            if let Some(on_end) = on_end {
                on_end();
            }
        }));
        (Box::new(reader), Box::new(outbound_write))
    }

    async fn drive(self: Arc<Self>, mut ends: Ends, first: Link, source: Source) {
        let outcome = or(self.links(&mut ends, first, &source), async {
            self.until_aborted().await;
            Err(Error::Closed)
        })
        .await;
        if let Err(e) = outcome {
            tracing::debug!(session = %hex(&self.id), error = %e, "stable session failed");
            let _ = self.failure.set(e.to_string());
        }
        // Dropping the ends closes both pipes: the connection reads what is left, then
        // the end (or the failure above); its writes fail.
        drop(ends);
    }

    /// Runs one link after another until the session finishes or fails.
    async fn links(&self, ends: &mut Ends, first: Link, source: &Source) -> Result<(), Error> {
        let mut next = Some(first);
        loop {
            let link = match next.take() {
                Some(link) => link,
                None => self.next_link(source).await?,
            };
            self.state().replay.rewind(link.peer_received)?;
            match self.run_link(ends, link, source).await {
                End::Finished => return Ok(()),
                End::Broken(e) => return Err(e),
                End::Lost(why) => {
                    tracing::debug!(session = %hex(&self.id), %why, "stable session link lost")
                }
                End::Replaced(link) => {
                    next = self.answer_resume(link).await;
                }
            }
        }
    }

    /// The next link: the client dials with back-off, the server waits for the client;
    /// either gives up after the offline time-out.
    async fn next_link(&self, source: &Source) -> Result<Link, Error> {
        let deadline = self.runtime.now() + self.config.offline_timeout;
        match source {
            Source::Server(links) => loop {
                let left = deadline.saturating_duration_since(self.runtime.now());
                let timer = self.runtime.sleep(left);
                let link = or(async { links.recv().await.ok() }, async {
                    timer.await;
                    None
                })
                .await
                .ok_or_else(|| self.offline_error())?;
                if let Some(link) = self.answer_resume(link).await {
                    return Ok(link);
                }
            },
            Source::Client { transport, addr } => {
                let key = self
                    .resume_key()
                    .ok_or_else(|| Error::Handshake("the session was never bound".into()))?;
                let mut pause = RETRY_FIRST;
                loop {
                    let now = self.runtime.now();
                    if now >= deadline {
                        return Err(self.offline_error());
                    }
                    let received = self.state().received;
                    let attempt = reconnect(transport, *addr, &self.id, &key, received);
                    let limit = self.runtime.sleep(ATTEMPT_LIMIT.min(deadline - now));
                    let result = or(async { Some(attempt.await) }, async {
                        limit.await;
                        None
                    })
                    .await;
                    match result {
                        Some(Ok(link)) => {
                            tracing::debug!(session = %hex(&self.id), "stable session resumed");
                            return Ok(link);
                        }
                        Some(Err(ResumeError::Refused(why))) => {
                            return Err(Error::Handshake(format!(
                                "the server refused to resume the stable session: {why:?}"
                            )))
                        }
                        Some(Err(ResumeError::Failed(e))) => {
                            tracing::trace!(error = %e, "stable session resume attempt failed")
                        }
                        None => {}
                    }
                    let left = deadline.saturating_duration_since(self.runtime.now());
                    self.runtime.sleep(pause.min(left)).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn offline_error(&self) -> Error {
        Error::Io(format!(
            "stable session lost: no new link within {:?}",
            self.config.offline_timeout
        ))
    }

    /// (Server) tells a returning client how much of its stream arrived. Called only
    /// once the old link is gone, so the count is final. `None` if the answer could not
    /// be written: that link is useless and the caller waits for another.
    async fn answer_resume(&self, mut link: Link) -> Option<Link> {
        let received = self.state().received;
        let answer = Answer::Resumed { received }.encode();
        let written = async {
            link.write.write_all(&answer).await?;
            link.write.flush().await
        };
        written.await.ok().map(|()| link)
    }

    /// Runs both pumps on `link` until it ends.
    async fn run_link(&self, ends: &mut Ends, link: Link, source: &Source) -> End {
        let Link {
            mut read,
            mut write,
            ..
        } = link;
        let Ends { inbound, outbound } = ends;
        let pumps = or(
            self.pump_in(&mut read, inbound),
            self.pump_out(&mut write, outbound),
        );
        let end = match source {
            Source::Client { .. } => pumps.await,
            Source::Server(links) => {
                or(pumps, async {
                    match links.recv().await {
                        Ok(link) => End::Replaced(link),
                        Err(_) => pending().await,
                    }
                })
                .await
            }
        };
        match end {
            End::Lost(_) if self.state().finished() => End::Finished,
            end => end,
        }
    }

    /// Reads records from the link: data goes to the connection, acks free the replay
    /// buffer, the end closes the connection's input.
    async fn pump_in(&self, read: &mut BoxRead, inbound: &mut Option<piper::Writer>) -> End {
        let mut buf = BytesMut::new();
        let silence = self.config.keepalive * 3;
        loop {
            loop {
                let (record, used) = match wire::decode(&buf) {
                    Ok(Some(found)) => found,
                    Ok(None) => break,
                    Err(e) => return End::Broken(e),
                };
                match record {
                    Record::Data(data) => {
                        if self.state().peer_fin {
                            return End::Broken(Error::Protocol(
                                "stable session: data after the end of the stream".into(),
                            ));
                        }
                        self.deliver(inbound, data).await;
                    }
                    Record::Ack(n) => {
                        if let Err(e) = self.state().replay.ack(n) {
                            return End::Broken(e);
                        }
                        self.changed.notify(usize::MAX);
                    }
                    Record::Fin => {
                        {
                            let mut state = self.state();
                            if !state.peer_fin {
                                state.peer_fin = true;
                                state.received += 1;
                            }
                        }
                        *inbound = None;
                        self.changed.notify(usize::MAX);
                    }
                }
                buf.advance(used);
            }
            if buf.is_empty() {
                buf = BytesMut::new();
            }
            let start = buf.len();
            let want = if start == 0 {
                IDLE_READ
            } else {
                MAX_CHUNK + wire::DATA_HEADER
            };
            buf.resize(start + want, 0);
            let timer = self.runtime.sleep(silence);
            let got = or(async { Some(read.read(&mut buf[start..]).await) }, async {
                timer.await;
                None
            })
            .await;
            match got {
                Some(Ok(0)) => return End::Lost("the link closed".into()),
                Some(Ok(n)) => buf.truncate(start + n),
                Some(Err(e)) => return End::Lost(e.to_string()),
                None => return End::Lost(format!("the link was silent for {silence:?}")),
            }
        }
    }

    /// Hands `data` to the connection, counting exactly what it took. Once the
    /// connection has stopped reading, data is counted and dropped.
    async fn deliver(&self, inbound: &mut Option<piper::Writer>, mut data: &[u8]) {
        while !data.is_empty() {
            let taken = match inbound {
                Some(pipe) => pipe.write(data).await.unwrap_or(0),
                None => 0,
            };
            let taken = if taken == 0 {
                *inbound = None;
                data.len()
            } else {
                taken
            };
            data = &data[taken..];
            let mut state = self.state();
            state.received += taken as u64;
            if state.received - state.ack_sent >= ACK_EVERY {
                drop(state);
                self.changed.notify(usize::MAX);
            }
        }
    }

    /// Writes records to the link: acks, data not yet sent on it, the end; takes new
    /// bytes from the connection while the replay buffer has room; sends a keepalive
    /// when the link has been quiet.
    async fn pump_out(&self, write: &mut BoxWrite, outbound: &mut piper::Reader) -> End {
        let mut batch = Vec::new();
        let mut chunk = vec![0u8; TAKE];
        let keepalive = self.config.keepalive;
        let mut last_write = self.runtime.now();
        // A new link starts with an ack: the peer learns at once what arrived.
        let mut force_ack = true;
        loop {
            let listener = self.changed.listen();
            let (done, room, ended) = {
                let mut state = self.state();
                batch.clear();
                if force_ack || state.received > state.ack_sent {
                    batch.extend_from_slice(&wire::ack(state.received));
                    state.ack_sent = state.received;
                    force_ack = false;
                }
                while batch.len() < BATCH {
                    let Some(data) = state.replay.unsent(MAX_CHUNK) else {
                        break;
                    };
                    let n = data.len();
                    batch.extend_from_slice(&wire::data_header(n));
                    batch.extend_from_slice(data);
                    state.replay.mark_sent(n);
                }
                if state.replay.fin_unsent() {
                    batch.extend_from_slice(&wire::FIN_RECORD);
                    state.replay.mark_fin_sent();
                }
                (
                    state.finished(),
                    state.replay.held() < self.config.max_unacked,
                    state.replay.ended(),
                )
            };
            if !batch.is_empty() {
                let written = async {
                    write.write_all(&batch).await?;
                    write.flush().await
                };
                if let Err(e) = written.await {
                    return End::Lost(e.to_string());
                }
                last_write = self.runtime.now();
                if !done {
                    continue;
                }
            }
            if done {
                return End::Finished;
            }
            let quiet = self.runtime.now().saturating_duration_since(last_write);
            let timer = self.runtime.sleep(keepalive.saturating_sub(quiet));
            let take = async {
                if room && !ended {
                    Wake::Bytes(outbound.read(&mut chunk).await.unwrap_or(0))
                } else {
                    pending().await
                }
            };
            let woke = or(
                take,
                or(
                    async {
                        listener.await;
                        Wake::Changed
                    },
                    async {
                        timer.await;
                        Wake::Keepalive
                    },
                ),
            )
            .await;
            match woke {
                Wake::Bytes(0) => self.state().replay.finish(),
                Wake::Bytes(n) => {
                    let mut state = self.state();
                    state.replay.push(&chunk[..n]);
                    // Take whatever else is ready, up to the limit, for one batch.
                    while state.replay.held() < self.config.max_unacked {
                        let more = outbound.try_drain(&mut chunk);
                        if more == 0 {
                            break;
                        }
                        state.replay.push(&chunk[..more]);
                    }
                }
                Wake::Changed => {}
                Wake::Keepalive => force_ack = true,
            }
        }
    }
}

/// Aborts its session when dropped, unless disarmed: held while a new session's
/// handshake runs, so that a handshake that fails or times out ends the session at once
/// instead of leaving it to wait for a client that will not come back.
pub(crate) struct AbortOnDrop(Option<Arc<Session>>);

impl AbortOnDrop {
    /// The session is in use: do not abort it.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.abort();
        }
    }
}

impl Session {
    /// A guard that aborts this session unless disarmed.
    pub(crate) fn abort_on_drop(self: &Arc<Self>) -> AbortOnDrop {
        AbortOnDrop(Some(self.clone()))
    }
}

enum Wake {
    Bytes(usize),
    Changed,
    Keepalive,
}

/// The connection's read half: the inbound pipe, which reports the session's failure
/// (instead of a clean end) once the pipe is drained.
struct InboundReader {
    pipe: piper::Reader,
    session: Arc<Session>,
}

impl AsyncRead for InboundReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.pipe).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) if !buf.is_empty() => match this.session.failure.get() {
                Some(why) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why.clone(),
                ))),
                None => Poll::Ready(Ok(0)),
            },
            other => other,
        }
    }
}

fn hex(id: &SessionId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
