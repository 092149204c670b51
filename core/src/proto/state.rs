//! [`Proto`]: one connection's protocol state after the handshake, with no I/O. Bytes read
//! go in with [`handle_input`](Proto::handle_input), bytes to write come out of
//! [`poll_transmit`](Proto::poll_transmit), what the layer above must act on comes out of
//! [`poll_event`](Proto::poll_event), and time only moves when the caller passes it in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::streams::Streams;
use super::transmit::Transmit;
use crate::compression::CompressionCodec;
use crate::config::Config;
use crate::error::Error;
use crate::frame::{self, Frame, FrameDecoder, Header, Kind, FLAG_COMPRESSED};
use crate::read_buf;
use crate::request::{RequestTable, Wake};
use crate::secure::record::{
    self, Opener, RecordError, Sealer, MAX_RECORD_PLAINTEXT, RECORD_TARGET,
};
use crate::stats::Counters;

/// The limits and timers a connection runs with (from its [`Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest frame accepted or sent; it caps records too.
    pub max_frame: usize,
    /// Bytes queued for sending above which senders should wait.
    pub max_pending_write: usize,
    /// Silence after which a `Ping` is sent (`None`: no heartbeat, no idle time-out).
    pub heartbeat: Option<Duration>,
    /// Silence after which the connection fails with [`Error::IdleTimeout`].
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits of `config`.
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            max_frame: config.max_frame,
            max_pending_write: config.max_pending_write,
            heartbeat: config.heartbeat,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// Something the layer above must act on, in the order it happened.
pub(crate) enum Event {
    /// A call or a one-way send for a handler (payload already decompressed).
    Request(Frame),
    /// A call of ours finished (reply, error or time-out): fire it.
    Completed(Wake),
    /// The peer announced it is shutting down (`GoAway`).
    PeerGoingAway,
    /// The connection failed and must close with this error; nothing follows it.
    Failed(Error),
}

/// The record layer of an encrypted link, both directions.
pub(crate) struct Keys {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what the peer sends.
    pub opener: Opener,
}

/// One connection's protocol state: framing, records and rekeying, the outgoing buffer,
/// the calls awaiting replies with their deadlines, the streams and their credit,
/// heartbeat and idle deadlines,
/// `GoAway` and graceful close, and the limits. No clock, no I/O, no tasks.
pub(crate) struct Proto {
    limits: Limits,
    counters: Arc<Counters>,
    codec: Option<Arc<dyn CompressionCodec>>,
    decoder: FrameDecoder,
    plain: BytesMut,
    sealed: BytesMut,
    opener: Option<Opener>,
    sealer: Option<Sealer>,
    /// Frames queued to send, not yet handed out by `poll_transmit`.
    out: BytesMut,
    frames_out: u64,
    requests: RequestTable,
    /// The streams open on the connection, with their credit.
    pub(super) streams: Streams,
    events: VecDeque<Event>,
    /// A record that failed to open: reported once the frames before it are taken.
    failure: Option<Error>,
    /// The peer closed its side.
    eof: bool,
    heard_at: Instant,
    pinged_at: Option<Instant>,
    /// Flush what is queued, then close (a graceful close).
    closing: bool,
    /// Failed or shut: nothing more is read or queued.
    closed: bool,
    refusing_calls: bool,
    peer_going_away: bool,
}

impl Proto {
    /// A connection starting at `now`, encrypted when `keys` are given.
    pub(crate) fn new(
        limits: Limits,
        keys: Option<Keys>,
        codec: Option<Arc<dyn CompressionCodec>>,
        counters: Arc<Counters>,
        now: Instant,
    ) -> Self {
        let (sealer, opener) = match keys {
            Some(k) => {
                let cap = record::record_limit(limits.max_frame);
                (Some(k.sealer), Some(k.opener.capped(cap)))
            }
            None => (None, None),
        };
        Self {
            limits,
            counters,
            codec,
            decoder: FrameDecoder::new(limits.max_frame),
            plain: BytesMut::new(),
            sealed: BytesMut::new(),
            opener,
            sealer,
            out: BytesMut::new(),
            frames_out: 0,
            requests: RequestTable::new(),
            streams: Streams::default(),
            events: VecDeque::new(),
            failure: None,
            eof: false,
            heard_at: now,
            pinged_at: None,
            closing: false,
            closed: false,
            refusing_calls: false,
            peer_going_away: false,
        }
    }

    // ----- input ----------------------------------------------------------------------

