//! Sending a stream: [`Outgoing`] (what to send) and `pump`, the task side that sends it
//! chunk by chunk under the receiver's credit.

use std::io;
use std::io::{Read, Seek};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt};

use super::progress::{OnProgress, Progress};
use super::{hash_prefix, lock, Key, Outbound, Sender, StreamHead, CHUNK, HASH_LEN};
use crate::error::Error;

/// Most bytes a stream sender lets queue in its connection's outbox before it waits: big
/// write batches for a lone transfer, and a bound on what a small call queued beside it
/// waits behind.
const STREAM_QUEUE_MAX: usize = 8 * CHUNK;

/// Least a stream sender may queue, however many transfers run.
const STREAM_QUEUE_MIN: usize = 2 * CHUNK;

/// Bytes all the stream senders of this process may queue together; each gets an equal
/// share between the two bounds above, so that a thousand transfers do not hold a thousand
/// full queues.
const STREAM_QUEUE_BUDGET: usize = 64 * 1024 * 1024;

/// Stream senders running in this process.
static SENDERS: AtomicUsize = AtomicUsize::new(0);

/// This sender's share of the queue budget right now.
fn queue_share() -> usize {
    let senders = SENDERS.load(Ordering::Relaxed).max(1);
    (STREAM_QUEUE_BUDGET / senders).clamp(STREAM_QUEUE_MIN, STREAM_QUEUE_MAX)
}

enum Source {
    Reader(Pin<Box<dyn AsyncRead + Send>>),
    Bytes(Bytes),
    /// Read a chunk at a time on the blocking pool: no read-ahead buffer.
    File(Arc<std::fs::File>),
}

/// A stream to send: an upload's body or a download's answer.
pub struct Outgoing {
    source: Source,
    total: Option<u64>,
    meta: Bytes,
    prefix: Option<[u8; HASH_LEN]>,
    progress: Progress,
    on_progress: Option<OnProgress>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("total", &self.total)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// Streams everything `reader` yields. `total`, if given, is announced to the receiver
    /// (for its progress) and checked: a source that yields another length fails the stream.
    /// For tokio's readers, wrap them with `tokio_util::compat`.
    pub fn reader(reader: impl AsyncRead + Send + 'static, total: Option<u64>) -> Self {
        Self::from_source(Source::Reader(Box::pin(reader)), total)
    }

    /// Sends one in-memory block (ZServer4D's complete buffer): chunks are slices of it,
    /// never copies of the whole.
    pub fn bytes(block: impl Into<Bytes>) -> Self {
        let block = block.into();
        let total = Some(block.len() as u64);
        Self::from_source(Source::Bytes(block), total)
    }

    /// Streams the file at `path` from byte `offset` (to resume a download or an upload),
    /// without loading it into memory. An offset past the end is [`Error::BadRequest`]. A
    /// non-zero offset also sends the hash of the file's first `offset` bytes (read from
    /// the same open file), so that the receiver can check the part it keeps
    /// ([`FileDownload`](super::FileDownload)): this reads those bytes once more here.
    pub async fn file(path: impl AsRef<Path>, offset: u64) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        let opened = blocking::unblock(move || {
            let mut file = std::fs::File::open(&path)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            let len = file.metadata()?.len();
            if offset > len {
                return Err(Error::BadRequest(format!(
                    "offset {offset} is past the end of a {len}-byte file"
                )));
            }
            let prefix = match offset {
                0 => None,
                _ => Some(hash_prefix(&file, offset)?),
            };
            file.seek(io::SeekFrom::Start(offset))?;
            Ok((file, len, prefix))
        });
        let (file, len, prefix) = opened.await?;
        let mut body = Self::from_source(Source::File(Arc::new(file)), Some(len - offset));
        body.prefix = prefix;
        Ok(body)
    }

    /// For a stream that goes on from an offset (a download answered from one, an upload
    /// resumed): the BLAKE3 hash of the source's bytes before it, sent in the stream's head
    /// so that the receiver can check the part it keeps. [`Outgoing::file`] sets it by
    /// itself.
    pub fn prefix_hash(mut self, hash: [u8; HASH_LEN]) -> Self {
        self.prefix = Some(hash);
        self
    }

    pub(crate) fn prefix(&self) -> Option<[u8; HASH_LEN]> {
        self.prefix
    }

    fn from_source(source: Source, total: Option<u64>) -> Self {
        Self {
            source,
            total,
            meta: Bytes::new(),
            prefix: None,
            progress: Progress::new(total),
            on_progress: None,
        }
    }

    /// Application data sent ahead of the stream (a name, a size, a content type).
    pub fn meta(mut self, meta: impl Into<Bytes>) -> Self {
        self.meta = meta.into();
        self
    }

    /// Calls `f(done, total)` as the stream is sent (on the sending task: keep it short).
    pub fn on_progress(mut self, f: impl FnMut(u64, Option<u64>) + Send + 'static) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }

    /// A handle on this transfer's progress, readable from another task.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The announced length, if any.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub(crate) fn head(&self) -> Result<Vec<u8>, Error> {
        Ok(StreamHead {
            total: self.total,
            meta: &self.meta,
            prefix: self.prefix,
        }
        .encode()?)
    }
}

