//! The protocol state's side of streams: the peer's stream frames go to [`Streams`], and
//! what a stream's reader or sender does becomes frames in the outgoing queue, with the
//! credit checked and spent here.

use super::pack::Packed;
use super::streams::{lock, Answer, Key, Streams, HASH_LEN};
use super::Proto;
use crate::error::Error;
use crate::frame::{Frame, Header, Kind};

impl Proto {
    /// The streams open on this connection.
    pub(crate) fn streams(&mut self) -> &mut Streams {
        &mut self.streams
    }

    /// A stream frame from the peer (`Data`, `End`, `Abort`, `Credit`, `Stop`): to its
    /// stream, or answered with `Stop` (data for a stream this side does not know). An
    /// error breaks the protocol.
    pub(super) fn on_stream_frame(&mut self, frame: Frame) -> Result<(), Error> {
        if let Some(Answer::Stop(key)) = self.streams.on_frame(frame)? {
            let _ = self.queue(&stream_header(Kind::Stop, key), &[]);
        }
        Ok(())
    }

    /// Queues one `Data` frame of sending stream `key` (packed: compressed or not),
    /// spending its uncompressed length from the stream's credit. Refused, with nothing
    /// queued, when the stream is not open, was stopped, or has less credit than that.
    pub(crate) fn queue_stream_data(&mut self, key: Key, packed: &Packed<'_>) -> Result<(), Error> {
        let Some(stream) = self.streams.outgoing(key) else {
            return Err(Error::StreamAborted(format!(
                "stream {:?} {} is not open for sending",
                key.0, key.1
            )));
        };
        let mut stream = lock(&stream);
        let len = packed.raw_len.unwrap_or(packed.payload.len()) as u64;
        stream.check_room(len)?;
        self.queue(&packed.header, packed.payload)?;
        stream.spend(len);
        Ok(())
    }

    /// The receiver of stream `key` is done with it: forgets it, and unless it reached the
    /// end (`stop`), tells the sender to stop, once.
    pub(crate) fn finish_incoming(&mut self, key: Key, stop: bool) {
        if stop {
            self.streams.stop_incoming(key);
            let _ = self.queue(&stream_header(Kind::Stop, key), &[]);
        } else {
            self.streams.forget_incoming(key);
        }
    }

    /// Grants the sender of stream `key` the room its consumer freed, when that is at
    /// least half its window (`Credit`).
    pub(crate) fn grant_credit(&mut self, key: Key) {
        let Some(stream) = self.streams.incoming(key) else {
            return;
        };
        let credit = lock(&stream).take_credit();
        if let Some(n) = credit {
            let _ = self.queue(&stream_header(Kind::Credit, key), &n.to_le_bytes());
        }
    }

    /// Forgets sending stream `key`; with a reason, tells the receiver it failed (`Abort`).
    pub(crate) fn finish_outgoing(&mut self, key: Key, abort: Option<&str>) {
        if self.streams.forget_outgoing(key).is_some() {
            if let Some(why) = abort {
                let _ = self.queue(&stream_header(Kind::Abort, key), why.as_bytes());
            }
        }
    }

    /// Ends sending stream `key` with the hash of everything sent (`End`), and forgets it.
    pub(crate) fn end_outgoing(&mut self, key: Key, hash: &[u8; HASH_LEN]) {
        if self.streams.forget_outgoing(key).is_some() {
            let _ = self.queue(&stream_header(Kind::End, key), hash);
        }
    }
}

/// The header of a stream frame without a command.
pub(crate) fn stream_header(kind: Kind, key: Key) -> Header<'static> {
    Header {
        kind,
        flags: key.0.flag(),
        id: key.1,
        command: "",
    }
}
