//! Failed-login counters over a sliding window, with the attempts in progress counted as
//! failures until they end (so a burst of concurrent guesses cannot outrun a limit); the same
//! counters limit registrations per address.
//!
//! A password check by `user` from `addr` counts against three keys, each with a bound of its
//! own ([`LoginConfig`](super::LoginConfig)):
//!
//! - `pair:ADDR/USER`, tight (5 a minute): one user's typos lock out that user from that
//!   address, and no one else behind it;
//! - `addr:ADDR`, loose (50 a minute): credential stuffing from one address, over many
//!   accounts, is still stopped;
//! - `user:USER`, in between (20 a minute): a guesser spread over many addresses gets no more
//!   than that on one account, while one address alone cannot lock an account out for its
//!   owner elsewhere (it reaches its pair bound first).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{LoginConfig, State};
use crate::lock;
use crate::store::check_name;

/// The prefix of a key per (address, account).
const PAIR: &str = "pair:";
/// The prefix of a key per address.
const ADDR: &str = "addr:";
/// The prefix of a key per account.
const USER: &str = "user:";

/// The limiter keys of a password check by `user` from `addr`: the pair's, the address's and
/// the account's. A name that breaks the naming rule counts as one shared name, so a huge name
/// is not kept as a key.
pub(super) fn failure_keys(addr: IpAddr, user: &str) -> Vec<String> {
    let user = match check_name(user) {
        Ok(()) => user,
        Err(_) => "(bad name)",
    };
    vec![
        format!("{PAIR}{addr}/{user}"),
        format!("{ADDR}{addr}"),
        format!("{USER}{user}"),
    ]
}

/// The limiter key of a registration from `addr`.
pub(super) fn registration_key(addr: IpAddr) -> String {
    format!("{ADDR}{addr}")
}

/// The limiter key of a refused login token from `addr`: the address alone (an unverified
/// token names no account to count against), under the address-wide bound.
pub(super) fn address_key(addr: IpAddr) -> String {
    format!("{ADDR}{addr}")
}

