//! Per-frame payload codecs: compression negotiated in the handshake (DataSnap's
//! "interceptor"), and the [`CompressionCodec`] trait for codecs of your own.
//!
//! Both ends list the codecs they offer in [`Config::compression`](crate::Config::compression),
//! in order of preference. Right after the preambles they exchange the lists (before the
//! Noise handshake, whose prologue then covers them, so a tampered list fails the
//! handshake) and both pick the **first codec in the client's list that the server also
//! offers**, or none. From then on each side compresses the payloads of frames at or above
//! its [`Compression::threshold`] with that codec (when that makes them smaller), marks
//! them with [`FLAG_COMPRESSED`](crate::frame::FLAG_COMPRESSED), and the receiver decodes
//! them, bounded by its `max_frame`, before anything else sees the frame. Compression comes
//! before encryption: frames are compressed, then sealed in records. `docs/PROTOCOL.md`
//! (section 2a) has the bytes.
//!
//! Compression is **off by default**: [`Compression::default`] offers nothing, and then the
//! handshake is byte for byte what it was before codecs existed. Turn it on on both ends:
//!
//! ```
//! let mut config = zserver_core::Config::default();
//! config.compression = zserver_core::Compression::lz4();
//! ```
//!
//! Compressing secrets next to data an attacker chooses, on an encrypted link, can leak the
//! secrets through the compressed length (the CRIME/BREACH family): keep compression off for
//! such traffic.

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// Default [`Compression::threshold`]: payloads of 1 KiB or more are compressed.
pub const DEFAULT_THRESHOLD: usize = 1024;

/// Wire id of the built-in [`Lz4`] codec.
pub const LZ4_ID: u8 = 1;

/// Wire id of the Zstandard codec (`Zstd`, with the `zstd` cargo feature).
pub const ZSTD_ID: u8 = 2;

/// A payload codec, negotiated per connection by its [`id`](CompressionCodec::id).
///
/// Ids are one byte; 0 means "no codec" and cannot be used. 1 is the built-in [`Lz4`],
/// 2 Zstandard (`zstd` feature); 3..=127 are reserved for codecs zserver may add; **use
/// 128..=255 for your own**. Both ends must mean the same codec by an id.
///
/// ```
/// use zserver_core::{CompressionCodec, Error};
///
/// /// Run-length encoding: (count, byte) pairs.
/// struct Rle;
///
/// impl CompressionCodec for Rle {
///     fn id(&self) -> u8 { 200 }
///     fn name(&self) -> &'static str { "rle" }
///     fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
///         for run in input.chunk_by(|a, b| a == b) {
///             for piece in run.chunks(255) {
///                 out.extend_from_slice(&[piece.len() as u8, piece[0]]);
///             }
///         }
///         Ok(())
///     }
///     fn decode(&self, input: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
///         for pair in input.chunks(2) {
///             let &[n, byte] = pair else { return Err(Error::Compression("odd length".into())) };
///             if out.len() + n as usize > max_len {
///                 return Err(Error::Compression("decodes past the limit".into()));
///             }
///             out.resize(out.len() + n as usize, byte);
///         }
///         Ok(())
///     }
/// }
///
/// let mut config = zserver_core::Config::default();
/// config.compression = zserver_core::Compression::off().with(Rle);
/// ```
pub trait CompressionCodec: Send + Sync + 'static {
    /// The codec's wire id (1..=255; see the trait's documentation for the ranges).
    fn id(&self) -> u8;

    /// A short name, for logs and errors.
    fn name(&self) -> &'static str;

    /// Appends the encoded form of `input` to `out` (which is empty when zserver calls it).
    /// If the result is not smaller than `input`, zserver sends `input` as it is; an error
    /// also makes it send `input` uncompressed.
    fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error>;

    /// Appends the decoded form of `input` to `out` (empty when zserver calls it).
    ///
    /// `input` comes from the peer and may be hostile. The decoded length MUST stay within
    /// `max_len` (the connection's `max_frame`): return an error as soon as it would pass
    /// it, before allocating for it, so that a decompression bomb costs at most `max_len`
    /// bytes. Any error closes the connection (a protocol error).
    fn decode(&self, input: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error>;
}

