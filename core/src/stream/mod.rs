//! Big streams tied to one call: any `AsyncRead` of any length, sent in chunks under a
//! flow-control window, hashed end to end, resumable from an offset, cancellable from
//! either side.
//!
//! - An **upload** is a call whose body is a stream:
//!   [`Connection::upload`](crate::Connection::upload) on the caller,
//!   [`Router::upload`](crate::Router::upload) on the handler side, which reads it as an
//!   [`Incoming`].
//! - A **download** is a call whose reply is a stream:
//!   [`Connection::download`](crate::Connection::download) on the caller,
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
//! use zserver_core::{Error, Outgoing, Router};
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
//! The module's layers: `state` is the sans-IO bookkeeping of the streams open on a
//! connection (credit, ends, what to answer a peer's stream frame); `outgoing` and
//! `incoming` drive it from tasks through a `Carrier`; `api` is the caller's API on
//! [`Connection`](crate::Connection), which is the one `Carrier`.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::frame::Kind;

mod api;
mod incoming;
mod key;
mod outgoing;
mod progress;
pub(crate) mod state;
mod stops;

pub use incoming::{DownloadRequest, Incoming};
pub(crate) use key::{Dir, Key};
pub(crate) use outgoing::pump;
pub use outgoing::Outgoing;
pub use progress::Progress;
pub(crate) use state::{Answer, Open, Outbound, Streams};

/// Largest piece of stream data in one `Data` frame.
pub const CHUNK: usize = 64 * 1024;

/// Credit every stream starts with: the sender may send this many bytes before the
/// receiver grants more with `Credit` frames. Part of the protocol.
pub const INITIAL_WINDOW: u64 = 256 * 1024;

/// Length of the hash in an `End` frame (BLAKE3).
pub const HASH_LEN: usize = 32;

/// The head of a stream: sent as the payload of an upload `Call` and of a download `Reply`.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct StreamHead<'a> {
    /// Bytes the stream will carry, if known.
    pub total: Option<u64>,
    /// Application data about the stream (a file name, a content type, ...).
    #[serde(borrow)]
    pub meta: &'a [u8],
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

/// What carries a connection's streams, as a stream's receiver sees it: the streams'
/// state and a way to queue their control frames. [`Connection`](crate::Connection) is the
/// implementation (in `api`), so `incoming` and `outgoing` need not know the connection.
pub(crate) trait Carrier: Send + Sync + 'static {
    /// The streams open on the connection.
    fn streams(&self) -> &Mutex<Streams>;

    /// Queues a stream control frame (`End`, `Abort`, `Credit`, `Stop`); once the
    /// connection has closed there is nobody to tell, and it is dropped.
    fn send_stream_frame(&self, kind: Kind, key: Key, payload: &[u8]);
}

/// A [`Carrier`] as a stream's sender sees it: it also takes data, under back-pressure.
pub(crate) trait Sender: Carrier {
    /// Queues one `Data` frame of stream `key`.
    fn send_stream_data(&self, key: Key, data: &[u8]) -> Result<(), Error>;

    /// Waits until fewer than `limit` bytes are queued to write (or the connection closed).
    fn wait_for_stream_space(&self, limit: usize) -> impl Future<Output = ()> + Send;
}

/// Locks a stream state; a panic elsewhere while it was held does not poison it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
