//! Wire framing: the connection preamble and length-prefixed frames with a postcard header.
//!
//! This module is sans-IO: it turns bytes into [`Frame`]s and frames into bytes, and never
//! touches a socket. `docs/PROTOCOL.md` describes the same format to the byte.
//!
//! ```text
//! frame   = length:u32-le  header:postcard  payload:bytes
//! length  = byte count of header + payload (not counting the 4 length bytes)
//! header  = kind:varint  flags:u8  id:varint-u64  command:varint-len + utf8
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The four magic bytes that open every connection, in both directions.
pub const MAGIC: [u8; 4] = *b"ZSRV";

/// The protocol version this build speaks; sent in the preamble.
pub const PROTOCOL_VERSION: u16 = 1;

/// Length of the preamble: magic, version (u16 little-endian), security mode (u8: 0 plain,
/// 1 Noise XX), flags (u8: [`PREAMBLE_CODECS`]; other bits zero).
pub const PREAMBLE_LEN: usize = 8;

/// Preamble flag (byte 7, bit 0): this side offers payload codecs; when both sides set it,
/// each sends its codec list right after the preamble (`docs/PROTOCOL.md`, section 2a).
pub const PREAMBLE_CODECS: u8 = 0x01;

/// Default largest frame (header + payload) a peer may send: 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Longest command name, in bytes of UTF-8.
pub const MAX_COMMAND_LEN: usize = 255;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// What a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A request that wants a reply with the same id. Wire value 0.
    Call,
    /// A one-way message: no reply is ever sent. Wire value 1.
    Send,
    /// A successful reply to the call with the same id. Wire value 2.
    Reply,
    /// A failed reply; the payload is a UTF-8 message, the command field the error code. Wire value 3.
    Error,
    /// A liveness probe; the peer answers with `Pong` and the same id. Wire value 4.
    Ping,
    /// The answer to `Ping`. Wire value 5.
    Pong,
    /// The sender accepts no new calls and will close once its calls in flight finish. Wire value 6.
    GoAway,
    /// A piece of a stream; `id` and the direction flag name the stream. Wire value 7.
    Data,
    /// The end of a stream; the payload is the BLAKE3 hash of all its bytes. Wire value 8.
    End,
    /// The stream's sender gives up; the payload is a UTF-8 reason. Wire value 9.
    Abort,
    /// The stream's receiver allows this many more bytes (u64 little-endian). Wire value 10.
    Credit,
    /// The stream's receiver wants no more of it. Wire value 11.
    Stop,
}

/// Flag on a `Call`: a stream from the caller follows (an upload). On stream frames
/// (`Data`, `End`, `Abort`, `Credit`, `Stop`): the stream is the upload of call `id`.
pub const FLAG_UPLOAD: u8 = 0x01;

/// Flag on a `Call`: the caller wants a stream back (a download). On a `Reply`: the stream
/// follows. On stream frames: the stream is the download of call `id`.
pub const FLAG_DOWNLOAD: u8 = 0x02;

/// Flag on any frame: the payload is encoded with the codec negotiated in the handshake
/// ([`crate::compression`]); the receiver decodes it before acting on the frame. A frame with
/// this flag on a connection without a codec is a protocol error.
pub const FLAG_COMPRESSED: u8 = 0x80;

/// The postcard-encoded header at the front of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header<'a> {
    /// What the frame is for.
    pub kind: Kind,
    /// [`FLAG_UPLOAD`] / [`FLAG_DOWNLOAD`] on calls, replies and stream frames,
    /// [`FLAG_COMPRESSED`] on any frame; other bits are reserved and zero.
    pub flags: u8,
    /// Request id pairing a `Call` with its `Reply`/`Error` (0 for `Send` and `GoAway`).
    pub id: u64,
    /// Command name for `Call`/`Send`; the error code (as text) for `Error`; empty otherwise.
    #[serde(borrow)]
    pub command: &'a str,
}

/// A decoded frame. The command name and payload share the read buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is for.
    pub kind: Kind,
    /// Reserved flag bits.
    pub flags: u8,
    /// Request id.
    pub id: u64,
    command: Bytes,
    /// The frame's payload.
    pub payload: Bytes,
}

