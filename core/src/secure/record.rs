//! Records: the encrypted envelope around the frame byte stream (sans-IO).
//!
//! ```text
//! record = length:u32-le  kind:u8  ciphertext  tag:16
//! length = bytes of ciphertext + tag (16 ..= record_limit(max_frame) + 16)
//! kind   = 0 data | 1 data, after which the sender switches to its next key
//! AD     = the 5 header bytes; nonce = 4 zero bytes + per-key record counter (u64 le)
//! ```
//!
//! A write batch of many frames is sealed as few records (about one per MiB, cut where
//! frames end), so small messages do not each pay an AEAD call; the sender seals in place
//! and writes headers, ciphertext and tags as one vectored write. Because records end on
//! frame boundaries, the receiver opens each record in place and hands its frames on without
//! copying. (A frame larger than a record may still span records; receivers must accept
//! that.)

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use crate::secure::cipher::{AuthError, CipherState, TAG_LEN};

/// Bytes of a record header.
pub const RECORD_HEADER: usize = 5;

/// Largest plaintext in one record: room for a whole default-sized frame, so that records
/// can always end on frame boundaries.
pub const MAX_RECORD_PLAINTEXT: usize = 4 * 1024 * 1024 + 64 * 1024;

/// Size a sender aims for when it groups frames into records.
pub const RECORD_TARGET: usize = 1024 * 1024;

/// Slack above a frame or the grouping target that a record may hold.
const RECORD_SLACK: usize = 64 * 1024;

/// Largest record plaintext a receiver whose `max_frame` is given accepts:
/// `min(4 MiB + 64 KiB, max(max_frame, 1 MiB) + 64 KiB)`. That is room for one whole frame
/// it accepts, or for a group of smaller frames up to the 1 MiB a sender aims for, and
/// exactly the protocol's fixed maximum with the default `max_frame` of 4 MiB.
pub fn record_limit(max_frame: usize) -> usize {
    (max_frame.max(RECORD_TARGET) + RECORD_SLACK).min(MAX_RECORD_PLAINTEXT)
}

/// The parts of one record sealed in place: its header and tag go around the ciphertext
/// that replaced the plaintext in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedParts {
    /// The 5-byte record header (also the AEAD's associated data).
    pub header: [u8; RECORD_HEADER],
    /// The authentication tag, sent after the ciphertext.
    pub tag: [u8; TAG_LEN],
}

const KIND_DATA: u8 = 0;
const KIND_DATA_THEN_REKEY: u8 = 1;

/// When a sender replaces its key: after this many bytes, records or seconds under one key,
/// whichever comes first. Each direction rekeys on its own, signalled in-band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Plaintext bytes sealed under one key.
    pub bytes: u64,
    /// Records sealed under one key.
    pub records: u64,
    /// Time a key is used for; checked when a record is sealed.
    pub interval: Duration,
}

impl Default for RekeyPolicy {
    /// 1 GiB, 2^24 records or 120 s (WireGuard's interval), whichever comes first.
    fn default() -> Self {
        Self {
            bytes: 1 << 30,
            records: 1 << 24,
            interval: Duration::from_secs(120),
        }
    }
}

/// Why incoming records were refused. Each one closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record failed authentication: tampered with, replayed, reordered or forged.
    #[error("record {counter} failed authentication (tampered, replayed or reordered)")]
    Auth {
        /// The receiver's record counter under its current key.
        counter: u64,
    },
    /// A record header announced an impossible length.
    #[error("record length {0} is out of range")]
    Length(usize),
    /// A record header had an unknown kind.
    #[error("unknown record kind {0}")]
    Kind(u8),
}

/// Seals outgoing plaintext into records and rekeys by policy.
#[derive(Debug)]
pub struct Sealer {
    cipher: CipherState,
    policy: RekeyPolicy,
    bytes_under_key: u64,
    keyed_at: Instant,
    rekeys: u64,
}

impl Sealer {
    /// A sealer with a fresh key, its clock starting at `now`.
    pub fn new(cipher: CipherState, policy: RekeyPolicy, now: Instant) -> Self {
        Self {
            cipher,
            policy,
            bytes_under_key: 0,
            keyed_at: now,
            rekeys: 0,
        }
    }