    /// Takes bytes read from the peer: opens the records among them (when encrypted) and
    /// keeps the plaintext; frames are decoded one at a time as
    /// [`poll_event`](Self::poll_event) asks, so a reader that stops taking events holds
    /// only what it read. A broken record is reported, as [`Event::Failed`], after the
    /// frames authenticated before it.
    pub(crate) fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.closed || self.failure.is_some() || data.is_empty() {
            return;
        }
        self.input_buffer().extend_from_slice(data);
        self.received(now, data.len());
    }

    /// Lends the buffer that input goes into, with `room` bytes (zeroed) after what it
    /// holds, so that a large read lands in place instead of being copied in; hand it back
    /// with [`handle_read`](Self::handle_read). Returns the buffer and where the room starts.
    pub(crate) fn lend_input(&mut self, room: usize) -> (BytesMut, usize) {
        let mut buf = std::mem::take(self.input_buffer());
        let start = buf.len();
        buf.resize(start + room, 0);
        (buf, start)
    }

    /// Takes back the buffer lent by [`lend_input`](Self::lend_input), `n` bytes read into
    /// its room: the same as [`handle_input`](Self::handle_input) with those bytes.
    pub(crate) fn handle_read(&mut self, now: Instant, mut buf: BytesMut, start: usize, n: usize) {
        buf.truncate(start + n);
        if self.closed || self.failure.is_some() {
            return;
        }
        *self.input_buffer() = buf;
        if n > 0 {
            self.received(now, n);
        }
    }

    /// Where bytes read go: the sealed records on an encrypted link, else the frames.
    fn input_buffer(&mut self) -> &mut BytesMut {
        match self.opener {
            Some(_) => &mut self.sealed,
            None => &mut self.plain,
        }
    }

    /// Accounts for `n` new bytes of input and opens the records they complete.
    fn received(&mut self, now: Instant, n: usize) {
        self.heard_at = now;
        Counters::bump(&self.counters.bytes_in, n as u64);
        Counters::bump(&self.counters.reads, 1);
        let Some(opener) = &mut self.opener else {
            return;
        };
        let before = opener.rekeys();
        let opened = opener.open(&mut self.sealed, &mut self.plain);
        Counters::bump(&self.counters.rekeys_in, opener.rekeys() - before);
        if let Err(e) = opened {
            self.failure = Some(if matches!(e, RecordError::Auth { .. }) {
                Counters::bump(&self.counters.auth_failures, 1);
                Error::Auth(e.to_string())
            } else {
                Error::Protocol(e.to_string())
            });
        }
    }

    /// The peer closed its side: once the frames before are taken, the connection ends,
    /// cleanly between frames, with an error inside one.
    pub(crate) fn handle_eof(&mut self) {
        self.eof = true;
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), Error> {
        let frame = self.inflate(frame)?;
        match frame.kind {
            Kind::Call if self.refusing_calls => {
                Counters::bump(&self.counters.calls_in, 1);
                self.reply_error(frame.id, &Error::ShuttingDown);
            }
            Kind::Call | Kind::Send => self.events.push_back(Event::Request(frame)),
            Kind::Data | Kind::End | Kind::Abort | Kind::Credit | Kind::Stop => {
                self.on_stream_frame(frame)?
            }
            Kind::Reply => self.complete(frame.id, Ok(frame.payload)),
            Kind::Error => {
                Counters::bump(&self.counters.errors_in, 1);
                let message = String::from_utf8_lossy(&frame.payload).into_owned();
                self.complete(frame.id, Err(Error::from_wire(frame.command(), message)));
            }
            Kind::Ping => {
                let _ = self.queue(&control(Kind::Pong, frame.id), &[]);
            }
            Kind::Pong => self.complete(frame.id, Ok(Bytes::new())),
            Kind::GoAway => {
                self.peer_going_away = true;
                self.events.push_back(Event::PeerGoingAway);
            }
        }
        Ok(())
    }

    fn complete(&mut self, id: u64, result: Result<Bytes, Error>) {
        if let Some(wake) = self.requests.complete(id, result) {
            self.events.push_back(Event::Completed(wake));
        }
    }

    /// Decodes a compressed payload with the negotiated codec, bounded by `max_frame`.
    fn inflate(&self, mut frame: Frame) -> Result<Frame, Error> {
        if frame.flags & FLAG_COMPRESSED == 0 {
            return Ok(frame);
        }
        let Some(codec) = &self.codec else {
            return Err(Error::Protocol(
                "compressed frame, but no codec was negotiated".into(),
            ));
        };
        let max = self.limits.max_frame;
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
        Counters::bump(&self.counters.compressed_in, frame.payload.len() as u64);
        Counters::bump(&self.counters.uncompressed_in, out.len() as u64);
        frame.payload = Bytes::from(out);
        frame.flags &= !FLAG_COMPRESSED;
        Ok(frame)
    }

    fn fail(&mut self, error: Error) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.plain = BytesMut::new();
        self.sealed = BytesMut::new();
        self.events.push_back(Event::Failed(error));
    }

    /// The next thing to act on: queued events first, then the next frame read (pings
    /// are answered and replies matched here, without an event), then the end of input.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.closed {
                return None;
            }
            match self.decoder.decode(&mut self.plain) {
                Ok(Some(frame)) => {
                    Counters::bump(&self.counters.frames_in, 1);
                    if let Err(e) = self.on_frame(frame) {
                        self.fail(e);
                    }
                }
                Ok(None) => {
                    if let Some(e) = self.failure.take() {
                        self.fail(e);
                    } else if self.eof {
                        let unread = self.plain.len() + self.sealed.len();
                        self.fail(if unread == 0 {
                            Error::Closed
                        } else {
                            Error::Protocol(format!(
                                "connection closed inside a frame ({unread} bytes unread)"
                            ))
                        });
                    } else {
                        return None;
                    }
                }
                Err(e) => self.fail(e.into()),
            }
        }
    }

    /// Bytes still needed to complete the frame (or record) being read: how large a
    /// read may usefully be.
    pub(crate) fn bytes_wanted(&self) -> usize {
        match &self.opener {
            Some(o) => o.bytes_wanted(&self.sealed),
            None => self.decoder.bytes_wanted(&self.plain),
        }
    }

    /// Bytes of an incomplete frame (or record) held, waiting for the rest.
    pub(crate) fn buffered_input(&self) -> usize {
        match &self.opener {
            Some(_) => self.sealed.len(),
            None => self.plain.len(),
        }
    }

    /// Cuts the read buffers down to their contents (none when between frames).
    pub(crate) fn compact(&mut self) {
        read_buf::compact(&mut self.plain);
        read_buf::compact(&mut self.sealed);
    }

    /// Heap held by the read buffers.
    pub(crate) fn read_buffered(&self) -> usize {
        self.plain.capacity() + self.sealed.capacity()
    }

    // ----- time -----------------------------------------------------------------------

    /// Acts on every deadline at or before `now`: expires calls, sends a heartbeat `Ping`,
    /// fails a connection silent for the idle time-out.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        // Failed or shut: nothing follows `Failed`, and `shut` fails the calls left.
        if self.closed {
            return;
        }
        for wake in self.requests.expire(now) {
            self.events.push_back(Event::Completed(wake));
        }
        let Some(beat) = self.limits.heartbeat else {
            return;
        };
        let silent = now.saturating_duration_since(self.heard_at);
        if silent >= self.limits.idle_timeout {
            return self.fail(Error::IdleTimeout(silent));
        }
        if now >= self.ping_due(beat) {
            self.pinged_at = Some(now);
            let _ = self.queue(&control(Kind::Ping, 0), &[]);
        }
    }

    /// Takes the wake-ups of the calls finished so far (replies matched, time-outs
    /// expired) out of the queued events, leaving the others queued in order: for a
    /// driver that cannot take the next request yet but must not hold up its callers.
    pub(crate) fn take_completed(&mut self) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for event in std::mem::take(&mut self.events) {
            match event {
                Event::Completed(wake) => wakes.push(wake),
                other => self.events.push_back(other),
            }
        }
        wakes
    }

    fn ping_due(&self, beat: Duration) -> Instant {
        let since = match self.pinged_at {
            Some(p) if p > self.heard_at => p,
            _ => self.heard_at,
        };
        since + beat
    }

    /// The one next deadline: a call's time-out, the next heartbeat or the idle time-out.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let calls = self.requests.next_deadline();
        let beat = match self.limits.heartbeat {
            Some(beat) => {
                let idle = self.heard_at + self.limits.idle_timeout;
                Some(self.ping_due(beat).min(idle))
            }
            _ => None,
        };
        match (calls, beat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- output ---------------------------------------------------------------------

    /// Queues one frame (its payload already compressed if wanted). Fails with
    /// [`Error::Closed`] once closing, or with an encoding error (too large).
    pub(crate) fn queue(&mut self, header: &Header<'_>, payload: &[u8]) -> Result<(), Error> {
        if self.closing || self.closed {
            return Err(Error::Closed);
        }
        frame::encode(&mut self.out, header, payload, self.limits.max_frame)?;
        self.frames_out += 1;
        Ok(())
    }

    /// Queues one frame encoded beforehand (length prefix included), such as a channel
    /// publication encoded once for all its subscribers. Fails with [`Error::Closed`] once
    /// closing. Returns the bytes queued after it.
    pub(crate) fn queue_encoded(&mut self, frame: &[u8]) -> Result<usize, Error> {
        if self.closing || self.closed {
            return Err(Error::Closed);
        }
        self.out.extend_from_slice(frame);
        self.frames_out += 1;
        Ok(self.out.len())
    }

    /// Queues an `Error` answer to call `id`, its message cut to fit a frame.
    pub(crate) fn reply_error(&mut self, id: u64, err: &Error) {
        let header = Header {
            kind: Kind::Error,
            flags: 0,
            id,
            command: err.code().as_str(),
        };
        let message = err.wire_message();
        let max = self.limits.max_frame.saturating_sub(64);
        if self
            .queue(&header, truncate_utf8(&message, max).as_bytes())
            .is_ok()
        {
            Counters::bump(&self.counters.errors_out, 1);
        }
    }

    /// Bytes queued and not yet handed out to write.
    pub(crate) fn pending(&self) -> usize {
        self.out.len()
    }

    /// Whether the peer should be read no further until the queue drains: its replies
    /// (twice `max_pending_write`) are piling up unsent.
    pub(crate) fn is_congested(&self) -> bool {
        self.out.len() >= self.limits.max_pending_write.saturating_mul(2)
    }

    /// Moves everything queued into `out`, sealed into records when encrypted (rekeying
    /// by the policy, with `now` for its clock). Returns whether there is anything to write.
    pub(crate) fn poll_transmit(&mut self, now: Instant, out: &mut Transmit) -> bool {
        if self.out.is_empty() {
            return false;
        }
        out.batch.clear();
        std::mem::swap(&mut self.out, &mut out.batch);
        out.parts.clear();
        out.sizes.clear();
        Counters::bump(
            &self.counters.frames_out,
            std::mem::take(&mut self.frames_out),
        );
        if let Some(sealer) = &mut self.sealer {
            let before = sealer.rekeys();
            frame::group_frames(
                &out.batch,
                RECORD_TARGET,
                MAX_RECORD_PLAINTEXT,
                &mut out.sizes,
            );
            sealer.seal_in_place(&mut out.batch, &out.sizes, &mut out.parts, now);
            Counters::bump(&self.counters.rekeys_out, sealer.rekeys() - before);
        }
        true
    }

    // ----- calls and closing ------------------------------------------------------------

    /// The calls awaiting replies (to start, poll or cancel them).
    pub(crate) fn requests(&mut self) -> &mut RequestTable {
        &mut self.requests
    }

    /// Calls awaiting a reply.
    pub(crate) fn calls_in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Refuses new incoming calls from now on (answering them `ShuttingDown`) and tells
    /// the peer so with `GoAway`.
    pub(crate) fn go_away(&mut self) {
        self.refusing_calls = true;
        let _ = self.queue(&control(Kind::GoAway, 0), &[]);
    }

    /// Whether the peer announced it is shutting down.
    pub(crate) fn peer_going_away(&self) -> bool {
        self.peer_going_away
    }

    /// Starts a graceful close: what is queued is still sent, nothing more is queued.
    pub(crate) fn close(&mut self) {
        self.closing = true;
    }

    /// Whether a graceful close has begun (or the connection is shut).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing || self.closed
    }

    /// Whether the connection is gone (failed or shut).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes at once: nothing more is read or queued (what is queued is still handed out
    /// to write, then the link closes), every waiting call fails with `error`; returns
    /// their wake-ups, to fire once the state is unlocked.
    pub(crate) fn shut(&mut self, error: Error) -> Vec<Wake> {
        self.closed = true;
        self.closing = true;
        self.plain = BytesMut::new();
        self.sealed = BytesMut::new();
        self.streams.close(&error);
        self.requests.close(error)
    }
}

/// The header of a control frame (no command, no flags).
fn control(kind: Kind, id: u64) -> Header<'static> {
    Header {
        kind,
        flags: 0,
        id,
        command: "",
    }
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
