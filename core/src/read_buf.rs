//! How a connection's read buffers grow and shrink: with the bytes that actually arrived,
//! never with what the peer announced.
//!
//! A frame or record header may announce up to `max_frame` bytes; a reader that reserved
//! that much on the header's word would let a peer that sends 1 KB of a 4 MiB frame hold
//! megabytes of the server's memory. Instead the read window doubles with what is already
//! buffered (so assembling a large frame recopies it a bounded number of times, not once
//! per read), and a buffer that waits for more data is first cut down to about twice its
//! contents.

use bytes::BytesMut;

/// Smallest window for a read that follows data already received (room to read ahead
/// past the end of a small frame).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Largest read window: the window is zero-filled before each read, so it must not be the
/// whole rest of a large frame (that would zero the same bytes again on every read).
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