/// Failure counters over a sliding window, per key; each key's bound is the one of the rule
/// its prefix names (a key no rule names is not counted).
pub(super) struct Limiter {
    window: Duration,
    /// Key prefix → the most failures allowed within the window.
    rules: Vec<(&'static str, usize)>,
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

    /// A limiter of `rules` (a key prefix and its bound) over `window`.
    pub(super) fn new(window: Duration, rules: Vec<(&'static str, usize)>) -> Self {
        Self {
            window,
            rules,
            failures: HashMap::new(),
            in_flight: HashMap::new(),
            sweep_at: Self::FIRST_SWEEP,
        }
    }

    /// The failed-login limiter `config` asks for: per pair, per address, per account.
    pub(super) fn failed_logins(config: &LoginConfig) -> Self {
        let rules = vec![
            (PAIR, config.max_failed_logins),
            (ADDR, config.max_failed_per_address),
            (USER, config.max_failed_per_account),
        ];
        Self::new(config.attempt_window, rules)
    }

    /// The registration limiter `config` asks for: per address.
    pub(super) fn registrations(config: &LoginConfig) -> Self {
        Self::new(
            config.attempt_window,
            vec![(ADDR, config.max_registrations)],
        )
    }

    /// Takes the window and bounds of `other` (a reload); the failures counted so far
    /// stay, judged by the new bounds from the next attempt on.
    pub(super) fn reconfigure(&mut self, other: Limiter) {
        self.window = other.window;
        self.rules = other.rules;
    }

    /// The bound of `key`; `None` if no rule names it.
    fn max(&self, key: &str) -> Option<usize> {
        self.rules
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map(|(_, max)| *max)
    }

    /// Whether `key` has had its most failures within the window before `now`, counting its
    /// attempts in progress as failures.
    pub(super) fn blocked(&mut self, key: &str, now: Instant) -> bool {
        let Some(max) = self.max(key) else {
            return false;
        };
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
        recent + in_flight >= max
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
        let Some(max) = self.max(&key) else {
            return;
        };
        let q = self.failures.entry(key).or_default();
        q.push_back(now);
        // More than `max` entries within the window never change the answer.
        if q.len() > max {
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
    /// Counts a failed login at `now` against each of `keys` (the pair's, the address's, the
    /// account's: see [`failure_keys`]).
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

    /// Rules with one bound for every kind of key.
    fn all(max: usize) -> Vec<(&'static str, usize)> {
        vec![(PAIR, max), (ADDR, max), (USER, max)]
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// The default rules: 5 per pair, 50 per address, 20 per account, a minute.
    fn defaults() -> Limiter {
        Limiter::failed_logins(&LoginConfig::new("unused"))
    }

    /// Counts one failed check of `user` from `addr` (begun and ended, as a login does).
    fn fail(limiter: &mut Limiter, addr: IpAddr, user: &str, now: Instant) {
        let keys = failure_keys(addr, user);
        assert!(limiter.begin(&keys, now), "{user} from {addr} allowed");
        limiter.end(&keys, true, now);
    }

    #[test]
    fn limiter_blocks_after_max_failures_within_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = Limiter::new(window, all(3));
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
    fn typos_for_one_account_do_not_lock_out_the_neighbours() {
        let mut limiter = defaults();
        let t0 = Instant::now();
        let home = ip(1);
        for _ in 0..5 {
            fail(&mut limiter, home, "bob", t0);
        }
        // bob is locked out from this address; ann behind the same one is not, nor is bob
        // from another address.
        assert!(!limiter.begin(&failure_keys(home, "bob"), t0));
        assert!(limiter.begin(&failure_keys(home, "ann"), t0));
        assert!(limiter.begin(&failure_keys(ip(2), "bob"), t0));
    }

    #[test]
    fn stuffing_many_accounts_from_one_address_is_stopped() {
        let mut limiter = defaults();
        let t0 = Instant::now();
        let from = ip(1);
        // 50 accounts, one guess each: every guess is allowed, the 51st account is not.
        for i in 0..50 {
            fail(&mut limiter, from, &format!("u{i}"), t0);
        }
        assert!(!limiter.begin(&failure_keys(from, "u50"), t0));
        assert!(!limiter.begin(&failure_keys(from, "ann"), t0));
        // Those accounts are not locked out for anyone else.
        assert!(limiter.begin(&failure_keys(ip(2), "u0"), t0));
    }

    #[test]
    fn a_guesser_spread_over_addresses_is_limited_per_account() {
        let mut limiter = defaults();
        let t0 = Instant::now();
        // Four addresses, five guesses each at carol: each reaches its pair bound, and
        // together the account's.
        for a in 1..=4 {
            for _ in 0..5 {
                fail(&mut limiter, ip(a), "carol", t0);
            }
        }
        assert!(!limiter.begin(&failure_keys(ip(9), "carol"), t0));
        // Other accounts from a fresh address are not held up.
        assert!(limiter.begin(&failure_keys(ip(9), "dave"), t0));
        // Three addresses, five guesses each: under the account's bound.
        let mut limiter = defaults();
        for a in 1..=3 {
            for _ in 0..5 {
                fail(&mut limiter, ip(a), "carol", t0);
            }
        }
        assert!(limiter.begin(&failure_keys(ip(9), "carol"), t0));
    }

    #[test]
    fn keys_name_the_pair_the_address_and_the_account() {
        let keys = failure_keys(ip(7), "ann");
        assert_eq!(keys, ["pair:10.0.0.7/ann", "addr:10.0.0.7", "user:ann"]);
        let bad = failure_keys("::1".parse().unwrap(), &"x/".repeat(500));
        assert_eq!(bad, ["pair:::1/(bad name)", "addr:::1", "user:(bad name)"]);
        // The longest keys fit a cluster notice.
        let longest = failure_keys(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            &"a".repeat(32),
        );
        assert!(longest.iter().all(|k| k.len() <= 128), "{longest:?}");
        // A key no rule names is never counted (an unknown kind from another node).
        let mut limiter = Limiter::registrations(&LoginConfig::new("unused"));
        let t0 = Instant::now();
        for _ in 0..100 {
            limiter.fail("user:ann".into(), t0);
        }
        assert!(!limiter.blocked("user:ann", t0));
        assert!(limiter.failures.is_empty());
    }

    #[test]
    fn attempts_in_progress_count_until_they_end() {
        let mut limiter = Limiter::new(Duration::from_secs(60), all(3));
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
        let shared = Mutex::new(Limiter::new(Duration::from_secs(60), all(1)));
        drop(Attempt::begin(&shared, bob.clone()));
        assert!(Attempt::begin(&shared, bob).is_none());
    }

    #[test]
    fn limiter_forgets_keys_whose_failures_left_the_window() {
        let window = Duration::from_secs(60);
        let mut limiter = Limiter::new(window, all(5));
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
