//! Failed-login counters over a sliding window, per address and per account.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::State;
use crate::lock;

/// Failed-login counters over a sliding window, per key (an address or an account).
pub(super) struct Limiter {
    window: Duration,
    max: usize,
    failures: HashMap<String, VecDeque<Instant>>,
    /// How many keys there may be before the next sweep of keys with no recent failure.
    sweep_at: usize,
}

impl Limiter {
    /// Keys a limiter holds before it first sweeps out the ones with no recent failure.
    const FIRST_SWEEP: usize = 1024;

    pub(super) fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max,
            failures: HashMap::new(),
            sweep_at: Self::FIRST_SWEEP,
        }
    }

    /// Whether `key` has had `max` failures within the window before `now`.
    pub(super) fn blocked(&mut self, key: &str, now: Instant) -> bool {
        let window = self.window;
        let Some(q) = self.failures.get_mut(key) else {
            return false;
        };
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        q.len() >= self.max
    }

    /// Counts a failure against `key`. Keys whose failures have all left the window are
    /// swept out once the map has doubled since the last sweep, so a guesser trying ever new
    /// names or addresses cannot grow it without bound.
    pub(super) fn fail(&mut self, key: String, now: Instant) {
        let q = self.failures.entry(key).or_default();
        q.push_back(now);
        // More than `max` entries within the window never change the answer.
        if q.len() > self.max {
            q.pop_front();
        }
        if self.failures.len() >= self.sweep_at {
            let window = self.window;
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= window));
            self.sweep_at = (self.failures.len() * 2).max(Self::FIRST_SWEEP);
        }
    }
}

impl State {
    /// Counts a failed login at `now` against each of `keys` (an address's, an account's).
    pub(super) fn count_failures(&self, keys: Vec<String>, now: Instant) {
        let mut limiter = lock(&self.limiter);
        for key in keys {
            limiter.fail(key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_max_failures_within_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = Limiter::new(window, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!limiter.blocked("user:ann", t0));
            limiter.fail("user:ann".into(), t0 + Duration::from_secs(i));
        }
        assert!(limiter.blocked("user:ann", t0 + Duration::from_secs(3)));
        assert!(!limiter.blocked("user:bob", t0 + Duration::from_secs(3)));
        // The first failure leaves the window: one more attempt is allowed.
        assert!(!limiter.blocked("user:ann", t0 + window + Duration::from_millis(1)));
    }


    #[test]
    fn limiter_forgets_keys_whose_failures_left_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = Limiter::new(window, 5);
        let t0 = Instant::now();
        // 50,000 names, each tried once, 100 ms apart: at most 600 are within the window at
        // any time, and the map never holds many more than twice the sweep threshold.
        let mut most = 0;
        for i in 0..50_000u64 {
            let now = t0 + Duration::from_millis(100 * i);
            limiter.fail(format!("user:u{i}"), now);
            most = most.max(limiter.failures.len());
        }
        assert!(most <= 2 * Limiter::FIRST_SWEEP, "{most} keys held");
        // Many failures of one key keep only what decides the answer.
        for _ in 0..1000 {
            limiter.fail("user:x".into(), t0);
        }
        assert_eq!(limiter.failures["user:x"].len(), 5);
        assert!(limiter.blocked("user:x", t0));
    }
}
