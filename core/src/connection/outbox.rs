//! The outbox: frames encoded (and compressed) into one shared buffer under a short lock,
//! for the driver to take and write in one go; back-pressure on senders while it is full.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use super::{lock, Connection};
use crate::error::Error;
use crate::frame::{self, EncodeError, Header, Kind, FLAG_COMPRESSED};
use crate::stats::Counters;

/// Frames queued for the driver to write.
pub(super) struct Outbox {
    pub(super) buf: BytesMut,
    /// Frames in `buf` (counted into `frames_out` once per batch, not per frame).
    pub(super) frames: u64,
    /// Flush what is queued, then close.
    pub(super) closing: bool,
    /// The driver, when its writer waits for something to send: taken (and woken) by the
    /// first frame queued, so that later frames of the same batch cost no wake-up at all.
    pub(super) writer: Option<Waker>,
}

impl Outbox {
    /// An empty outbox (no buffer allocated until the first frame).
    pub(super) fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            frames: 0,
            closing: false,
            writer: None,
        }
    }
}

impl Connection {
    /// Encodes one frame into the outbox and wakes the writer. With a codec negotiated, a
    /// payload at or above the threshold is compressed first (if that makes it smaller);
    /// the frame must fit `max_frame` uncompressed all the same.
    pub(super) fn enqueue(&self, header: &Header<'_>, payload: &[u8]) -> Result<(), Error> {
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
    pub(super) async fn wait_for_space(&self) {
        self.wait_for_space_above(self.shared.config.max_pending_write)
            .await
    }

    /// Waits while `limit` bytes or more are queued and the connection is open.
    pub(super) async fn wait_for_space_above(&self, limit: usize) {
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

    /// Swaps the queued bytes into `batch`; returns whether the connection is closing.
    pub(super) fn take_batch(&self, batch: &mut BytesMut, cx: &mut Context<'_>) -> Poll<bool> {
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
