//! One pass of one row: the publisher's two phases, the same for every system.
//!
//! 1. **Throughput.** The publisher keeps [`DEPTH`] publications per subscriber in flight
//!    (published but not yet delivered to all its channel's subscribers; channels taken in
//!    turn), refilling whenever half of that window has been delivered: a closed loop,
//!    so the system runs flat out without its queues growing without bound, and nobody's
//!    slow-consumer limit is hit by the bench itself. Deliveries per second are counted
//!    over `secs`, after a ramp of a fifth of that.
//! 2. **Latency.** Once every publication of phase 1 has arrived, rounds: one publication
//!    to every channel (so every subscriber gets one), then wait until all have arrived,
//!    then the next round, for `lat_secs` (at least [`MIN_ROUNDS`]). p50 and p99 are over
//!    every delivery of every round: how long a broadcast takes to reach a subscriber when
//!    the system is not already backed up, the spread of one fan-out included.
//!
//! Deliveries that never come (a system that drops, or closes a slow subscriber) are
//! counted as `lost`; a phase that waits [`STALL`] without progress ends early (a
//! throughput phase that does is then rated over everything delivered until the drain
//! after it ends).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;

use super::probe::Probe;

/// Publications per subscriber kept in flight in the throughput phase.
pub(crate) const DEPTH: u64 = 8;
/// Latency rounds at least, however short `lat_secs`.
const MIN_ROUNDS: u32 = 5;
/// Longest wait for progress before a phase gives up.
const STALL: Duration = Duration::from_secs(3);

/// A sleep on the row's runtime.
pub(crate) type Sleep = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// A row's publisher: one connection to the system under test.
pub(crate) trait Publish: Send + Sync {
    /// Publishes `data` to channel number `channel`; resolves once handed to the
    /// connection (not when delivered).
    fn publish(&self, channel: usize, data: Bytes) -> BoxFuture<'_, Result<(), String>>;
}

/// What the driver asks of one pass.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Pass {
    pub payload: usize,
    pub secs: f64,
    pub lat_secs: f64,
}

/// What one pass measured.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct PassResult {
    pub deliveries_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub lost: u64,
}

/// Runs one pass: `channels` channels of `per_channel` subscribers each.
pub(crate) async fn pass(
    probe: &Probe,
    publisher: &dyn Publish,
    sleep: &Sleep,
    channels: usize,
    per_channel: usize,
    p: Pass,
) -> Result<PassResult, String> {
    if channels == 0 || per_channel == 0 {
        return Err("no subscribers to publish to".into());
    }
    let per = per_channel as u64;
    let start = probe.delivered();
    let window = DEPTH * channels as u64;
    let mut published = 0u64;
    let mut next_channel = 0usize;
    let t0 = Instant::now();
    let measure_at = t0 + Duration::from_secs_f64(p.secs / 5.0);
    let end = measure_at + Duration::from_secs_f64(p.secs);
    let mut from: Option<(Instant, u64)> = None;
    let mut stalled = false;
    loop {
        let now = Instant::now();
        if from.is_none() && now >= measure_at {
            from = Some((now, probe.delivered()));
        }
        if now >= end {
            break;
        }
        let done = (probe.delivered() - start) / per;
        if published < done + window {
            for _ in 0..(done + window - published).min(64) {
                publisher
                    .publish(next_channel, probe.stamp(p.payload))
                    .await?;
                next_channel = (next_channel + 1) % channels;
                published += 1;
            }
        } else {
            let target = start + (published - window / 2) * per;
            if !probe.wait_for(target, sleep(STALL)).await {
                stalled = true;
                break;
            }
        }
    }
    let rate = |(t, d): (Instant, u64)| (probe.delivered() - d) as f64 / t.elapsed().as_secs_f64();
    let mut deliveries_per_s = from.map_or(f64::NAN, rate);
    let mut expected = start + published * per;
    probe.wait_for(expected, sleep(STALL)).await;
    if stalled {
        // A system slower than the window: what it delivered until it caught up (or
        // gave up), over that whole time.
        deliveries_per_s = rate(from.unwrap_or((t0, start)));
    }

    probe.start_recording();
    let lat_end = Instant::now() + Duration::from_secs_f64(p.lat_secs);
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || Instant::now() < lat_end {
        let base = probe.delivered();
        for channel in 0..channels {
            publisher.publish(channel, probe.stamp(p.payload)).await?;
        }
        expected += channels as u64 * per;
        rounds += 1;
        if !probe
            .wait_for(base + channels as u64 * per, sleep(STALL))
            .await
        {
            break;
        }
    }
    let (p50_us, p99_us) = probe.stop_recording();
    probe
        .wait_for(expected, sleep(Duration::from_millis(200)))
        .await;
    Ok(PassResult {
        deliveries_per_s,
        p50_us,
        p99_us,
        lost: expected.saturating_sub(probe.delivered()),
    })
}
