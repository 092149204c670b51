//! Compression of outgoing payloads with the codec negotiated in the handshake (the
//! receiving side is [`Proto`](super::Proto)'s, which decompresses under `max_frame`).
//!
//! Packing is kept apart from the protocol state so that a handle compresses before it
//! takes the connection's lock: many senders on one connection compress in parallel.

use std::sync::Arc;

use crate::compression::CompressionCodec;
use crate::error::Error;
use crate::frame::{self, EncodeError, Header, FLAG_COMPRESSED};

/// How a connection compresses what it sends: its codec (if one was negotiated), the
/// payload size from which it is tried, and the frame limit.
#[derive(Clone)]
pub(crate) struct Packer {
    codec: Option<Arc<dyn CompressionCodec>>,
    threshold: usize,
    max_frame: usize,
}

/// A frame's header and payload as they go on the wire: compressed (and flagged so) when
/// that made the payload smaller.
pub(crate) struct Packed<'a> {
    /// The header, with [`FLAG_COMPRESSED`] when the payload is compressed.
    pub(crate) header: Header<'a>,
    /// The payload to queue.
    pub(crate) payload: &'a [u8],
    /// The payload's size before compression, when it was compressed.
    pub(crate) raw_len: Option<usize>,
}

impl<'a> Packed<'a> {
    /// A frame sent as it is, not compressed.
    pub(crate) fn plain(header: Header<'a>, payload: &'a [u8]) -> Self {
        Self {
            header,
            payload,
            raw_len: None,
        }
    }
}

impl Packer {
    /// Compresses payloads of `threshold` bytes or more with `codec`, if any.
    pub(crate) fn new(
        codec: Option<Arc<dyn CompressionCodec>>,
        threshold: usize,
        max_frame: usize,
    ) -> Self {
        Self {
            codec,
            threshold,
            max_frame,
        }
    }

    /// The codec's name, if one was negotiated.
    pub(crate) fn codec_name(&self) -> Option<&'static str> {
        self.codec.as_ref().map(|c| c.name())
    }

    /// Packs one frame, compressing into `scratch` when a codec is negotiated, the payload
    /// reaches the threshold and compression makes it smaller (a codec that fails sends it
    /// as it is). The frame must fit `max_frame` uncompressed all the same.
    pub(crate) fn pack<'a>(
        &self,
        header: &Header<'a>,
        payload: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<Packed<'a>, Error> {
        let plain = Packed::plain(*header, payload);
        let codec = match &self.codec {
            Some(codec) if !payload.is_empty() && payload.len() >= self.threshold => codec,
            _ => return Ok(plain),
        };
        let len = frame::header_len(header) + payload.len();
        if len > self.max_frame {
            let max = self.max_frame;
            return Err(EncodeError::TooLarge { len, max }.into());
        }
        match codec.encode(payload, scratch) {
            Ok(()) if scratch.len() < payload.len() => Ok(Packed {
                header: Header {
                    flags: header.flags | FLAG_COMPRESSED,
                    ..*header
                },
                payload: &scratch[..],
                raw_len: Some(payload.len()),
            }),
            Ok(()) => Ok(plain),
            Err(e) => {
                tracing::debug!(codec = codec.name(), error = %e, "sending uncompressed");
                Ok(plain)
            }
        }
    }
}
