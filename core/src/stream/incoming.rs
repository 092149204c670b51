//! Receiving a stream: [`Incoming`], read by an upload handler or a downloading caller.

use std::io;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::AsyncRead;

use super::progress::{OnProgress, Progress};
use super::{lock, Carrier, Key, StreamHead, HASH_LEN};
use crate::error::Error;
use crate::proto::streams::{Inbound, Next};

/// A stream being received: an upload's body in a handler, or a download's answer.
///
/// Read it as an `AsyncRead`, chunk by chunk with [`chunk`](Self::chunk), whole with
/// [`read_all`](Self::read_all), or into a file with [`save`](Self::save). The end is
/// reported only after the hash of everything received matched the sender's. Dropping it
/// before the end stops the sender at once.
pub struct Incoming {
    conn: Box<dyn Carrier>,
    key: Key,
    state: Arc<Mutex<Inbound>>,
    meta: Bytes,
    prefix: Option<[u8; HASH_LEN]>,
    progress: Progress,
    on_progress: Option<OnProgress>,
    hasher: blake3::Hasher,
    current: Bytes,
    finished: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("key", &self.key)
            .field("meta", &self.meta)
            .field("done", &self.progress.done())
            .field("total", &self.progress.total())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    pub(crate) fn new(
        conn: impl Carrier,
        key: Key,
        state: Arc<Mutex<Inbound>>,
        head: StreamHead<'_>,
    ) -> Self {
        Self {
            conn: Box::new(conn),
            key,
            state,
            meta: Bytes::copy_from_slice(head.meta),
            prefix: head.prefix,
            progress: Progress::new(head.total),
            on_progress: None,
            hasher: blake3::Hasher::new(),
            current: Bytes::new(),
            finished: false,
        }
    }

    /// The sender's application data about the stream.
    pub fn meta(&self) -> &Bytes {
        &self.meta
    }

    /// For a stream from an offset (a download answered from one, an upload resumed): the
    /// hash of the sender's bytes before it, if the sender said ([`Outgoing::prefix_hash`](super::Outgoing::prefix_hash)).
    pub fn prefix_hash(&self) -> Option<[u8; HASH_LEN]> {
        self.prefix
    }

    /// Bytes the stream carries in all, if the sender said.
    pub fn total(&self) -> Option<u64> {
        self.progress.total()
    }

    /// A handle on this transfer's progress, readable from another task.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Calls `f(done, total)` as chunks are consumed (on the consuming task).
    pub fn on_progress(&mut self, f: impl FnMut(u64, Option<u64>) + Send + 'static) {
        self.on_progress = Some(Box::new(f));
    }

    /// Bytes received and not yet consumed (never more than the receive window).
    pub fn buffered(&self) -> u64 {
        lock(&self.state).buffered()
    }

    /// The next chunk; `Ok(None)` at the end once the hash has been checked.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, Error>> {
        if self.finished {
            return Poll::Ready(Ok(None));
        }
        let (next, credit_due) = {
            let mut state = lock(&self.state);
            let next = state.poll_next(cx);
            (next, state.credit_due())
        };
        let Poll::Ready(next) = next else {
            return Poll::Pending;
        };
        Poll::Ready(match next {
            Next::Chunk(chunk) => {
                // Granted under the connection's lock, so only when half a window is free.
                if credit_due {
                    self.conn.grant_credit(self.key);
                }
                self.hasher.update(&chunk);
                let done = self.progress.advance(chunk.len() as u64);
                if let Some(f) = &mut self.on_progress {
                    f(done, self.progress.total());
                }
                Ok(Some(chunk))
            }
            Next::End(hash, received) => {
                self.finished = true;
                self.verify(hash, received).map(|()| None)
            }
            Next::Failed(e) => {
                self.finished = true;
                Err(e)
            }
        })
    }

    /// The next chunk; `Ok(None)` at the end once the hash has been checked.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Receives the whole stream into one buffer (ZServer4D's complete buffer), allocated
    /// once when the length is announced. A stream longer than `limit` bytes is refused
    /// before it is received.
    pub async fn read_all(mut self, limit: usize) -> Result<Bytes, Error> {
        let too_long = |n: u64| Error::BadRequest(format!("stream of {n} bytes exceeds {limit}"));
        let announced = self.total().unwrap_or(0);
        if announced > limit as u64 {
            return Err(too_long(announced));
        }
        let mut all = Vec::with_capacity(announced as usize);
        while let Some(chunk) = self.chunk().await? {
            if all.len() + chunk.len() > limit {
                return Err(too_long((all.len() + chunk.len()) as u64));
            }
            if all.is_empty() && announced as usize == chunk.len() {
                return match self.chunk().await? {
                    None => Ok(chunk),
                    Some(_) => Err(too_long(announced + 1)),
                };
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.into())
    }

    /// Writes the stream to the file at `path` (appending when `append`, to resume; else
    /// replacing it). Returns the bytes written. On an error the bytes received so far stay
    /// in the file, so that a later download can resume from its length.
    pub async fn save(mut self, path: impl AsRef<Path>, append: bool) -> Result<u64, Error> {
        let path = path.as_ref().to_owned();
        let file = blocking::unblock(move || {
            let mut options = std::fs::OpenOptions::new();
            options.create(true);
            if append {
                options.append(true);
            } else {
                options.write(true).truncate(true);
            }
            options
                .open(&path)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))
        });
        let file = Arc::new(file.await?);
        let mut written = 0u64;
        // One chunk at a time on the blocking pool, so nothing is buffered ahead.
        while let Some(chunk) = self.chunk().await? {
            let file = file.clone();
            let len = chunk.len() as u64;
            blocking::unblock(move || (&*file).write_all(&chunk)).await?;
            written += len;
        }
        Ok(written)
    }

    fn verify(&self, hash: [u8; HASH_LEN], received: u64) -> Result<(), Error> {
        if let Some(total) = self.total().filter(|t| *t != received) {
            return Err(Error::Integrity(format!(
                "received {received} bytes of a stream announced as {total}"
            )));
        }
        if self.hasher.finalize().as_bytes() != &hash {
            return Err(Error::Integrity(
                "the stream's hash does not match the sender's".into(),
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        while self.current.is_empty() {
            match self.poll_chunk(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => self.current = chunk,
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Poll::Ready(Ok(n))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.conn.finish_incoming(self.key, !self.finished);
    }
}

/// What a download handler is asked for.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// The caller's application data (a file name, a query, ...).
    pub meta: Bytes,
    /// Where to start: non-zero when the caller resumes an interrupted download.
    pub offset: u64,
}

impl DownloadRequest {
    /// `meta` as UTF-8 text.
    pub fn meta_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.meta)
            .map_err(|e| Error::BadRequest(format!("download name is not UTF-8: {e}")))
    }
}
