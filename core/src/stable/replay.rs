//! The sending side of a stable session, sans-IO: every unit written but not yet
//! acknowledged by the peer is kept, so that after a new link it can be sent again from
//! exactly where the peer's count says it stopped.
//!
//! Positions count the stream's bytes, plus one for its end (the FIN), so that the peer's
//! acknowledgement of the end is a plain number too.

use bytes::{Buf, BytesMut};

use crate::error::Error;

/// Bytes written and not yet acknowledged, and how far they have been sent on this link.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Position of `buf[0]`: everything before it is acknowledged.
    base: u64,
    buf: BytesMut,
    /// The stream has ended (a FIN follows the buffered bytes).
    fin: bool,
    /// Position up to which the current link has been given the stream.
    sent: u64,
}

impl Replay {
    /// Units written so far (bytes, plus one once the stream has ended).
    pub(crate) fn written(&self) -> u64 {
        self.base + self.buf.len() as u64 + u64::from(self.fin)
    }

    /// Units the peer has acknowledged.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn acked(&self) -> u64 {
        self.base
    }

    /// Bytes held for a possible resend.
    pub(crate) fn held(&self) -> usize {
        self.buf.len()
    }

    /// Whether the stream has ended and the peer has acknowledged all of it.
    pub(crate) fn all_acked(&self) -> bool {
        self.fin && self.buf.is_empty()
    }

    /// Whether the stream has ended.
    pub(crate) fn ended(&self) -> bool {
        self.fin
    }

    /// Appends bytes to the stream.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        debug_assert!(!self.fin, "bytes after the end of the stream");
        self.buf.extend_from_slice(bytes);
    }

    /// Ends the stream.
    pub(crate) fn finish(&mut self) {
        self.fin = true;
    }

    /// The peer has received `received` units: frees them. An old (smaller) count is
    /// ignored; a count beyond what was sent breaks the protocol.
    pub(crate) fn ack(&mut self, received: u64) -> Result<(), Error> {
        if received > self.sent {
            return Err(Error::Protocol(format!(
                "stable session: the peer acknowledged {received} units but {} were sent",
                self.sent
            )));
        }
        self.drop_below(received);
        Ok(())
    }

    /// A new link: the peer says it has `received` units, so sending restarts from there.
    pub(crate) fn rewind(&mut self, received: u64) -> Result<(), Error> {
        if received < self.base || received > self.written() {
            return Err(Error::Protocol(format!(
                "stable session: the peer resumes at {received}, outside the {}..={} still held",
                self.base,
                self.written()
            )));
        }
        self.drop_below(received);
        self.sent = received;
        Ok(())
    }

    fn drop_below(&mut self, received: u64) {
        if received <= self.base {
            return;
        }
        let bytes = (received - self.base).min(self.buf.len() as u64) as usize;
        self.buf.advance(bytes);
        self.base += bytes as u64;
        if self.buf.is_empty() && self.buf.capacity() > 256 * 1024 {
            self.buf = BytesMut::new();
        }
    }

    /// The next bytes to send on this link, at most `max`, if any.
    pub(crate) fn unsent(&self, max: usize) -> Option<&[u8]> {
        let start = (self.sent - self.base) as usize;
        let end = self.buf.len().min(start + max);
        (start < end).then(|| &self.buf[start..end])
    }

    /// Records that `n` bytes from [`unsent`](Self::unsent) were handed to the link.
    pub(crate) fn mark_sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// Whether the FIN is due: the stream has ended and every byte has been sent.
    pub(crate) fn fin_unsent(&self) -> bool {
        self.fin && self.sent == self.base + self.buf.len() as u64
    }

    /// Records that the FIN was handed to the link.
    pub(crate) fn mark_fin_sent(&mut self) {
        self.sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_all(r: &mut Replay) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = r.unsent(3) {
            out.extend_from_slice(chunk);
            let n = chunk.len();
            r.mark_sent(n);
        }
        out
    }

    #[test]
    fn resends_exactly_what_the_peer_lacks() {
        let mut r = Replay::default();
        r.push(b"hello world");
        assert_eq!(send_all(&mut r), b"hello world");
        r.ack(5).unwrap();
        assert_eq!(r.held(), 6);
        // The link drops; the peer had 8 bytes.
        r.rewind(8).unwrap();
        r.push(b"!");
        assert_eq!(send_all(&mut r), b"rld!");
        assert_eq!(r.written(), 12);
    }

    #[test]
    fn the_end_counts_as_one_unit() {
        let mut r = Replay::default();
        r.push(b"ab");
        r.finish();
        assert!(!r.fin_unsent());
        send_all(&mut r);
        assert!(r.fin_unsent());
        r.mark_fin_sent();
        assert_eq!(r.written(), 3);
        r.ack(2).unwrap();
        assert!(!r.all_acked() || r.held() == 0);
        r.ack(3).unwrap();
        assert!(r.all_acked());
        // Resuming after the FIN was lost: only the FIN is sent again.
        let mut r = Replay::default();
        r.push(b"ab");
        r.finish();
        send_all(&mut r);
        r.mark_fin_sent();
        r.rewind(2).unwrap();
        assert_eq!(r.unsent(10), None);
        assert!(r.fin_unsent());
    }

    #[test]
    fn impossible_counts_are_errors() {
        let mut r = Replay::default();
        r.push(b"abc");
        r.mark_sent(2);
        assert!(r.ack(3).is_err(), "acknowledging what was not sent");
        r.ack(2).unwrap();
        assert!(
            r.rewind(1).is_err(),
            "resuming before what was acknowledged"
        );
        assert!(r.rewind(4).is_err(), "resuming past what was written");
        r.ack(1).unwrap(); // an old ack is harmless
        assert_eq!(r.acked(), 2);
    }
}