impl Frame {
    /// The command name (or error code text); validated as UTF-8 when decoded.
    pub fn command(&self) -> &str {
        std::str::from_utf8(&self.command).unwrap_or_default()
    }
}

/// Why bytes from a peer could not be read as a frame. Each one closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The header could not be decoded (garbage, unknown kind, bad UTF-8, truncated).
    #[error("malformed frame header: {0}")]
    BadHeader(String),
    /// The preamble was not `ZSRV` or named a version this build does not speak.
    #[error("bad preamble: {0}")]
    BadPreamble(String),
}

/// Why a frame could not be encoded. The frame is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The command name is longer than [`MAX_COMMAND_LEN`].
    #[error("command name of {0} bytes exceeds {MAX_COMMAND_LEN} bytes")]
    CommandTooLong(usize),
    /// Header and payload together exceed the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Header plus payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
}

/// The preamble this side sends first, announcing its security `mode` (flags zero).
pub fn preamble(mode: u8) -> [u8; PREAMBLE_LEN] {
    preamble_with(mode, 0)
}

/// The preamble with security `mode` and preamble `flags` (such as [`PREAMBLE_CODECS`]).
pub fn preamble_with(mode: u8, flags: u8) -> [u8; PREAMBLE_LEN] {
    let v = PROTOCOL_VERSION.to_le_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], mode, flags,
    ]
}