/// The built-in LZ4 codec (id [`LZ4_ID`]), using the pure-Rust `lz4_flex` crate.
///
/// Encoded form: the decoded length as a u32 little-endian, then one LZ4 block (the LZ4
/// block format, not the frame format). The decoder checks that length against `max_len`
/// before allocating, and that the block decodes to exactly that many bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lz4;

impl CompressionCodec for Lz4 {
    fn id(&self) -> u8 {
        LZ4_ID
    }

    fn name(&self) -> &'static str {
        "lz4"
    }

    fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let len = u32::try_from(input.len())
            .map_err(|_| Error::Compression("lz4: input over 4 GiB".into()))?;
        let start = out.len();
        out.extend_from_slice(&len.to_le_bytes());
        out.resize(
            start + 4 + lz4_flex::block::get_maximum_output_size(input.len()),
            0,
        );
        match lz4_flex::block::compress_into(input, &mut out[start + 4..]) {
            Ok(n) => {
                out.truncate(start + 4 + n);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(Error::Compression(format!("lz4: {e}")))
            }
        }
    }

    fn decode(&self, input: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let Some((len, block)) = input.split_first_chunk::<4>() else {
            return Err(Error::Compression(
                "lz4: shorter than its length prefix".into(),
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > max_len {
            return Err(Error::Compression(format!(
                "lz4: decodes to {len} bytes, over the limit of {max_len}"
            )));
        }
        let start = out.len();
        out.resize(start + len, 0);
        match lz4_flex::block::decompress_into(block, &mut out[start..]) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => {
                out.truncate(start);
                Err(Error::Compression(format!(
                    "lz4: announced {len} bytes, decoded {n}"
                )))
            }
            Err(e) => {
                out.truncate(start);
                Err(Error::Compression(format!("lz4: {e}")))
            }
        }
    }
}

/// The Zstandard codec (id [`ZSTD_ID`]), through the `zstd` crate (the C library), at
/// its default level. Only with the `zstd` cargo feature.
///
/// Encoded form: one Zstandard frame that records its content size. The decoder reads
/// that size and checks it against `max_len` before allocating; a frame without it, or
/// data that decodes to another size, is refused.
#[cfg(feature = "zstd")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Zstd;

#[cfg(feature = "zstd")]
impl CompressionCodec for Zstd {
    fn id(&self) -> u8 {
        ZSTD_ID
    }

    fn name(&self) -> &'static str {
        "zstd"
    }

    fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let packed =
            zstd::bulk::compress(input, 0).map_err(|e| Error::Compression(format!("zstd: {e}")))?;
        out.extend_from_slice(&packed);
        Ok(())
    }

    fn decode(&self, input: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        let len = match zstd::zstd_safe::get_frame_content_size(input) {
            Ok(Some(len)) => len,
            Ok(None) => {
                return Err(Error::Compression(
                    "zstd: frame without a content size".into(),
                ))
            }
            Err(_) => return Err(Error::Compression("zstd: not a zstd frame".into())),
        };
        if len > max_len as u64 {
            return Err(Error::Compression(format!(
                "zstd: decodes to {len} bytes, over the limit of {max_len}"
            )));
        }
        let len = len as usize;
        let start = out.len();
        out.resize(start + len, 0);
        match zstd::bulk::decompress_to_buffer(input, &mut out[start..]) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => {
                out.truncate(start);
                Err(Error::Compression(format!(
                    "zstd: announced {len} bytes, decoded {n}"
                )))
            }
            Err(e) => {
                out.truncate(start);
                Err(Error::Compression(format!("zstd: {e}")))
            }
        }
    }
}

/// Which codecs this side offers, in order of preference, and from what payload size it
/// compresses. Part of [`Config`](crate::Config); off by default.
#[derive(Clone)]
pub struct Compression {
    codecs: Vec<Arc<dyn CompressionCodec>>,
    /// Payloads of at least this many bytes are compressed (when the codec makes them
    /// smaller); smaller ones are sent as they are. Each side applies its own threshold to
    /// what it sends. Default [`DEFAULT_THRESHOLD`] (1 KiB).
    pub threshold: usize,
}

impl Default for Compression {
    /// Off: no codec offered.
    fn default() -> Self {
        Self::off()
    }
}