/// Sends `body` as stream `key`: chunks under the receiver's credit, then `End` with the
/// hash. Dropped or failed before the end, it tells the receiver with `Abort`.
pub(crate) async fn pump<C: Sender>(
    conn: &C,
    key: Key,
    state: Arc<Mutex<Outbound>>,
    mut body: Outgoing,
) -> Result<u64, Error> {
    /// Forgets the stream however the pump ends; one that did not end tells the receiver
    /// why (`Abort`): cancelled unless a reason was set.
    struct Guard<'a, C: Sender> {
        conn: &'a C,
        key: Key,
        abort: Option<String>,
    }
    impl<C: Sender> Drop for Guard<'_, C> {
        fn drop(&mut self) {
            SENDERS.fetch_sub(1, Ordering::Relaxed);
            self.conn.finish_outgoing(self.key, self.abort.as_deref());
        }
    }
    SENDERS.fetch_add(1, Ordering::Relaxed);
    let mut guard = Guard {
        conn,
        key,
        abort: Some("the sender cancelled the stream".into()),
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    let mut sent = 0u64;
    loop {
        let mut held = Bytes::new();
        let read = match &mut body.source {
            Source::Bytes(block) => {
                if block.is_empty() {
                    break;
                }
                held = block.split_to(block.len().min(CHUNK));
                None
            }
            Source::Reader(reader) => {
                buf.resize(CHUNK, 0);
                Some(reader.read(&mut buf).await)
            }
            Source::File(file) => {
                let (file, mut taken) = (file.clone(), std::mem::take(&mut buf));
                taken.resize(CHUNK, 0);
                let (read, taken) = blocking::unblock(move || {
                    let read = (&*file).read(&mut taken);
                    (read, taken)
                })
                .await;
                buf = taken;
                Some(read)
            }
        };
        let chunk: &[u8] = match read {
            None => &held,
            Some(Ok(0)) => break,
            Some(Ok(n)) => &buf[..n],
            Some(Err(e)) => {
                guard.abort = Some(format!("the sender's source failed: {e}"));
                return Err(e.into());
            }
        };
        hasher.update(chunk);
        let mut rest = chunk;
        while !rest.is_empty() {
            let credit = std::future::poll_fn(|cx| lock(&state).poll_credit(cx)).await?;
            let take = rest.len().min(credit.min(CHUNK as u64) as usize);
            conn.wait_for_stream_space(queue_share()).await;
            conn.send_stream_data(key, &rest[..take])?;
            rest = &rest[take..];
            sent += take as u64;
            let done = body.progress.advance(take as u64);
            if let Some(f) = &mut body.on_progress {
                f(done, body.total);
            }
        }
    }
    if let Some(total) = body.total.filter(|t| *t != sent) {
        let why = format!("the source yielded {sent} bytes but {total} were announced");
        guard.abort = Some(why.clone());
        return Err(Error::Integrity(why));
    }
    guard.abort = None;
    conn.end_outgoing(key, hasher.finalize().as_bytes());
    Ok(sent)
}
