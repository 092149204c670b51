//! Big streams tied to one call: any `AsyncRead` of any length, sent in chunks under a
//! flow-control window, hashed end to end, resumable from an offset, cancellable from
//! either side.
//!
//! - An **upload** is a call whose body is a stream:
//!   [`Calls::upload`](crate::Calls::upload) on the caller,
//!   [`Router::upload`](crate::Router::upload) on the handler side, which reads it as an
//!   [`Incoming`].
//! - A **download** is a call whose reply is a stream:
//!   [`Calls::download`](crate::Calls::download) on the caller,
//!   [`Router::download`](crate::Router::download) on the handler side, which answers
//!   with an [`Outgoing`].
//!
//! Both work in either direction (a server can download from a client it calls back).
//! The receiver grants credit as its consumer reads, so a slow consumer slows the sender
//! and neither side buffers more than a window. Each chunk is its own frame, so the small
//! calls on the same connection interleave with a transfer instead of queueing behind it.
//!
//! ```no_run
//! # async fn demo(client: zserver_core::Client) -> Result<(), zserver_core::Error> {
//! use zserver_core::{Calls, Error, Outgoing, Router};
//! let router = Router::new()
//!     .download("get", |_ctx, req| async move {
//!         match req.meta_str()? {
//!             "report.pdf" => Outgoing::file("files/report.pdf", req.offset).await,
//!             other => Err(Error::BadRequest(format!("no file `{other}`"))),
//!         }
//!     })
//!     .upload("put", |_ctx, body| async move { body.read_all(1 << 20).await });
//! // On the client: a file download, resumed where an earlier attempt stopped.
//! let written = client.download_to_file("get", "report.pdf", "report.pdf", true).await?;
//! # Ok(()) }
//! ```
//!
//! The module's layers: the sans-IO bookkeeping of the streams open on a connection
//! (credit, ends, what to answer a peer's stream frame) is part of the protocol state
//! (`crate::proto`); `outgoing` and `incoming` drive it from tasks through a `Carrier`;
//! `api` is the caller's API on [`Connection`](crate::Connection), which is the one
//! `Carrier`.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::proto::streams::lock;

mod api;
mod incoming;
mod outgoing;
mod progress;
mod resume;

pub(crate) use crate::proto::streams::{Dir, Key, Open, Outbound, Streams};
pub use crate::proto::streams::{HASH_LEN, INITIAL_WINDOW};
pub use incoming::{DownloadRequest, Incoming};
pub(crate) use outgoing::pump;
pub use outgoing::Outgoing;
pub use progress::Progress;
pub(crate) use resume::hash_prefix;
pub use resume::FileDownload;

/// Largest piece of stream data in one `Data` frame.
pub const CHUNK: usize = 64 * 1024;

/// The head of a stream: sent as the payload of an upload `Call` and of a download `Reply`.
///
/// On the wire: postcard `{ total: Option<u64>, meta: bytes }`, then, in a resumed
/// download's answer only, `prefix` as postcard `Option<[u8; 32]>` (absent means none, so
/// heads without it are byte for byte those of earlier versions).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamHead<'a> {
    /// Bytes the stream will carry, if known.
    pub total: Option<u64>,
    /// Application data about the stream (a file name, a content type, ...).
    pub meta: &'a [u8],
    /// The BLAKE3 hash of the source's bytes before the download's offset, for the
    /// downloader to check the part it keeps.
    pub prefix: Option<[u8; HASH_LEN]>,
}

impl<'a> StreamHead<'a> {
    /// The head's bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = postcard::to_allocvec(&(self.total, self.meta))?;
        if let Some(prefix) = &self.prefix {
            bytes.push(1);
            bytes.extend_from_slice(prefix);
        }
        Ok(bytes)
    }

    /// Reads a head; bytes after it are ignored, as everywhere in protocol v1.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, postcard::Error> {
        let ((total, meta), rest): ((Option<u64>, &[u8]), _) = postcard::take_from_bytes(bytes)?;
        let prefix = match rest.is_empty() {
            true => None,
            false => postcard::from_bytes::<Option<[u8; HASH_LEN]>>(rest)?,
        };
        Ok(Self {
            total,
            meta,
            prefix,
        })
    }
}

/// What a download `Call` carries: where to start, and what to send.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct WantStream<'a> {
    /// Offset to resume from (0 for a fresh download).
    pub offset: u64,
    /// Application data naming what to send.
    #[serde(borrow)]
    pub meta: &'a [u8],
}

/// What carries a connection's streams, as a stream's receiver sees it: the protocol
/// state that holds them, and its queue for their frames. [`Connection`](crate::Connection)
/// is the implementation (in `api`), so `incoming` and `outgoing` need not know the
/// connection. Once the connection has closed there is nobody to tell, and these do
/// nothing.
pub(crate) trait Carrier: Send + Sync + 'static {
    /// The receiver of stream `key` is done with it: forgets it, and unless it reached
    /// the end (`stop`), tells the sender to stop (`Stop`).
    fn finish_incoming(&self, key: Key, stop: bool);

    /// Grants the sender of stream `key` the room its consumer has freed (`Credit`), if
    /// that is at least half a window.
    fn grant_credit(&self, key: Key);

    /// Forgets sending stream `key`; unless it ended, tells the receiver why (`Abort`).
    fn finish_outgoing(&self, key: Key, abort: Option<&str>);

    /// Ends sending stream `key` with the hash of everything sent (`End`).
    fn end_outgoing(&self, key: Key, hash: &[u8; HASH_LEN]);
}

/// A [`Carrier`] as a stream's sender sees it: it also takes data, under back-pressure.
pub(crate) trait Sender: Carrier {
    /// Queues one `Data` frame of stream `key`, spending as much of its credit.
    fn send_stream_data(&self, key: Key, data: &[u8]) -> Result<(), Error>;

    /// Waits until fewer than `limit` bytes are queued to write (or the connection closed).
    fn wait_for_stream_space(&self, limit: usize) -> impl Future<Output = ()> + Send;
}

#[cfg(test)]
mod tests {
    use super::StreamHead;

    #[test]
    fn stream_heads_round_trip() {
        for prefix in [None, Some([7; 32])] {
            let head = StreamHead {
                total: Some(5),
                meta: b"name",
                prefix,
            };
            let bytes = head.encode().unwrap();
            assert_eq!(StreamHead::decode(&bytes).unwrap(), head);
        }
    }

    #[test]
    fn a_head_without_prefix_is_the_old_encoding() {
        let head = StreamHead {
            total: Some(5),
            meta: b"",
            prefix: None,
        };
        assert_eq!(head.encode().unwrap(), [1, 5, 0]);
        // An explicit "none" (00) after the meta reads as none too.
        assert_eq!(StreamHead::decode(&[1, 5, 0, 0]).unwrap(), head);
    }
}