    /// Encrypts `buf` in place as consecutive records of the given `sizes` (each at most
    /// [`MAX_RECORD_PLAINTEXT`], summing to `buf.len()`), pushing each record's header and
    /// tag onto `parts` (cleared first). On the wire record `i` is `parts[i].header`, the
    /// `i`-th slice of `buf`, `parts[i].tag`.
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        sizes: &[usize],
        parts: &mut Vec<SealedParts>,
        now: Instant,
    ) {
        debug_assert_eq!(sizes.iter().sum::<usize>(), buf.len());
        parts.clear();
        let mut rest = buf;
        for &size in sizes {
            let (chunk, tail) = rest.split_at_mut(size.min(MAX_RECORD_PLAINTEXT));
            rest = tail;
            self.bytes_under_key += chunk.len() as u64;
            let last_under_key = self.bytes_under_key >= self.policy.bytes
                || self.cipher.counter() + 1 >= self.policy.records
                || now.saturating_duration_since(self.keyed_at) >= self.policy.interval;
            let mut header = [0u8; RECORD_HEADER];
            header[..4].copy_from_slice(&((chunk.len() + TAG_LEN) as u32).to_le_bytes());
            header[4] = if last_under_key {
                KIND_DATA_THEN_REKEY
            } else {
                KIND_DATA
            };
            let tag = self.cipher.seal(&header, chunk);
            parts.push(SealedParts { header, tag });
            if last_under_key {
                self.cipher.rekey();
                self.bytes_under_key = 0;
                self.keyed_at = now;
                self.rekeys += 1;
            }
        }
    }

    /// Appends `plaintext` to `out` as complete records of up to [`RECORD_TARGET`] bytes
    /// (a copying convenience around [`seal_in_place`](Self::seal_in_place)).
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut, now: Instant) {
        let mut body = plaintext.to_vec();
        let sizes: Vec<usize> = plaintext.chunks(RECORD_TARGET).map(<[u8]>::len).collect();
        let mut parts = Vec::new();
        self.seal_in_place(&mut body, &sizes, &mut parts, now);
        out.reserve(body.len() + parts.len() * (RECORD_HEADER + TAG_LEN));
        let mut at = 0;
        for (size, part) in sizes.iter().zip(&parts) {
            out.extend_from_slice(&part.header);
            out.extend_from_slice(&body[at..at + size]);
            out.extend_from_slice(&part.tag);
            at += size;
        }
    }

    /// Keys replaced so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }
}

/// Opens incoming records into plaintext, following the sender's rekeys.
#[derive(Debug)]
pub struct Opener {
    cipher: CipherState,
    rekeys: u64,
    max_plaintext: usize,
}

impl Opener {
    /// An opener with the peer's sending key, accepting records of up to
    /// [`MAX_RECORD_PLAINTEXT`] bytes of plaintext.
    pub fn new(cipher: CipherState) -> Self {
        Self {
            cipher,
            rekeys: 0,
            max_plaintext: MAX_RECORD_PLAINTEXT,
        }
    }

    /// Refuses, from their header, records of more than `max_plaintext` bytes of plaintext
    /// (at most [`MAX_RECORD_PLAINTEXT`]; see [`record_limit`]).
    pub fn capped(mut self, max_plaintext: usize) -> Self {
        self.max_plaintext = max_plaintext.min(MAX_RECORD_PLAINTEXT);
        self
    }

    /// Bytes still needed in `sealed` to complete the record at its front.
    pub fn bytes_wanted(&self, sealed: &[u8]) -> usize {
        if sealed.len() < RECORD_HEADER {
            return RECORD_HEADER - sealed.len();
        }
        let len = u32::from_le_bytes([sealed[0], sealed[1], sealed[2], sealed[3]]) as usize;
        let len = len.min(self.max_plaintext + TAG_LEN);
        (RECORD_HEADER + len).saturating_sub(sealed.len())
    }

