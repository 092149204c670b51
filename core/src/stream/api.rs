//! The caller's side of streams (reached through [`Calls`](crate::Calls)): uploads and
//! downloads; and the connection as the [`Carrier`] of its streams.

use std::future::Future;

use bytes::Bytes;

use super::incoming::Incoming;
use super::outgoing::{pump, Outgoing};
use super::{Carrier, Dir, Key, Sender, StreamHead, WantStream, HASH_LEN};
use crate::connection::Connection;
use crate::error::Error;
use crate::frame::{FLAG_DOWNLOAD, FLAG_UPLOAD};

impl Connection {
    /// Calls `command` with `body` as a stream after `meta`, and waits for the handler's
    /// reply. The body is read and sent chunk by chunk as the receiver's window allows;
    /// if the handler answers before reading it all, sending stops.
    pub(crate) async fn upload_body(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        body: Outgoing,
    ) -> Result<Bytes, Error> {
        let head = StreamHead {
            total: body.total(),
            meta: meta.as_ref(),
            prefix: body.prefix(),
        }
        .encode()?;
        let (id, state) = self.start_stream_call(command, FLAG_UPLOAD, &head).await?;
        let mut reply = std::pin::pin!(self.call_future(id));
        enum First {
            Sent(Result<u64, Error>),
            Replied(Result<Bytes, Error>),
        }
        let first = futures_lite::future::or(
            async { First::Sent(pump(self, (Dir::Upload, id), state, body).await) },
            async { First::Replied(reply.as_mut().await) },
        )
        .await;
        match first {
            First::Replied(result) => result,
            // The source itself failed: that is this side's error.
            First::Sent(Err(e @ (Error::Io(_) | Error::Integrity(_)))) => Err(e),
            First::Sent(_) => reply.await,
        }
    }

    /// Calls `command`, whose handler answers with a stream, starting at byte `offset`
    /// (non-zero to resume). Returns as soon as the stream starts.
    pub(crate) async fn open_download(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        offset: u64,
    ) -> Result<Incoming, Error> {
        let want = postcard::to_allocvec(&WantStream {
            offset,
            meta: meta.as_ref(),
        })?;
        let (id, state) = self
            .start_stream_call(command, FLAG_DOWNLOAD, &want)
            .await?;
        let key = (Dir::Download, id);
        let head = match self.call_future(id).await {
            Ok(head) => head,
            Err(e) => {
                self.finish_incoming(key, false);
                return Err(e);
            }
        };
        match StreamHead::decode(&head) {
            Ok(head) => Ok(Incoming::new(self.clone(), key, state, head)),
            Err(e) => {
                self.finish_incoming(key, true);
                Err(Error::Payload(format!("bad stream head: {e}")))
            }
        }
    }
}

impl Carrier for Connection {
    fn finish_incoming(&self, key: Key, stop: bool) {
        Connection::finish_incoming(self, key, stop)
    }

    fn grant_credit(&self, key: Key) {
        Connection::grant_credit(self, key)
    }

    fn finish_outgoing(&self, key: Key, abort: Option<&str>) {
        Connection::finish_outgoing(self, key, abort)
    }

    fn end_outgoing(&self, key: Key, hash: &[u8; HASH_LEN]) {
        Connection::end_outgoing(self, key, hash)
    }
}

impl Sender for Connection {
    fn send_stream_data(&self, key: Key, data: &[u8]) -> Result<(), Error> {
        Connection::send_stream_data(self, key, data)
    }

    fn wait_for_stream_space(&self, limit: usize) -> impl Future<Output = ()> + Send {
        Connection::wait_for_stream_space(self, limit)
    }
}
