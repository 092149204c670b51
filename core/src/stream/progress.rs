//! How far a transfer has come, readable from any task while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes done and expected of one transfer, readable from any task while it runs.
/// Cheap to clone; all clones see the same transfer.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<ProgressInner>);

#[derive(Debug, Default)]
struct ProgressInner {
    done: AtomicU64,
    /// `u64::MAX` while unknown.
    total: AtomicU64,
}

impl Progress {
    pub(super) fn new(total: Option<u64>) -> Self {
        let p = Progress::default();
        p.0.total
            .store(total.unwrap_or(u64::MAX), Ordering::Relaxed);
        p
    }

    /// Bytes sent or received so far.
    pub fn done(&self) -> u64 {
        self.0.done.load(Ordering::Relaxed)
    }

    /// Bytes the transfer carries in all, when the sender said.
    pub fn total(&self) -> Option<u64> {
        match self.0.total.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    /// Counts `n` more bytes done; returns the new total done.
    pub(super) fn advance(&self, n: u64) -> u64 {
        self.0.done.fetch_add(n, Ordering::Relaxed) + n
    }
}

/// A progress callback: bytes done, bytes in all (if known).
pub(super) type OnProgress = Box<dyn FnMut(u64, Option<u64>) + Send>;