    /// Takes every complete record off the front of `sealed` and appends its plaintext to
    /// `plain`. Lengths are checked before anything is allocated.
    pub fn open(&mut self, sealed: &mut BytesMut, plain: &mut BytesMut) -> Result<(), RecordError> {
        while sealed.len() >= RECORD_HEADER {
            let len = u32::from_le_bytes([sealed[0], sealed[1], sealed[2], sealed[3]]) as usize;
            if !(TAG_LEN..=self.max_plaintext + TAG_LEN).contains(&len) {
                return Err(RecordError::Length(len));
            }
            let kind = sealed[4];
            if kind > KIND_DATA_THEN_REKEY {
                return Err(RecordError::Kind(kind));
            }
            if sealed.len() < RECORD_HEADER + len {
                return Ok(());
            }
            let mut record = sealed.split_to(RECORD_HEADER + len);
            let mut header = [0u8; RECORD_HEADER];
            header.copy_from_slice(&record[..RECORD_HEADER]);
            let counter = self.cipher.counter();
            let n = self
                .cipher
                .open(&header, &mut record[RECORD_HEADER..])
                .map_err(|AuthError| RecordError::Auth { counter })?;
            record.advance(RECORD_HEADER);
            record.truncate(n);
            if plain.is_empty() {
                *plain = record; // the common case: no copy
            } else {
                plain.extend_from_slice(&record);
            }
            if kind == KIND_DATA_THEN_REKEY {
                self.cipher.rekey();
                self.rekeys += 1;
            }
        }
        Ok(())
    }

    /// Keys replaced so far, following the peer.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::cipher::Provider;
    use proptest::prelude::*;

    fn pair(policy: RekeyPolicy) -> (Sealer, Opener, Instant) {
        let now = Instant::now();
        let key = [3u8; 32];
        (
            Sealer::new(CipherState::new(Provider::default(), key), policy, now),
            Opener::new(CipherState::new(Provider::default(), key)),
            now,
        )
    }

    #[test]
    fn a_batch_of_small_frames_is_one_record() {
        let (mut s, mut o, now) = pair(RekeyPolicy::default());
        let batch = vec![1u8; 100 * 70]; // e.g. a hundred 70-byte frames
        let mut parts = Vec::new();
        s.seal_in_place(&mut batch.clone(), &[batch.len()], &mut parts, now);
        assert_eq!(parts.len(), 1);
        let (mut s, _, now) = pair(RekeyPolicy::default());
        let mut wire = BytesMut::new();
        s.seal(&batch, &mut wire, now);
        assert_eq!(wire.len(), batch.len() + RECORD_HEADER + TAG_LEN);
        let mut plain = BytesMut::new();
        o.open(&mut wire, &mut plain).unwrap();
        assert_eq!(&plain[..], &batch[..]);
    }

