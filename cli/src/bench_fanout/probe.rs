//! What the subscribers of one row count: deliveries, and publish-to-delivery latencies.
//!
//! The clock: every publication carries, in its first 8 bytes, the nanoseconds since
//! [`Probe`]'s base `Instant` at which the publisher made it. The publisher and every
//! subscriber of a row live in the same process (the `bench-fanout-clients` child) and
//! share that one `Instant`, so a subscriber's `now - stamp` is a difference of two
//! readings of the same monotonic clock (`CLOCK_MONOTONIC`): no clock offset to estimate,
//! no wall-clock steps. The server under test sits in another process in between, so the
//! figure is publish call → server → subscriber's handler, across two sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{self, BoxFuture, Either};
use tokio::sync::Notify;

/// Latency buckets: 1 µs wide below [`FINE`] µs, [`COARSE_US`] µs wide above it.
const FINE: usize = 4096;
const COARSE_US: u64 = 256;
const COARSE: usize = 4096;

/// Counters shared by a row's subscribers and its publisher.
pub(crate) struct Probe {
    base: Instant,
    delivered: AtomicU64,
    /// Deliveries the publisher is waiting for (`u64::MAX`: none).
    target: AtomicU64,
    notify: Notify,
    recording: AtomicBool,
    buckets: Vec<AtomicU64>,
}

impl Probe {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            delivered: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
            recording: AtomicBool::new(false),
            buckets: (0..FINE + COARSE).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// A publication of `size` bytes (at least 8) stamped with the time now.
    pub(crate) fn stamp(&self, size: usize) -> Bytes {
        let mut data = vec![0x5Au8; size.max(8)];
        data[..8].copy_from_slice(&self.now_ns().to_le_bytes());
        Bytes::from(data)
    }

    /// Counts one delivery of `data` (a stamped publication), with its latency while
    /// recording.
    pub(crate) fn deliver(&self, data: &[u8]) {
        if self.recording.load(Relaxed) {
            if let Some(stamp) = data.get(..8) {
                let sent = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                let us = self.now_ns().saturating_sub(sent) / 1000;
                self.buckets[bucket(us)].fetch_add(1, Relaxed);
            }
        }
        let n = self.delivered.fetch_add(1, Relaxed) + 1;
        if n >= self.target.load(Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Deliveries so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// Waits until `n` deliveries have been counted, or `timeout` (a sleep) ends; whether
    /// they were.
    pub(crate) async fn wait_for(&self, n: u64, timeout: BoxFuture<'static, ()>) -> bool {
        let mut timeout = timeout;
        let reached = loop {
            let notified = self.notify.notified();
            self.target.store(n, Relaxed);
            if self.delivered() >= n {
                break true;
            }
            match future::select(Box::pin(notified), timeout).await {
                Either::Left((_, rest)) => timeout = rest,
                Either::Right(_) => break self.delivered() >= n,
            }
        };
        self.target.store(u64::MAX, Relaxed);
        reached
    }

    /// Starts recording latencies, from empty.
    pub(crate) fn start_recording(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.recording.store(true, Relaxed);
    }

    /// Stops recording; the p50 and p99 latencies recorded, in µs (NaN if none).
    pub(crate) fn stop_recording(&self) -> (f64, f64) {
        self.recording.store(false, Relaxed);
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        (percentile(&counts, 0.50), percentile(&counts, 0.99))
    }
}

fn bucket(us: u64) -> usize {
    if us < FINE as u64 {
        us as usize
    } else {
        FINE + (((us - FINE as u64) / COARSE_US) as usize).min(COARSE - 1)
    }
}

/// The middle of the bucket holding quantile `q` of `counts`, in µs.
fn percentile(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return if i < FINE {
                i as f64 + 0.5
            } else {
                (FINE as u64 + (i - FINE) as u64 * COARSE_US) as f64 + COARSE_US as f64 / 2.0
            };
        }
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let probe = Probe::new();
        probe.start_recording();
        for us in [10u64, 10, 10, 20, 5000] {
            probe.buckets[bucket(us)].fetch_add(1, Relaxed);
        }
        let (p50, p99) = probe.stop_recording();
        assert_eq!(p50, 10.5);
        assert_eq!(p99, 4096.0 + 3.0 * 256.0 + 128.0);
        let data = probe.stamp(64);
        probe.deliver(&data);
        assert_eq!(probe.delivered(), 1);
    }
}
