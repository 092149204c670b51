//! The streams open on one connection, with no I/O: credit and window accounting on both
//! sides, ends and failures, and what to do with a stream frame from the peer.
//!
//! [`Proto`](super::Proto) owns the [`Streams`]; each stream's side is shared with the
//! task that reads or sends it (`crate::stream`), which waits on its waker. Lock order:
//! the connection's state first, then a stream's side, never the other way round.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::error::Error;
use crate::frame::{Frame, Kind};
use stops::StopAnswers;

mod key;
mod stops;
#[cfg(test)]
mod tests;

pub(crate) use key::{Dir, Key};

/// Credit every stream starts with: the sender may send this many bytes before the
/// receiver grants more with `Credit` frames. Part of the protocol.
pub const INITIAL_WINDOW: u64 = 256 * 1024;

/// Length of the hash in an `End` frame (BLAKE3).
pub const HASH_LEN: usize = 32;

/// Locks a stream's side; a panic elsewhere while it was held does not poison it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    /// does data after the end, but only a stream failed by `Streams::close` meets that:
    /// `End` and `Abort` make `Streams` forget the stream, so later `Data` finds none and
    /// is answered with `Stop`, as docs/PROTOCOL.md §5b says.)
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

    /// Whether the consumer has freed at least half a window: credit is due.
    pub(crate) fn credit_due(&self) -> bool {
        let target = self.consumed + self.window;
        target.saturating_sub(self.allowed) >= self.window / 2 && self.end.is_none()
    }

    /// Credit to grant now, if [due](Self::credit_due).
    pub(crate) fn take_credit(&mut self) -> Option<u64> {
        self.credit_due().then(|| {
            let target = self.consumed + self.window;
            let grant = target - self.allowed;
            self.allowed = target;
            grant
        })
    }

    /// The next chunk, or the end of the stream.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
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

pub(crate) enum Next {
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

    /// The receiver granted `n` more bytes.
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

    /// Whether `n` more bytes may be sent now: not once stopped, nor beyond the credit.
    pub(crate) fn check_room(&self, n: u64) -> Result<(), Error> {
        if let Some(e) = &self.stopped {
            return Err(e.clone());
        }
        if n > self.credit {
            return Err(Error::Protocol(format!(
                "{n} bytes of stream data, but the receiver granted only {}",
                self.credit
            )));
        }
        Ok(())
    }

    /// `n` bytes of the credit were sent.
    pub(crate) fn spend(&mut self, n: u64) {
        self.credit = self.credit.saturating_sub(n);
    }

    /// Waits for credit; returns how many bytes may be sent now.
    pub(crate) fn poll_credit(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, Error>> {
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
    /// Which `Data` for unknown streams to answer with `Stop`: allocated with the first
    /// `Stop`, so that a connection without any costs one pointer.
    stops: Option<Box<StopAnswers>>,
}

/// What the connection must send in answer to a stream frame from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `Stop` for this stream: the peer sent `Data` for a stream this side does not know.
    Stop(Key),
}

impl Streams {
    /// Streams open in both directions.
    pub(crate) fn len(&self) -> usize {
        self.incoming.len() + self.outgoing.len()
    }

    /// Opens stream `key` for receiving, its consumer keeping up to `window` bytes; an id
    /// still open, or a closed connection, is refused.
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
        if let Some(stops) = &mut self.stops {
            stops.reopened(key);
        }
        Ok(state)
    }

    /// Opens stream `key` for sending; an id still open, or a closed connection, is refused.
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

    /// The receiving state of stream `key`, if it is open.
    pub(crate) fn incoming(&self, key: Key) -> Option<Arc<Mutex<Inbound>>> {
        self.incoming.get(&key).cloned()
    }

    /// The sending state of stream `key`, if it is open.
    pub(crate) fn outgoing(&self, key: Key) -> Option<Arc<Mutex<Outbound>>> {
        self.outgoing.get(&key).cloned()
    }

    /// Forgets receiving stream `key` (it ended, or its call failed).
    pub(crate) fn forget_incoming(&mut self, key: Key) {
        self.incoming.remove(&key);
    }

    /// Forgets stream `key`, for which this side sends `Stop`: the sender's data still in
    /// flight draws no second `Stop`.
    pub(crate) fn stop_incoming(&mut self, key: Key) {
        self.incoming.remove(&key);
        self.stops.get_or_insert_default().stopped(key);
    }

    /// Forgets sending stream `key`; returns its state if it was open.
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
    /// Opens stream `key` (`window` matters to a receiving stream only).
    fn open(&mut self, key: Key, window: u64) -> Result<Arc<Mutex<S>>, Error>;
    /// Forgets stream `key`.
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

// ----- the peer's stream frames -------------------------------------------------------

impl Streams {
    /// Acts on one stream frame from the peer (`Data`, `End`, `Abort`, `Credit`, `Stop`)
    /// and returns what the connection must send in answer, if anything. An error breaks
    /// the protocol and closes the connection.
    pub(crate) fn on_frame(&mut self, frame: Frame) -> Result<Option<Answer>, Error> {
        let key = (Dir::from_flags(frame.flags)?, frame.id);
        match frame.kind {
            Kind::Data | Kind::End | Kind::Abort => {
                let Some(state) = self.incoming.get(&key) else {
                    // Ended, stopped or never opened here: tell the sender once it sends
                    // data (once per stream, and within a bound: see `StopAnswers`).
                    let stop =
                        frame.kind == Kind::Data && self.stops.get_or_insert_default().answer(key);
                    return Ok(stop.then_some(Answer::Stop(key)));
                };
                let mut state = lock(state);
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
                        self.incoming.remove(&key);
                    }
                    _ => {
                        let why = String::from_utf8_lossy(&frame.payload).into_owned();
                        state.on_end(Err(Error::StreamAborted(why)));
                        drop(state);
                        self.incoming.remove(&key);
                    }
                }
            }
            Kind::Credit | Kind::Stop => {
                if let Some(state) = self.outgoing.get(&key) {
                    if frame.kind == Kind::Credit {
                        let n: [u8; 8] = frame.payload[..].try_into().map_err(|_| {
                            Error::Protocol("Credit frame without an 8-byte amount".into())
                        })?;
                        lock(state).on_credit(u64::from_le_bytes(n));
                    } else {
                        lock(state).on_stop(Error::StreamAborted(
                            "the receiver stopped the stream".into(),
                        ));
                    }
                }
            }
            other => {
                return Err(Error::Protocol(format!(
                    "a {other:?} frame is not a stream frame"
                )))
            }
        }
        Ok(None)
    }
}
