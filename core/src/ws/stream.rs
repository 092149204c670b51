//! A WebSocket seen as the protocol's byte stream: [`WsRead`] concatenates the binary
//! messages it receives, [`WsWrite`] sends each write as one binary message.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender, WebSocketStream};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::Stream;
use futures_sink::Sink;

use crate::transport::{BoxRead, BoxWrite, Prefixed};

/// A connection's two halves joined again (the WebSocket library wants one stream), with
/// bytes already read from it (an HTTP request head) served before the rest.
pub(crate) struct Duplex {
    read: Prefixed,
    write: BoxWrite,
}

impl Duplex {
    /// Joins `read` and `write`; reads return `prefix` first.
    pub(crate) fn new(prefix: Vec<u8>, read: BoxRead, write: BoxWrite) -> Self {
        Self {
            read: Prefixed::new(prefix, read),
            write,
        }
    }
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_close(cx)
    }
}

/// Splits an open WebSocket into the protocol's read and write halves; each outgoing
/// message carries at most `max_send` bytes.
pub(crate) fn halves(ws: WebSocketStream<Duplex>, max_send: usize) -> (BoxRead, BoxWrite) {
    let (tx, rx) = ws.split();
    let read = WsRead {
        rx,
        pending: Bytes::new(),
        closing: false,
    };
    let write = WsWrite {
        tx,
        sending: None,
        max_send: max_send.max(1),
    };
    (Box::new(read), Box::new(write))
}

/// The incoming binary messages as one byte stream (their boundaries carry no meaning).
/// A text message is a protocol error; a close message, or the socket closing, is the
/// end of the stream. Pings are answered by the WebSocket library.
pub(crate) struct WsRead {
    rx: WebSocketReceiver<Duplex>,
    /// What is left of the last message.
    pending: Bytes,
    /// The peer sent Close: reading goes on only until the answer is sent.
    closing: bool,
}

impl AsyncRead for WsRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.pending.is_empty() || buf.is_empty() {
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending.split_to(n));
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut self.rx).poll_next(cx)) {
                None => return Poll::Ready(Ok(0)),
                // The library queued the answering Close (RFC 6455 §5.5.1); reading on
                // sends it, and then ends.
                Some(Ok(Message::Close(_))) => self.closing = true,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) if self.closing => {
                    return Poll::Ready(Ok(0))
                }
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a WebSocket text message (the protocol uses binary messages only)",
                    )))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

/// Sends each write as one binary message (vectored writes gathered into one, up to
/// `max_send` bytes). A write completes once its message has been handed to the socket,
/// as a TCP write does, so the engine needs no flush.
pub(crate) struct WsWrite {
    tx: WebSocketSender<Duplex>,
    /// The length of a message queued by a write that is waiting for it to be flushed.
    sending: Option<usize>,
    max_send: usize,
}

impl WsWrite {
    /// Queues `bufs` (up to `max_send` bytes) as one message, then waits for it to leave.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.sending.is_none() {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if total == 0 {
                return Poll::Ready(Ok(0));
            }
            ready!(Pin::new(&mut self.tx).poll_ready(cx)).map_err(io_error)?;
            let mut message = Vec::with_capacity(total.min(self.max_send));
            for b in bufs {
                let room = self.max_send - message.len();
                message.extend_from_slice(&b[..b.len().min(room)]);
                if message.len() == self.max_send {
                    break;
                }
            }
            let n = message.len();
            Pin::new(&mut self.tx)
                .start_send(Message::Binary(message.into()))
                .map_err(io_error)?;
            self.sending = Some(n);
        }
        ready!(Pin::new(&mut self.tx).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Ok(self.sending.take().unwrap_or(0)))
    }
}

impl AsyncWrite for WsWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx).map_err(io_error)
    }

    /// Sends a close message (the peer reads the end of the stream) and flushes it.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_close(cx).map_err(io_error)
    }
}

/// A WebSocket error as the I/O error the engine reports.
pub(crate) fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}