    #[test]
    fn rekeys_by_bytes_records_and_time_stay_in_step() {
        let policy = RekeyPolicy {
            bytes: 100_000,
            records: 5,
            interval: Duration::from_secs(60),
        };
        let (mut s, mut o, t0) = pair(policy);
        let mut plain = BytesMut::new();
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let msg = vec![i as u8; 30_000 * (1 + i as usize % 3)];
            let now = t0 + Duration::from_secs(u64::from(i) * 7);
            let mut wire = BytesMut::new();
            s.seal(&msg, &mut wire, now);
            o.open(&mut wire, &mut plain).unwrap();
            expected.extend_from_slice(&msg);
        }
        assert_eq!(&plain[..], &expected[..]);
        assert!(s.rekeys() >= 10, "only {} rekeys", s.rekeys());
        assert_eq!(s.rekeys(), o.rekeys());
    }

    #[test]
    fn time_alone_triggers_a_rekey() {
        let policy = RekeyPolicy {
            interval: Duration::from_secs(120),
            ..RekeyPolicy::default()
        };
        let (mut s, _, t0) = pair(policy);
        let mut wire = BytesMut::new();
        s.seal(b"early", &mut wire, t0 + Duration::from_secs(119));
        assert_eq!(s.rekeys(), 0);
        s.seal(b"late", &mut wire, t0 + Duration::from_secs(121));
        assert_eq!(s.rekeys(), 1);
    }

    #[test]
    fn a_flipped_bit_or_replayed_record_fails() {
        let (mut s, mut o, now) = pair(RekeyPolicy::default());
        let mut first = BytesMut::new();
        s.seal(b"one", &mut first, now);
        let replay = first.clone();
        let mut plain = BytesMut::new();
        o.open(&mut first, &mut plain).unwrap();
        assert_eq!(
            o.open(&mut replay.clone(), &mut plain),
            Err(RecordError::Auth { counter: 1 })
        );
        let mut second = BytesMut::new();
        s.seal(b"two", &mut second, now);
        second[RECORD_HEADER] ^= 0x01;
        assert!(matches!(
            o.open(&mut second, &mut plain),
            Err(RecordError::Auth { .. })
        ));
    }

    #[test]
    fn impossible_lengths_are_refused_before_allocating() {
        let (_, mut o, _) = pair(RekeyPolicy::default());
        let mut plain = BytesMut::new();
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0][..]);
        assert_eq!(
            o.open(&mut huge, &mut plain),
            Err(RecordError::Length(u32::MAX as usize))
        );
        let mut tiny = BytesMut::from(&[1, 0, 0, 0, 0][..]);
        assert_eq!(o.open(&mut tiny, &mut plain), Err(RecordError::Length(1)));
        let mut kind = BytesMut::from(&[16, 0, 0, 0, 9][..]);
        assert_eq!(o.open(&mut kind, &mut plain), Err(RecordError::Kind(9)));
    }

    #[test]
    fn the_cap_follows_max_frame_and_refuses_from_the_header() {
        assert_eq!(record_limit(4 * 1024 * 1024), MAX_RECORD_PLAINTEXT);
        assert_eq!(record_limit(64 * 1024), RECORD_TARGET + RECORD_SLACK);
        assert_eq!(
            record_limit(2 * 1024 * 1024),
            2 * 1024 * 1024 + RECORD_SLACK
        );
        assert_eq!(record_limit(64 * 1024 * 1024), MAX_RECORD_PLAINTEXT);
        let (mut s, o, now) = pair(RekeyPolicy::default());
        let mut o = o.capped(record_limit(64 * 1024));
        let cap = record_limit(64 * 1024);
        // A record at the cap opens; one byte over is refused from its 5 header bytes alone.
        let mut body = vec![7u8; cap];
        let mut parts = Vec::new();
        s.seal_in_place(&mut body, &[cap], &mut parts, now);
        let mut wire = BytesMut::from(&parts[0].header[..]);
        wire.extend_from_slice(&body);
        wire.extend_from_slice(&parts[0].tag);
        let mut plain = BytesMut::new();
        o.open(&mut wire, &mut plain).unwrap();
        assert_eq!(plain.len(), cap);
        let over = ((cap + 1 + TAG_LEN) as u32).to_le_bytes();
        let mut header = BytesMut::from(&[over[0], over[1], over[2], over[3], 0][..]);
        assert_eq!(
            o.open(&mut header, &mut plain),
            Err(RecordError::Length(cap + 1 + TAG_LEN))
        );
        assert_eq!(o.bytes_wanted(&header), RECORD_HEADER + cap + TAG_LEN - 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_split_of_the_wire_gives_back_the_stream(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1_500_000), 1..4),
            cut in 0usize..1_000_000,
        ) {
            let policy = RekeyPolicy { bytes: 700_000, ..RekeyPolicy::default() };
            let (mut s, mut o, now) = pair(policy);
            let mut wire = BytesMut::new();
            for m in &msgs { s.seal(m, &mut wire, now); }
            let cut = cut.min(wire.len());
            let mut sealed = BytesMut::from(&wire[..cut]);
            let mut plain = BytesMut::new();
            o.open(&mut sealed, &mut plain).unwrap();
            sealed.extend_from_slice(&wire[cut..]);
            o.open(&mut sealed, &mut plain).unwrap();
            prop_assert!(sealed.is_empty());
            prop_assert_eq!(&plain[..], &msgs.concat()[..]);
        }
    }
}
