//! How a connection's read buffers grow and shrink: with the bytes that actually arrived,
//! never with what the peer announced.
//!
//! A frame or record header may announce up to `max_frame` bytes; a reader that reserved
//! that much on the header's word would let a peer that sends 1 KB of a 4 MiB frame hold
//! megabytes of the server's memory. Instead the read window doubles with what is already
//! buffered (so assembling a large frame recopies it a bounded number of times, not once
//! per read), and a buffer that waits for more data is first cut down to about twice its
//! contents.
//!
//! A read that may wait goes through a buffer of the calling thread ([`poll_read_with`]),
//! not one of the connection: an idle connection holds no read buffer at all, and when its
//! data arrives one read takes up to [`IDLE_READ`] bytes at once (a whole batch of small
//! frames), so the batch is dispatched, and its replies written, as one.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_io::AsyncRead;

/// Bytes a read that may wait takes at most (through the per-thread buffer).
pub(crate) const IDLE_READ: usize = 64 * 1024;

thread_local! {
    /// The calling thread's buffer for [`poll_read_with`], allocated on first use.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Polls `read` once with up to `max` bytes (at most [`READ_MAX`]) of room in a buffer of
/// the calling thread, and hands what arrived (if anything) to `take`. Nothing is held
/// between polls, so a connection waiting with this costs no buffer, and no window is
/// zero-filled ahead of a read that may fill only part of it.
pub(crate) fn poll_read_with<R: AsyncRead + Unpin + ?Sized>(
    read: &mut R,
    cx: &mut Context<'_>,
    max: usize,
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    let poll = |room: &mut [u8]| match Pin::new(&mut *read).poll_read(cx, room) {
        Poll::Ready(Ok(n)) => {
            if n > 0 {
                take(&room[..n]);
            }
            Poll::Ready(Ok(n))
        }
        other => other,
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < READ_MAX {
                // Zeroed by the allocator: fresh pages stay untouched (and out of the
                // process's resident memory) until a read fills them.
                *scratch = vec![0; READ_MAX];
            }
            poll(&mut scratch[..max.clamp(1, READ_MAX)])
        }
        // Only if a reader's own poll_read reads another connection on this thread.
        Err(_) => poll(&mut [0u8; 512][..max.clamp(1, 512)]),
    })
}

/// Smallest window for a read that follows data already received (room to read ahead
/// past the end of a small frame).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Largest read window (and the size of the per-thread buffer reads go through): a large
/// frame is read a window at a time, each appended to what arrived before.
pub(crate) const READ_MAX: usize = 256 * 1024;

/// Spare capacity a waiting buffer may keep beyond twice its contents; buffers of up to
/// this many bytes are always copied into a right-sized one before a wait (cheap, and it
/// lets go of the read window they were cut from).
pub(crate) const READ_SLACK: usize = 4 * 1024;

/// The next read window when `held` bytes are buffered and the frame or record in
/// progress still needs `wanted`: at least [`READ_CHUNK`], at most [`READ_MAX`], and never
/// more than what is already held (so capacity at most doubles per read) unless the frame
/// itself needs less than a chunk.
pub(crate) fn read_window(wanted: usize, held: usize) -> usize {
    wanted
        .max(READ_CHUNK)
        .min(held.max(READ_CHUNK))
        .min(READ_MAX)
}

/// Before a read buffer waits for more data: an empty one is freed, a small one copied into
/// a right-sized allocation, and one whose capacity exceeds twice its contents plus
/// [`READ_SLACK`] shrunk to fit. Afterwards `capacity <= 2 * len + READ_SLACK`.
pub(crate) fn compact(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    } else if buf.len() <= READ_SLACK || buf.capacity() > 2 * buf.len() + READ_SLACK {
        *buf = BytesMut::from(&buf[..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_read_takes_all_that_is_ready_in_one_go() {
        let append = |read: &mut futures_lite::io::Cursor<Vec<u8>>, buf: &mut Vec<u8>, max| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            poll_read_with(read, &mut cx, max, |got| buf.extend_from_slice(got))
        };
        let ready = vec![7u8; 10_000];
        let mut read = futures_lite::io::Cursor::new(ready.clone());
        let mut buf = Vec::new();
        let polled = append(&mut read, &mut buf, IDLE_READ);
        assert!(matches!(polled, Poll::Ready(Ok(10_000))), "{polled:?}");
        assert_eq!(&buf[..], &ready[..]);
        // What is ready beyond the window waits for the next read.
        let mut more = futures_lite::io::Cursor::new(vec![8u8; IDLE_READ + 5]);
        let polled = append(&mut more, &mut buf, IDLE_READ);
        assert!(matches!(polled, Poll::Ready(Ok(IDLE_READ))), "{polled:?}");
        assert_eq!(buf.len(), 10_000 + IDLE_READ);
        assert_eq!(buf[10_000], 8);
        // A smaller window reads no more than asked; the end of input hands over nothing.
        let polled = append(&mut more, &mut buf, 3);
        assert!(matches!(polled, Poll::Ready(Ok(3))), "{polled:?}");
        let polled = append(&mut more, &mut buf, IDLE_READ);
        assert!(matches!(polled, Poll::Ready(Ok(2))), "{polled:?}");
        let polled = append(&mut more, &mut buf, IDLE_READ);
        assert!(matches!(polled, Poll::Ready(Ok(0))), "{polled:?}");
        assert_eq!(buf.len(), 10_000 + IDLE_READ + 5);
    }

    #[test]
    fn the_window_follows_what_arrived_not_what_was_announced() {
        // A 4 MiB frame announced, 1,000 bytes received: one chunk, not the frame.
        assert_eq!(read_window(4 << 20, 1_000), READ_CHUNK);
        // It doubles with what is held, up to the cap.
        assert_eq!(read_window(4 << 20, 100_000), 100_000);
        assert_eq!(read_window(4 << 20, 3 << 20), READ_MAX);
        // Near the end of a large frame it asks for just the rest.
        assert_eq!(read_window(50_000, 200_000), 50_000);
        // A small frame still reads ahead a chunk.
        assert_eq!(read_window(10, 10), READ_CHUNK);
    }

    #[test]
    fn compaction_bounds_capacity_by_contents() {
        let mut buf = BytesMut::with_capacity(READ_MAX);
        buf.extend_from_slice(&[1; 1_000]);
        compact(&mut buf);
        assert_eq!(&buf[..], &[1; 1_000][..]);
        assert!(buf.capacity() <= 2 * buf.len() + READ_SLACK);
        assert!(buf.capacity() < 2 * 1_000 + 64, "{}", buf.capacity());

        let mut big = BytesMut::with_capacity(1 << 20);
        big.extend_from_slice(&vec![2; 300_000]);
        compact(&mut big);
        assert_eq!(big.len(), 300_000);
        assert!(big.capacity() <= 2 * big.len() + READ_SLACK);

        // Already tight: kept as it is (no copy).
        let mut tight = BytesMut::with_capacity(500_000);
        tight.extend_from_slice(&vec![3; 400_000]);
        let at = tight.as_ptr();
        compact(&mut tight);
        assert_eq!(tight.as_ptr(), at);

        let mut empty = BytesMut::with_capacity(READ_MAX);
        compact(&mut empty);
        assert_eq!(empty.capacity(), 0);
    }
}
