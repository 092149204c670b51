//! A generated stream for transfer tests: pseudo-random bytes that never exist in memory
//! all at once, hashed and counted as they are produced.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_lite::io::AsyncRead;

/// A reader of `len` pseudo-random bytes that never exist in memory all at once. It hashes
/// what it yields, counts it, and notes when it is dropped.
pub(crate) struct Generated {
    left: u64,
    state: u64,
    produced: Arc<AtomicU64>,
    hasher: Arc<Mutex<blake3::Hasher>>,
    dropped: Arc<AtomicBool>,
}

#[derive(Clone, Default)]
pub(crate) struct Probe {
    pub produced: Arc<AtomicU64>,
    pub hasher: Arc<Mutex<blake3::Hasher>>,
    pub dropped: Arc<AtomicBool>,
}

impl Probe {
    pub(crate) fn reader(&self, len: u64, seed: u64) -> Generated {
        Generated {
            left: len,
            state: seed | 1,
            produced: self.produced.clone(),
            hasher: self.hasher.clone(),
            dropped: self.dropped.clone(),
        }
    }

    pub(crate) fn hash(&self) -> [u8; 32] {
        *self.hasher.lock().unwrap().finalize().as_bytes()
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for word in buf[..n].chunks_mut(8) {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes()[..word.len()]);
        }
        self.left -= n as u64;
        self.hasher.lock().unwrap().update(&buf[..n]);
        self.produced.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }
}

impl Drop for Generated {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Release);
    }
}
