//! [`RateLimiter`]: the buckets of [`RateLimits`], per connection (a connection extension,
//! gone with the connection) and per user (keyed buckets, swept of users whose buckets are
//! full again, so that many distinct users do not make it grow without bound).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use super::{RateLimit, RateLimits, Rule};
use crate::connection::Connection;
use crate::error::Error;
use crate::runtime::Runtime;

/// How often the per-user buckets are swept of users whose buckets are full again.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Users held in one rule's buckets past which a sweep runs at once.
const SWEEP_ABOVE: usize = 50_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// governor's clock: the server's runtime's, so that time stays the runtime's to tell.
#[derive(Clone)]
struct RuntimeClock(Arc<dyn Runtime>);

impl Clock for RuntimeClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        self.0.now()
    }
}

type Direct = governor::RateLimiter<NotKeyed, InMemoryState, RuntimeClock, NoOpMiddleware<Instant>>;
type Keyed =
    governor::RateLimiter<String, HashMapStateStore<String>, RuntimeClock, NoOpMiddleware<Instant>>;

fn quota(limit: RateLimit) -> Quota {
    let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(n(limit.per_second)).allow_burst(n(limit.burst))
}

/// Who a connection's user is, for per-user buckets (`None`: not identified). The server
/// wires it to the channels' identity.
pub(crate) type UserOf = Arc<dyn Fn(&Connection) -> Option<String> + Send + Sync>;

/// What a bucket is for: `c` and a command name (`*`: every other command), or `p` and a
/// namespace prefix.
#[derive(Clone, Copy)]
struct Target<'a> {
    kind: char,
    name: &'a str,
}

impl Target<'_> {
    fn is(&self, key: &str) -> bool {
        key.strip_prefix(self.kind) == Some(self.name)
    }

    fn key(&self) -> Box<str> {
        format!("{}{}", self.kind, self.name).into()
    }
}

/// Applies [`RateLimits`]; cheap to clone, every clone the same buckets. Give it to
/// [`ServerBuilder::rate_limits`](crate::ServerBuilder::rate_limits); [`set`](Self::set)
/// replaces the limits while the server runs (a reload).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits())
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

struct Inner {
    limits: RwLock<Arc<RateLimits>>,
    user_of: OnceLock<UserOf>,
    /// Per-user buckets, one keyed limiter per rule: (target key, its limit, buckets).
    users: Mutex<Users>,
    refused: AtomicU64,
    disconnected: AtomicU64,
}

#[derive(Default)]
struct Users {
    rules: Vec<(Box<str>, RateLimit, Keyed)>,
    swept: Option<Instant>,
}

/// A connection's buckets and strikes (a connection extension, made at its first limited
/// request). Its buckets are those of rules in the limits: as many as the limits have
/// rules, whatever the peer sends.
#[derive(Default)]
pub(crate) struct ConnRates(Mutex<ConnState>);

#[derive(Default)]
struct ConnState {
    buckets: Vec<(Box<str>, RateLimit, Direct)>,
    window_start: Option<Instant>,
    refusals: u32,
    struck_out: bool,
}

