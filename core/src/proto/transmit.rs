//! What the state machine hands its driver to write: one batch of frames, sealed into
//! records in place when the link is encrypted.

use std::io::IoSlice;

use bytes::BytesMut;

use crate::secure::cipher::TAG_LEN;
use crate::secure::record::{SealedParts, RECORD_HEADER};

/// Sealed batches up to this size are best copied into one buffer and written at once.
const SMALL_WRITE: usize = 64 * 1024;

/// Buffers larger than this (and than twice the batch just written) are freed after a
/// write instead of kept for the next batch.
const KEEP_CAPACITY: usize = 64 * 1024;

/// One batch to write, filled by [`Proto::poll_transmit`](super::Proto::poll_transmit).
/// Reused from batch to batch: an idle connection's is empty and holds no heap buffer.
#[derive(Default)]
pub(crate) struct Transmit {
    /// The frames (plaintext, or ciphertext when sealed).
    pub(super) batch: BytesMut,
    /// Plaintext size of each record (empty on a plain link).
    pub(super) sizes: Vec<usize>,
    /// Header and tag of each record, around its slice of `batch`.
    pub(super) parts: Vec<SealedParts>,
    contiguous: Vec<u8>,
}

impl Transmit {
    /// Whether there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Bytes on the wire.
    pub(crate) fn len(&self) -> usize {
        self.batch.len() + self.parts.len() * (RECORD_HEADER + TAG_LEN)
    }

    /// The batch as one contiguous buffer when that is cheap (plain, or sealed and at most
    /// [`SMALL_WRITE`]): the copy costs less than several syscalls. `None` for a large
    /// sealed batch: write [`slices`](Self::slices) instead.
    pub(crate) fn contiguous(&mut self) -> Option<&[u8]> {
        if self.parts.is_empty() {
            return Some(&self.batch);
        }
        if self.len() > SMALL_WRITE {
            return None;
        }
        self.contiguous.clear();
        let mut rest = &self.batch[..];
        for (size, part) in self.sizes.iter().zip(&self.parts) {
            let (chunk, tail) = rest.split_at(*size);
            rest = tail;
            self.contiguous.extend_from_slice(&part.header);
            self.contiguous.extend_from_slice(chunk);
            self.contiguous.extend_from_slice(&part.tag);
        }
        Some(&self.contiguous)
    }

    /// The batch as slices for one vectored write: header, ciphertext and tag per record.
    pub(crate) fn slices(&self) -> Vec<IoSlice<'_>> {
        if self.parts.is_empty() {
            return vec![IoSlice::new(&self.batch)];
        }
        let mut slices = Vec::with_capacity(self.parts.len() * 3);
        let mut rest = &self.batch[..];
        for (size, part) in self.sizes.iter().zip(&self.parts) {
            let (chunk, tail) = rest.split_at(*size);
            rest = tail;
            slices.push(IoSlice::new(&part.header));
            slices.push(IoSlice::new(chunk));
            slices.push(IoSlice::new(&part.tag));
        }
        slices
    }

    /// Forgets the written batch; frees the buffers when `idle`, or when larger than
    /// [`KEEP_CAPACITY`] and than twice the batch just written (a steady stream of large
    /// batches keeps its buffer instead of growing a fresh one, page by page, for each).
    pub(crate) fn clear(&mut self, idle: bool) {
        let written = self.batch.len();
        self.batch.clear();
        if idle || self.batch.capacity() > KEEP_CAPACITY.max(2 * written) {
            self.batch = BytesMut::new();
            self.contiguous = Vec::new();
        } else {
            self.contiguous.clear();
        }
    }

    /// Appends the batch as wire bytes to `out` (for the in-memory pair).
    #[cfg(test)]
    pub(crate) fn drain_into(&mut self, out: &mut Vec<u8>) {
        if let Some(bytes) = self.contiguous() {
            out.extend_from_slice(bytes);
        } else {
            for slice in self.slices() {
                out.extend_from_slice(&slice);
            }
        }
        self.clear(false);
    }
}
