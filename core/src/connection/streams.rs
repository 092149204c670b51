//! What streams need of a connection: the calls that open them, and their state and
//! frames in the protocol state, reached under the connection's lock.

use std::sync::{Arc, Mutex};

use super::{lock, Connection};
use crate::error::Error;
use crate::frame::{Header, Kind, FLAG_UPLOAD};
use crate::proto::{stream_header, CommandKind};
use crate::stats::Counters;
use crate::stream::{self, Dir, Key, Outbound, Streams, HASH_LEN};

impl Connection {
    /// Acts on the streams open on this connection, under its lock.
    pub(crate) fn with_streams<R>(&self, act: impl FnOnce(&mut Streams) -> R) -> R {
        act(lock(&self.shared.state).proto.streams())
    }

    /// The sending state of stream `key`, if it is open.
    pub(crate) fn stream_outbound(&self, key: Key) -> Option<Arc<Mutex<Outbound>>> {
        self.with_streams(|s| s.outgoing(key))
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
        let dir = if flag == FLAG_UPLOAD {
            Dir::Upload
        } else {
            Dir::Download
        };
        let window = self.shared.config.stream_window as u64;
        let (id, state) = {
            let mut state = lock(&self.shared.state);
            let id = state.proto.requests().start(None)?;
            match stream::Open::<S>::open(state.proto.streams(), (dir, id), window) {
                Ok(stream) => (id, stream),
                Err(e) => {
                    state.proto.requests().cancel(id);
                    return Err(e);
                }
            }
        };
        let header = Header {
            kind: Kind::Call,
            flags: flag,
            id,
            command,
        };
        if let Err(e) = self.enqueue(&header, payload) {
            let mut state = lock(&self.shared.state);
            state.proto.requests().cancel(id);
            stream::Open::<S>::forget(state.proto.streams(), (dir, id));
            return Err(e);
        }
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok((id, state))
    }

    /// Queues one `Data` frame of stream `key` (compressed when worth it), spending as much
    /// of the stream's credit.
    pub(crate) fn send_stream_data(&self, key: Key, data: &[u8]) -> Result<(), Error> {
        let header = stream_header(Kind::Data, key);
        self.queue_packed(&header, data, |proto, packed| {
            proto.queue_stream_data(key, packed)
        })
    }

    /// The receiver of stream `key` is done: forgets it, and unless it reached the end,
    /// tells the sender to stop.
    pub(crate) fn finish_incoming(&self, key: Key, stop: bool) {
        self.with_state(|proto| proto.finish_incoming(key, stop));
    }

    /// Tells the sender of a refused upload `id` to stop (`Stop`), leaving alone any
    /// stream open with that id (a refused request may reuse one).
    pub(crate) fn refuse_upload(&self, id: u64) {
        let header = stream_header(Kind::Stop, (Dir::Upload, id));
        let _ = self.enqueue(&header, &[]);
    }

    /// Grants the sender of stream `key` the room its consumer freed.
    pub(crate) fn grant_credit(&self, key: Key) {
        self.with_state(|proto| proto.grant_credit(key));
    }

    /// Forgets sending stream `key`; with a reason, tells the receiver it failed.
    pub(crate) fn finish_outgoing(&self, key: Key, abort: Option<&str>) {
        self.with_state(|proto| proto.finish_outgoing(key, abort));
    }

    /// Ends sending stream `key` with the hash of everything sent.
    pub(crate) fn end_outgoing(&self, key: Key, hash: &[u8; HASH_LEN]) {
        self.with_state(|proto| proto.end_outgoing(key, hash));
    }

    /// Waits until the outbox is short enough for a stream's next chunk (fairness: small
    /// calls queued beside a transfer wait behind at most this much).
    pub(crate) async fn wait_for_stream_space(&self, limit: usize) {
        self.wait_for_space_above(limit).await
    }
}
