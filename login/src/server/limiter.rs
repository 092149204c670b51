//! Failed-login counters over a sliding window, per address and per account, with the
//! attempts in progress counted as failures until they end (so a burst of concurrent guesses
//! cannot outrun the limit); the same counters limit registrations per address.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::State;
use crate::lock;

/// Failed-login counters over a sliding window, per key (an address or an account).
pub(super) struct Limiter {
    window: Duration,
    max: usize,
    failures: HashMap<String, VecDeque<Instant>>,
    /// Attempts in progress per key (no entry for none): they count as failures until they
    /// end. At most one entry per attempt in progress.
    in_flight: HashMap<String, usize>,
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
            in_flight: HashMap::new(),
            sweep_at: Self::FIRST_SWEEP,
        }
    }

    /// Whether `key` has had `max` failures within the window before `now`, counting its
    /// attempts in progress as failures.
    pub(super) fn blocked(&mut self, key: &str, now: Instant) -> bool {
        let window = self.window;
        let in_flight = self.in_flight.get(key).copied().unwrap_or(0);
        let recent = match self.failures.get_mut(key) {
            Some(q) => {
                while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                    q.pop_front();
                }
                q.len()
            }
            None => 0,
        };
        recent + in_flight >= self.max
    }

    /// Starts an attempt counted against each of `keys`, unless one of them is blocked
    /// (then `false`, and nothing is counted).
    pub(super) fn begin(&mut self, keys: &[String], now: Instant) -> bool {
        if keys.iter().any(|key| self.blocked(key, now)) {
            return false;
        }
        for key in keys {
            *self.in_flight.entry(key.clone()).or_default() += 1;
        }
        true
    }

    /// Ends an attempt [`begin`](Self::begin) started on `keys`; if `failed`, it stays
    /// counted as a failure at `now`.
    pub(super) fn end(&mut self, keys: &[String], failed: bool, now: Instant) {
        for key in keys {
            if let Some(n) = self.in_flight.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.remove(key);
                }
            }
            if failed {
                self.fail(key.clone(), now);
            }
        }
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

/// An attempt in progress, counted against its keys until it ends. One dropped without an
/// outcome (its caller stopped waiting, its connection closed) counts as a failure.
pub(super) struct Attempt<'a> {
    limiter: &'a Mutex<Limiter>,
    keys: Vec<String>,
    ended: bool,
}

impl<'a> Attempt<'a> {
    /// Starts an attempt against `keys` of `limiter`; `None` if one of them is blocked.
    pub(super) fn begin(limiter: &'a Mutex<Limiter>, keys: Vec<String>) -> Option<Self> {
        // The lock is let go before an attempt exists (one dropped locks it again).
        let started = lock(limiter).begin(&keys, Instant::now());
        started.then(|| Self {
            limiter,
            keys,
            ended: false,
        })
    }

    /// Ends it, as a failure if `failed`; its keys, for telling other nodes.
    pub(super) fn end(mut self, failed: bool) -> Vec<String> {
        self.ended = true;
        lock(self.limiter).end(&self.keys, failed, Instant::now());
        std::mem::take(&mut self.keys)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            lock(self.limiter).end(&self.keys, true, Instant::now());
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
    fn attempts_in_progress_count_until_they_end() {
        let mut limiter = Limiter::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let (ann, bob) = (vec!["user:ann".to_owned()], vec!["user:bob".to_owned()]);
        // Three at once use up the limit before any has failed.
        assert!(limiter.begin(&ann, t0));
        assert!(limiter.begin(&ann, t0));
        assert!(limiter.begin(&ann, t0));
        assert!(!limiter.begin(&ann, t0));
        assert!(limiter.begin(&bob, t0));
        // One succeeds: room for one more; the two that fail stay counted.
        limiter.end(&ann, false, t0);
        limiter.end(&ann, true, t0);
        limiter.end(&ann, true, t0);
        assert!(limiter.begin(&ann, t0));
        assert!(!limiter.begin(&ann, t0));
        limiter.end(&ann, false, t0);
        limiter.end(&bob, false, t0);
        assert!(limiter.in_flight.is_empty());
        // An attempt blocked on one key counts against none.
        let both = vec!["addr:a".to_owned(), "user:ann".to_owned()];
        limiter.fail("user:ann".into(), t0);
        assert!(!limiter.begin(&both, t0));
        assert!(limiter.in_flight.is_empty());
        // An attempt dropped without an outcome counts as a failure.
        let shared = Mutex::new(Limiter::new(Duration::from_secs(60), 1));
        drop(Attempt::begin(&shared, bob.clone()));
        assert!(Attempt::begin(&shared, bob).is_none());
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
