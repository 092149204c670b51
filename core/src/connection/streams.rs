//! What streams need of a connection: their state, the calls that open them, and their
//! frames queued in the outbox.

use std::sync::{Arc, Mutex};

use super::{lock, Connection};
use crate::error::Error;
use crate::frame::{Header, Kind, FLAG_UPLOAD};
use crate::proto::CommandKind;
use crate::stats::Counters;
use crate::stream::{self, Dir, Key, Outbound, Streams};

impl Connection {
    pub(crate) fn streams(&self) -> &Mutex<Streams> {
        &self.shared.streams
    }

    /// The sending state of stream `key`, if it is open.
    pub(crate) fn stream_outbound(&self, key: Key) -> Option<Arc<Mutex<Outbound>>> {
        lock(&self.shared.streams).outgoing(key)
    }

    pub(crate) fn forget_outbound(&self, key: Key) {
        lock(&self.shared.streams).forget_outgoing(key);
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
        let id = lock(&self.shared.state).proto.requests().start(None)?;
        let dir = if flag == FLAG_UPLOAD {
            Dir::Upload
        } else {
            Dir::Download
        };
        let key = (dir, id);
        let window = self.shared.config.stream_window as u64;
        let opened = stream::Open::<S>::open(&mut *lock(&self.shared.streams), key, window);
        let state = match opened {
            Ok(state) => state,
            Err(e) => {
                lock(&self.shared.state).proto.requests().cancel(id);
                return Err(e);
            }
        };
        let header = Header {
            kind: Kind::Call,
            flags: flag,
            id,
            command,
        };
        if let Err(e) = self.enqueue(&header, payload) {
            lock(&self.shared.state).proto.requests().cancel(id);
            stream::Open::<S>::forget(&mut *lock(&self.shared.streams), key);
            return Err(e);
        }
        Counters::bump(&self.shared.counters.calls_out, 1);
        Ok((id, state))
    }

    /// Queues a stream control frame (`End`, `Abort`, `Credit`, `Stop`); if the connection
    /// has closed there is nobody to tell, so failures are ignored.
    pub(crate) fn send_stream_frame(&self, kind: Kind, key: Key, payload: &[u8]) {
        let header = Header {
            kind,
            flags: key.0.flag(),
            id: key.1,
            command: "",
        };
        let _ = self.enqueue(&header, payload);
    }

    /// Queues one `Data` frame of stream `key`.
    pub(crate) fn send_stream_data(&self, key: Key, data: &[u8]) -> Result<(), Error> {
        let header = Header {
            kind: Kind::Data,
            flags: key.0.flag(),
            id: key.1,
            command: "",
        };
        self.enqueue(&header, data)
    }

    /// Waits until the outbox is short enough for a stream's next chunk (fairness: small
    /// calls queued beside a transfer wait behind at most this much).
    pub(crate) async fn wait_for_stream_space(&self, limit: usize) {
        self.wait_for_space_above(limit).await
    }
}