/// Checks the peer's preamble; returns its protocol version and security mode.
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<(u16, u8), FrameError> {
    if bytes[..4] != MAGIC {
        return Err(FrameError::BadPreamble(format!(
            "expected magic {:02x?}, got {:02x?}",
            MAGIC,
            &bytes[..4]
        )));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::BadPreamble(format!(
            "peer speaks protocol version {version}, this build speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok((version, bytes[6]))
}

impl Kind {
    /// The kind's wire value (its postcard variant index).
    pub fn wire_value(self) -> u8 {
        match self {
            Kind::Call => 0,
            Kind::Send => 1,
            Kind::Reply => 2,
            Kind::Error => 3,
            Kind::Ping => 4,
            Kind::Pong => 5,
            Kind::GoAway => 6,
            Kind::Data => 7,
            Kind::End => 8,
            Kind::Abort => 9,
            Kind::Credit => 10,
            Kind::Stop => 11,
        }
    }
}

/// Bytes of `n` as a postcard (LEB128) varint.
fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// Size of `header` once encoded (without the length prefix).
pub fn header_len(header: &Header<'_>) -> usize {
    let name = header.command.len();
    1 + 1 + varint_len(header.id) + varint_len(name as u64) + name
}

/// Appends one frame to `out`. Nothing is appended on error.
///
/// The header is written straight into `out` in postcard's encoding (a unit test checks it
/// against `postcard` itself), with no scratch buffer.
pub fn encode(
    out: &mut BytesMut,
    header: &Header<'_>,
    payload: &[u8],
    max_frame: usize,
) -> Result<(), EncodeError> {
    let name = header.command.as_bytes();
    if name.len() > MAX_COMMAND_LEN {
        return Err(EncodeError::CommandTooLong(name.len()));
    }
    let head_len = header_len(header);
    let len = head_len + payload.len();
    if len > max_frame {
        return Err(EncodeError::TooLarge {
            len,
            max: max_frame,
        });
    }
    out.reserve(LENGTH_PREFIX + len);
    out.put_u32_le(len as u32);
    out.put_u8(header.kind.wire_value());
    out.put_u8(header.flags);
    put_varint(out, header.id);
    put_varint(out, name.len() as u64);
    out.put_slice(name);
    out.put_slice(payload);
    Ok(())
}

/// Sizes of records that carry the frames in `batch` (which starts at a frame boundary):
/// whole frames grouped up to `target` bytes, a frame larger than `target` alone in its
/// record, and only a frame larger than `max` cut into pieces of `max`. Appends to `sizes`.
pub fn group_frames(batch: &[u8], target: usize, max: usize, sizes: &mut Vec<usize>) {
    let (mut at, mut open) = (0usize, 0usize);
    while at < batch.len() {
        let frame = match batch.get(at..at + LENGTH_PREFIX) {
            Some(p) => LENGTH_PREFIX + u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize,
            None => batch.len() - at,
        }
        .min(batch.len() - at);
        if open > 0 && open + frame > target {
            sizes.push(open);
            open = 0;
        }
        open += frame;
        at += frame;
        while open > max {
            sizes.push(max);
            open -= max;
        }
    }
    if open > 0 {
        sizes.push(open);
    }
}

/// Splits complete frames off the front of a read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes (header + payload).
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// Bytes still needed before the frame at the front of `buf` is complete (0 if one is).
    /// Lets the reader reserve exactly once for a large frame.
    pub fn bytes_wanted(&self, buf: &[u8]) -> usize {
        if buf.len() < LENGTH_PREFIX {
            return LENGTH_PREFIX - buf.len();
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        (LENGTH_PREFIX + len.min(self.max_frame)).saturating_sub(buf.len())
    }

    /// Takes the next complete frame off `buf`, or returns `Ok(None)` if more bytes are needed.
    /// The length is checked against the limit before anything is allocated.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if buf.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        buf.advance(LENGTH_PREFIX);
        let body = buf.split_to(len).freeze();
        decode_body(body).map(Some)
    }
}

/// Decodes header and payload from one frame body (the bytes after the length prefix).
fn decode_body(body: Bytes) -> Result<Frame, FrameError> {
    let (header, rest) = postcard::take_from_bytes::<Header<'_>>(&body)
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let name_start = header.command.as_ptr() as usize - body.as_ptr() as usize;
    let command = body.slice(name_start..name_start + header.command.len());
    let payload = body.slice(body.len() - rest.len()..);
    Ok(Frame {
        kind: header.kind,
        flags: header.flags,
        id: header.id,
        command,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: Kind, id: u64, command: &str) -> Header<'_> {
        Header {
            kind,
            flags: 0,
            id,
            command,
        }
    }

    #[test]
    fn call_frame_matches_protocol_doc_bytes() {
        let mut out = BytesMut::new();
        encode(&mut out, &header(Kind::Call, 1, "echo"), b"hi", 1024).unwrap();
        // Documented in docs/PROTOCOL.md, "Worked example".
        assert_eq!(
            &out[..],
            &[0x0a, 0, 0, 0, 0x00, 0x00, 0x01, 0x04, b'e', b'c', b'h', b'o', b'h', b'i'][..]
        );
        let mut reply = BytesMut::new();
        encode(&mut reply, &header(Kind::Reply, 1, ""), b"hi", 1024).unwrap();
        assert_eq!(
            &reply[..],
            &[0x06, 0, 0, 0, 0x02, 0x00, 0x01, 0x00, b'h', b'i'][..]
        );
    }

    #[test]
    fn decodes_what_it_encodes_and_waits_for_more() {
        let mut out = BytesMut::new();
        encode(&mut out, &header(Kind::Call, 300, "name"), b"payload", 1024).unwrap();
        let dec = FrameDecoder::new(1024);
        let mut partial = BytesMut::from(&out[..out.len() - 1]);
        assert_eq!(dec.decode(&mut partial).unwrap(), None);
        assert_eq!(dec.bytes_wanted(&partial), 1);
        let frame = dec.decode(&mut out).unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Call);
        assert_eq!(frame.id, 300);
        assert_eq!(frame.command(), "name");
        assert_eq!(&frame.payload[..], b"payload");
        assert!(out.is_empty());
    }

    #[test]
    fn refuses_oversized_length_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1024
            }
        );
    }

    #[test]
    fn refuses_garbage_header_and_unknown_kind() {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 0x7f, 0xff, 0xff][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::BadHeader(_))
        ));
        let mut bad_utf8 = BytesMut::from(&[6u8, 0, 0, 0, 0, 0, 1, 2, 0xff, 0xfe][..]);
        assert!(matches!(
            dec.decode(&mut bad_utf8),
            Err(FrameError::BadHeader(_))
        ));
    }

    #[test]
    fn encode_refuses_long_names_and_large_frames() {
        let mut out = BytesMut::new();
        let long = "x".repeat(MAX_COMMAND_LEN + 1);
        assert_eq!(
            encode(&mut out, &header(Kind::Call, 1, &long), b"", 1 << 20),
            Err(EncodeError::CommandTooLong(MAX_COMMAND_LEN + 1))
        );
        assert!(matches!(
            encode(&mut out, &header(Kind::Call, 1, "a"), &[0; 100], 50),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn records_group_whole_frames() {
        let mut batch = BytesMut::new();
        for size in [10usize, 20, 300, 5] {
            encode(
                &mut batch,
                &header(Kind::Send, 0, "x"),
                &vec![0; size],
                1 << 20,
            )
            .unwrap();
        }
        let lens: Vec<usize> = [10usize, 20, 300, 5]
            .iter()
            .map(|s| 4 + 4 + 1 + s)
            .collect();
        let mut sizes = Vec::new();
        group_frames(&batch, 50, 1000, &mut sizes);
        assert_eq!(sizes, vec![lens[0] + lens[1], lens[2], lens[3]]);
        sizes.clear();
        group_frames(&batch, 50, 100, &mut sizes);
        // The tail of the cut frame shares a record with the small frame after it.
        assert_eq!(
            sizes,
            vec![lens[0] + lens[1], 100, 100, 100, lens[2] - 300 + lens[3]]
        );
        assert_eq!(sizes.iter().sum::<usize>(), batch.len());
    }

    #[test]
    fn preamble_round_trip_and_rejections() {
        assert_eq!(check_preamble(&preamble(0)), Ok((PROTOCOL_VERSION, 0)));
        assert_eq!(check_preamble(&preamble(1)), Ok((PROTOCOL_VERSION, 1)));
        assert!(check_preamble(b"HTTP/1.1").is_err());
        let mut other = preamble(1);
        other[4] = 9;
        assert!(check_preamble(&other).is_err());
    }

    fn kind_strategy() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Call),
            Just(Kind::Send),
            Just(Kind::Reply),
            Just(Kind::Error),
            Just(Kind::Ping),
            Just(Kind::Pong),
            Just(Kind::GoAway),
            Just(Kind::Data),
            Just(Kind::End),
            Just(Kind::Abort),
            Just(Kind::Credit),
            Just(Kind::Stop),
        ]
    }

    proptest! {
        #[test]
        fn any_frames_round_trip_through_any_split(
            frames in proptest::collection::vec(
                (kind_strategy(), any::<u8>(), any::<u64>(), "[a-z.]{0,40}",
                 proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
            cut in 0usize..4000,
        ) {
            let mut wire = BytesMut::new();
            for (kind, flags, id, name, payload) in &frames {
                let h = Header { kind: *kind, flags: *flags, id: *id, command: name };
                encode(&mut wire, &h, payload, 1 << 16).unwrap();
            }
            let dec = FrameDecoder::new(1 << 16);
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = dec.decode(&mut buf).unwrap() { got.push(f); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = dec.decode(&mut buf).unwrap() { got.push(f); }
            prop_assert_eq!(got.len(), frames.len());
            for (f, (kind, flags, id, name, payload)) in got.iter().zip(&frames) {
                prop_assert_eq!(f.kind, *kind);
                prop_assert_eq!(f.flags, *flags);
                prop_assert_eq!(f.id, *id);
                prop_assert_eq!(f.command(), name.as_str());
                prop_assert_eq!(&f.payload[..], &payload[..]);
            }
        }

        #[test]
        fn handwritten_header_is_exactly_postcard(
            kind in kind_strategy(), flags in any::<u8>(), id in any::<u64>(), name in "\\PC{0,60}",
        ) {
            prop_assume!(name.len() <= MAX_COMMAND_LEN);
            let h = Header { kind, flags, id, command: &name };
            let mut ours = BytesMut::new();
            encode(&mut ours, &h, b"", usize::MAX).unwrap();
            let theirs = postcard::to_allocvec(&h).unwrap();
            prop_assert_eq!(&ours[LENGTH_PREFIX..], &theirs[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let dec = FrameDecoder::new(1 << 10);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
