//! The outbox: handles encode (and compress) frames into the protocol state's outgoing
//! queue under a short lock and wake the driver, which takes everything queued and writes
//! it in one go; senders wait while the queue is full (back-pressure).

use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use super::{lock, Connection};
use crate::error::Error;
use crate::frame::{Header, Kind};
use crate::proto::{Packed, Proto, Transmit};
use crate::stats::Counters;

/// What the connection's lock guards: the protocol state and the driver's waker.
pub(super) struct State {
    pub(super) proto: Proto,
    /// The driver, when its writer waits for something to send: taken (and woken) by the
    /// first frame queued, so that later frames of the same batch cost no wake-up at all.
    pub(super) writer: Option<Waker>,
}

impl State {
    /// Takes the driver's waker after something changed that it must act on.
    fn wake_writer(&mut self) -> Option<Waker> {
        self.writer.take()
    }
}

impl Connection {
    /// Encodes one frame into the outbox and wakes the writer. With a codec negotiated, a
    /// payload at or above the threshold is compressed first (if that makes it smaller);
    /// the frame must fit `max_frame` uncompressed all the same.
    pub(super) fn enqueue(&self, header: &Header<'_>, payload: &[u8]) -> Result<(), Error> {
        self.queue_packed(header, payload, |proto, packed| {
            proto.queue(&packed.header, packed.payload)
        })
    }

    /// Packs a frame (compressing it before the lock is taken), hands it to `queue` under
    /// the lock, wakes the writer, and counts what compression saved.
    pub(super) fn queue_packed(
        &self,
        header: &Header<'_>,
        payload: &[u8],
        queue: impl FnOnce(&mut Proto, &Packed<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut scratch = Vec::new();
        let packed = self.shared.packer.pack(header, payload, &mut scratch)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.with_state(|proto| queue(proto, &packed))?;
        if let Some(raw_len) = packed.raw_len {
            let counters = &self.shared.counters;
            Counters::bump(&counters.uncompressed_out, raw_len as u64);
            Counters::bump(&counters.compressed_out, packed.payload.len() as u64);
        }
        Ok(())
    }

    /// Waits while more than `max_pending_write` bytes are queued (back-pressure).
    pub(crate) async fn wait_for_space(&self) {
        self.wait_for_space_above(self.shared.config.max_pending_write)
            .await
    }

    /// Whether the connection is open and so many answers wait unsent (twice
    /// `max_pending_write`, the bound of `Proto::is_congested`) that its peer is read no
    /// further until they drain.
    pub(super) fn is_congested(&self) -> bool {
        self.is_full(self.congestion_limit())
    }

    fn congestion_limit(&self) -> usize {
        self.shared.config.max_pending_write.saturating_mul(2)
    }

    /// Whether the connection is open with `limit` bytes or more queued.
    fn is_full(&self, limit: usize) -> bool {
        !self.is_closed() && self.shared.queued.load(Ordering::Relaxed) >= limit
    }

    /// Waits while the connection [is congested](Self::is_congested).
    pub(super) async fn wait_until_uncongested(&self) {
        self.wait_for_space_above(self.congestion_limit()).await
    }

    /// Waits while `limit` bytes or more are queued and the connection is open.
    pub(super) async fn wait_for_space_above(&self, limit: usize) {
        while self.is_full(limit) {
            let listener = self.shared.write_space.listen();
            if !self.is_full(limit) {
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
        self.with_state(|proto| proto.reply_error(id, err));
    }

    /// Refuses new incoming calls from now on and tells the peer so.
    pub(crate) fn go_away(&self) {
        self.with_state(Proto::go_away);
    }

    /// Acts on the protocol state under the lock, then wakes the driver to write.
    pub(super) fn with_state<R>(&self, act: impl FnOnce(&mut Proto) -> R) -> R {
        let (result, writer) = {
            let mut state = lock(&self.shared.state);
            let result = act(&mut state.proto);
            self.shared
                .queued
                .store(state.proto.pending(), Ordering::Relaxed);
            (result, state.wake_writer())
        };
        if let Some(w) = writer {
            w.wake();
        }
        result
    }

    /// Moves everything queued into `batch` (sealed when encrypted); returns whether the
    /// connection is closing.
    pub(super) fn take_batch(&self, batch: &mut Transmit, cx: &mut Context<'_>) -> Poll<bool> {
        let now = self.shared.runtime.now();
        let mut state = lock(&self.shared.state);
        if state.proto.poll_transmit(now, batch) {
            self.shared.queued.store(0, Ordering::Relaxed);
            let closing = state.proto.is_closing();
            drop(state);
            // The queue is empty again: senders may fill it while this batch is written.
            self.shared.write_space.notify(usize::MAX);
            return Poll::Ready(closing);
        }
        if state.proto.is_closing() {
            return Poll::Ready(true);
        }
        match &mut state.writer {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