impl RateLimiter {
    /// A limiter applying `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits: RwLock::new(Arc::new(limits)),
                user_of: OnceLock::new(),
                users: Mutex::default(),
                refused: AtomicU64::new(0),
                disconnected: AtomicU64::new(0),
            }),
        }
    }

    /// Replaces the limits, for every connection at once. A bucket whose rule is unchanged
    /// keeps its state; one whose rule changed starts again full.
    pub fn set(&self, limits: RateLimits) {
        let keep = |key: &str, limit: RateLimit| {
            let (kind, name) = key.split_at(1);
            let rule = match kind {
                "c" if name == "*" => Some(&limits.every_command),
                "c" => limits.commands.get(name),
                _ => limits.publications.get(name),
            };
            rule.and_then(|r| r.per_user) == Some(limit)
        };
        lock(&self.inner.users)
            .rules
            .retain(|(key, limit, _)| keep(key, *limit));
        *self.inner.limits.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }

    /// The limits applied now.
    pub fn limits(&self) -> Arc<RateLimits> {
        self.inner
            .limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests refused since the start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Connections disconnected for their refusals since the start.
    pub fn disconnected(&self) -> u64 {
        self.inner.disconnected.load(Ordering::Relaxed)
    }

    /// Users whose per-user buckets are held now (over all rules): those that used one
    /// recently enough that it is not full again.
    pub fn users_held(&self) -> usize {
        lock(&self.inner.users)
            .rules
            .iter()
            .map(|(_, _, k)| k.len())
            .sum()
    }

    /// Tells the limiter who connections' users are (the server does, once).
    pub(crate) fn bind_users(&self, user_of: UserOf) {
        let _ = self.inner.user_of.set(user_of);
    }

    /// Takes a token for `command` on `conn`; [`Error::RateLimited`] if refused.
    pub(crate) fn check_command(&self, conn: &Connection, command: &str) -> Result<(), Error> {
        let limits = self.limits();
        let (rule, name) = limits.command_rule(command);
        if rule.is_empty() {
            return Ok(());
        }
        let target = Target { kind: 'c', name };
        self.check(conn, target, rule, &limits)
    }

    /// Takes a token for a publication to the namespace `prefix` from `conn`.
    pub(crate) fn check_publication(&self, conn: &Connection, prefix: &str) -> Result<(), Error> {
        let limits = self.limits();
        let Some(rule) = limits.publications.get(prefix).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let target = Target {
            kind: 'p',
            name: prefix,
        };
        self.check(conn, target, rule, &limits)
    }

    fn check(
        &self,
        conn: &Connection,
        target: Target<'_>,
        rule: &Rule,
        limits: &RateLimits,
    ) -> Result<(), Error> {
        let clock = RuntimeClock(conn.runtime().clone());
        let rates = conn.extension::<ConnRates>();
        if lock(&rates.0).struck_out {
            return Err(struck_out_error(limits));
        }
        let mut wait = rule
            .per_connection
            .and_then(|limit| rates.take(target, limit, &clock));
        if wait.is_none() {
            if let Some(limit) = rule.per_user {
                let user = self.inner.user_of.get().and_then(|user_of| user_of(conn));
                if let Some(user) = user.filter(|u| !u.is_empty()) {
                    wait = self.take_user(target, &user, limit, &clock);
                }
            }
        }
        match wait {
            None => Ok(()),
            Some(wait) => Err(self.refuse(conn, &rates, wait, limits, clock.now())),
        }
    }

    /// Takes a token from `user`'s bucket of `target`; how long until one comes if none.
    fn take_user(
        &self,
        target: Target<'_>,
        user: &str,
        limit: RateLimit,
        clock: &RuntimeClock,
    ) -> Option<Duration> {
        let now = clock.now();
        let mut users = lock(&self.inner.users);
        let due = users
            .swept
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        let i = slot(&mut users.rules, target, limit, || {
            Keyed::hashmap_with_clock(quota(limit), clock.clone())
        });
        if due || users.rules[i].2.len() > SWEEP_ABOVE {
            users.swept = Some(now);
            for (_, _, keyed) in &users.rules {
                keyed.retain_recent();
                keyed.shrink_to_fit();
            }
        }
        let keyed = &users.rules[i].2;
        keyed
            .check_key(&user.to_owned())
            .err()
            .map(|not| not.wait_time_from(now))
    }

    /// Counts a refusal against `conn`'s strikes: the error it gets (the one that reaches
    /// them says the connection is being closed).
    fn refuse(
        &self,
        conn: &Connection,
        rates: &ConnRates,
        wait: Duration,
        limits: &RateLimits,
        now: Instant,
    ) -> Error {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        let strikes = limits.strikes;
        let mut state = lock(&rates.0);
        if state
            .window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= strikes.window)
        {
            state.window_start = Some(now);
            state.refusals = 0;
        }
        state.refusals = state.refusals.saturating_add(1);
        if strikes.refusals > 0 && state.refusals >= strikes.refusals {
            state.struck_out = true;
            self.inner.disconnected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                conn = conn.id(),
                peer = %conn.peer_addr(),
                refusals = strikes.refusals,
                "rate limited too often: disconnecting"
            );
            return struck_out_error(limits);
        }
        let ms = wait.as_nanos().div_ceil(1_000_000).max(1);
        Error::RateLimited(format!("rate limited, retry after {ms} ms"))
    }
}

fn struck_out_error(limits: &RateLimits) -> Error {
    Error::RateLimited(format!(
        "rate limited too often ({} refusals within {} ms): disconnecting",
        limits.strikes.refusals,
        limits.strikes.window.as_millis()
    ))
}

impl ConnRates {
    /// Takes a token from this connection's bucket of `target`; how long until one comes
    /// if none.
    fn take(&self, target: Target<'_>, limit: RateLimit, clock: &RuntimeClock) -> Option<Duration> {
        let mut state = lock(&self.0);
        let i = slot(&mut state.buckets, target, limit, || {
            Direct::direct_with_clock(quota(limit), clock.clone())
        });
        state.buckets[i]
            .2
            .check()
            .err()
            .map(|not| not.wait_time_from(clock.now()))
    }
}

/// Where `target`'s buckets are in `list`, made (with `make`) if missing or if their
/// limit is not `limit` (the limits were replaced).
fn slot<L>(
    list: &mut Vec<(Box<str>, RateLimit, L)>,
    target: Target<'_>,
    limit: RateLimit,
    make: impl FnOnce() -> L,
) -> usize {
    match list.iter().position(|(k, _, _)| target.is(k)) {
        Some(i) if list[i].1 == limit => i,
        Some(i) => {
            list[i] = (target.key(), limit, make());
            i
        }
        None => {
            list.push((target.key(), limit, make()));
            list.len() - 1
        }
    }
}

/// Starts closing `conn` if it was refused too often (after its refusal's answer was
/// queued, so that the client reads why).
pub(crate) fn close_if_struck_out(conn: &Connection) {
    if let Some(rates) = conn.find_extension::<ConnRates>() {
        if lock(&rates.0).struck_out {
            conn.begin_close();
        }
    }
}