impl fmt::Debug for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<(u8, &str)> = self.codecs.iter().map(|c| (c.id(), c.name())).collect();
        f.debug_struct("Compression")
            .field("codecs", &names)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl Compression {
    /// No codec offered: nothing is ever compressed (the default).
    pub fn off() -> Self {
        Self {
            codecs: Vec::new(),
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// Offers the built-in [`Lz4`] codec, with the default threshold.
    pub fn lz4() -> Self {
        Self::off().with(Lz4)
    }

    /// Offers [`Zstd`] then [`Lz4`], with the default threshold (`zstd` cargo feature).
    #[cfg(feature = "zstd")]
    pub fn zstd() -> Self {
        Self::off().with(Zstd).with(Lz4)
    }

    /// Adds `codec` to the offer, after (less preferred than) those already in it.
    ///
    /// # Panics
    /// If the codec's id is 0, or another codec in the offer has the same id.
    pub fn with(self, codec: impl CompressionCodec) -> Self {
        self.with_arc(Arc::new(codec))
    }

    /// Like [`with`](Self::with), for a codec already shared.
    ///
    /// # Panics
    /// If the codec's id is 0, or another codec in the offer has the same id.
    pub fn with_arc(mut self, codec: Arc<dyn CompressionCodec>) -> Self {
        let id = codec.id();
        assert!(id != 0, "codec `{}`: id 0 means no codec", codec.name());
        assert!(
            self.find(id).is_none(),
            "codec `{}`: id {id} is already offered",
            codec.name()
        );
        self.codecs.push(codec);
        self
    }

    /// Sets the [`threshold`](Self::threshold).
    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The codecs offered, most preferred first.
    pub fn codecs(&self) -> &[Arc<dyn CompressionCodec>] {
        &self.codecs
    }

    /// Whether no codec is offered.
    pub fn is_off(&self) -> bool {
        self.codecs.is_empty()
    }

    /// The offered codec with wire id `id`.
    pub fn find(&self, id: u8) -> Option<&Arc<dyn CompressionCodec>> {
        self.codecs.iter().find(|c| c.id() == id)
    }

    /// The offer message sent in the handshake: a count, then the ids.
    pub(crate) fn offer(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(1 + self.codecs.len());
        msg.push(self.codecs.len() as u8);
        msg.extend(self.codecs.iter().map(|c| c.id()));
        msg
    }
}

/// The negotiated codec id: the first id in the client's list, other than 0, that the
/// server's list holds too. Both ends compute it from the same two lists.
pub(crate) fn choose(client_ids: &[u8], server_ids: &[u8]) -> Option<u8> {
    client_ids
        .iter()
        .copied()
        .find(|id| *id != 0 && server_ids.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Xor(u8);

    impl CompressionCodec for Xor {
        fn id(&self) -> u8 {
            self.0
        }
        fn name(&self) -> &'static str {
            "xor"
        }
        fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
            out.extend(input.iter().map(|b| b ^ 0x5a));
            Ok(())
        }
        fn decode(&self, input: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
            if input.len() > max_len {
                return Err(Error::Compression("too long".into()));
            }
            out.extend(input.iter().map(|b| b ^ 0x5a));
            Ok(())
        }
    }

    #[test]
    fn lz4_round_trips_and_shrinks_repetitive_data() {
        let input: Vec<u8> = b"hello zserver "
            .iter()
            .cycle()
            .take(100_000)
            .copied()
            .collect();
        let mut packed = Vec::new();
        Lz4.encode(&input, &mut packed).unwrap();
        assert!(packed.len() < input.len() / 10, "{} bytes", packed.len());
        let mut out = Vec::new();
        Lz4.decode(&packed, input.len(), &mut out).unwrap();
        assert_eq!(out, input);
        for empty_or_tiny in [&b""[..], b"x", b"abc"] {
            let (mut p, mut o) = (Vec::new(), Vec::new());
            Lz4.encode(empty_or_tiny, &mut p).unwrap();
            Lz4.decode(&p, 10, &mut o).unwrap();
            assert_eq!(o, empty_or_tiny);
        }
    }

    #[test]
    fn lz4_encoding_matches_protocol_doc() {
        // docs/PROTOCOL.md, section 2a: length prefix, then a literal-only block.
        let mut packed = Vec::new();
        Lz4.encode(b"hello", &mut packed).unwrap();
        assert_eq!(packed, b"\x05\x00\x00\x00\x50hello");
    }

    #[test]
    fn lz4_refuses_a_bomb_before_allocating() {
        let input = vec![0u8; 1 << 20];
        let mut packed = Vec::new();
        Lz4.encode(&input, &mut packed).unwrap();
        let mut out = Vec::new();
        let err = Lz4.decode(&packed, (1 << 20) - 1, &mut out).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert_eq!(out.capacity(), 0, "nothing allocated");
        // A forged length prefix of 4 GiB - 1 with a tiny block.
        let mut forged = u32::MAX.to_le_bytes().to_vec();
        forged.extend_from_slice(&[0x10, 0]);
        assert!(Lz4.decode(&forged, 1 << 22, &mut out).is_err());
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn lz4_refuses_garbage_and_lies() {
        let mut out = Vec::new();
        assert!(Lz4.decode(b"", 100, &mut out).is_err());
        assert!(Lz4.decode(b"\x05\x00", 100, &mut out).is_err());
        assert!(Lz4
            .decode(&[10, 0, 0, 0, 0xff, 0xff, 0xff], 100, &mut out)
            .is_err());
        // A valid block that decodes to fewer bytes than announced.
        let mut packed = Vec::new();
        Lz4.encode(b"abcdefgh", &mut packed).unwrap();
        packed[0] = 9;
        assert!(Lz4.decode(&packed, 100, &mut out).is_err());
        assert!(out.is_empty());
        proptest_like_garbage();
    }

    /// Random bytes never panic the decoder and never decode past the limit.
    fn proptest_like_garbage() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..64);
            let mut input: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if input.len() >= 4 {
                input[..4].copy_from_slice(&(rng.u32(0..4096)).to_le_bytes());
            }
            let mut out = Vec::new();
            if Lz4.decode(&input, 1000, &mut out).is_ok() {
                assert!(out.len() <= 1000);
            }
        }
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trips_and_is_bounded() {
        let input: Vec<u8> = b"zstd zserver "
            .iter()
            .cycle()
            .take(200_000)
            .copied()
            .collect();
        let mut packed = Vec::new();
        Zstd.encode(&input, &mut packed).unwrap();
        assert!(packed.len() < input.len() / 20, "{} bytes", packed.len());
        let mut out = Vec::new();
        Zstd.decode(&packed, input.len(), &mut out).unwrap();
        assert_eq!(out, input);
        out.clear();
        let err = Zstd.decode(&packed, input.len() - 1, &mut out).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert_eq!(
            out.capacity(),
            input.len(),
            "only the first, successful decode allocated"
        );
        // Two frames back to back: the second would write past the announced size.
        let mut twice = packed.clone();
        twice.extend_from_slice(&packed);
        let mut out = Vec::new();
        assert!(Zstd.decode(&twice, 1 << 22, &mut out).is_err());
        assert!(Zstd.decode(b"garbage!", 1 << 22, &mut out).is_err());
        assert!(Zstd.decode(b"", 1 << 22, &mut out).is_err());
        assert!(out.is_empty());
        assert_eq!(Compression::zstd().offer(), vec![2, ZSTD_ID, LZ4_ID]);
    }

    #[test]
    fn choice_is_the_clients_first_that_the_server_has() {
        assert_eq!(choose(&[1, 200], &[200, 1]), Some(1));
        assert_eq!(choose(&[200, 1], &[1, 200]), Some(200));
        assert_eq!(choose(&[3, 200], &[1, 200]), Some(200));
        assert_eq!(choose(&[1], &[]), None);
        assert_eq!(choose(&[], &[1]), None);
        assert_eq!(choose(&[0, 1], &[0, 1]), Some(1));
    }

    #[test]
    fn offer_lists_ids_in_order() {
        let c = Compression::lz4().with(Xor(200));
        assert_eq!(c.offer(), vec![2, 1, 200]);
        assert_eq!(Compression::off().offer(), vec![0]);
        assert!(Compression::default().is_off());
        assert_eq!(c.find(200).unwrap().name(), "xor");
        assert_eq!(
            format!("{c:?}"),
            "Compression { codecs: [(1, \"lz4\"), (200, \"xor\")], threshold: 1024 }"
        );
    }

    #[test]
    #[should_panic(expected = "already offered")]
    fn duplicate_ids_are_refused() {
        let _ = Compression::lz4().with(Xor(1));
    }

    #[test]
    #[should_panic(expected = "id 0")]
    fn id_zero_is_refused() {
        let _ = Compression::off().with(Xor(0));
    }
}
