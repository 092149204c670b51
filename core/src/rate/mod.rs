//! Rate limits on what clients do: token buckets (from the `governor` crate) on calls and
//! one-way sends by command name, and on publications by channel namespace, per connection
//! and per user (over all of that user's connections on this server).
//!
//! - [`RateLimit`] is one bucket's shape: tokens added per second, and the most held
//!   (the burst). It parses from text such as `"5/s"` or `"5/s burst 20"`.
//! - [`Rule`] pairs a bucket per connection with one per user.
//! - [`RateLimits`] is the whole configuration: a rule per command, one for every other
//!   command, one per namespace's publications, and when a client that keeps going is
//!   disconnected ([`Strikes`]).
//! - [`RateLimiter`] applies it: give it to
//!   [`ServerBuilder::rate_limits`](crate::ServerBuilder::rate_limits), and keep a clone to
//!   replace the configuration while the server runs ([`RateLimiter::set`]).
//!
//! A request over its limit is refused before its handler runs: a call gets
//! [`Error::RateLimited`](crate::Error::RateLimited) (`Error` code 9, `rate limited, retry after N ms`); a one-way
//! send is dropped; a publication reaches no subscriber. Every refusal counts against the
//! connection's [`Strikes`]: the one that reaches them gets
//! `rate limited too often (N refusals within M ms): disconnecting` and the connection is
//! closed once that answer is sent.
//!
//! The user is the one [`Channels::identify`](crate::channels::Channels::identify) set; a
//! connection not identified has its per-connection buckets only.
//!
//! ```
//! use zserver_core::rate::{RateLimit, RateLimiter, RateLimits, Rule};
//!
//! let limits = RateLimits::default()
//!     .every_command(Rule::per_connection("50/s burst 100".parse()?))
//!     .command("push", Rule::per_connection(RateLimit::new(2, 5)).and_per_user(RateLimit::new(5, 10)))
//!     .publications("chat:", Rule::per_user(RateLimit::new(10, 20)));
//! let limiter = RateLimiter::new(limits);
//! // zserver::server().rate_limits(limiter.clone()) ..., and later, from a reload:
//! limiter.set(RateLimits::default());
//! # Ok::<_, String>(())
//! ```

mod limiter;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

pub(crate) use limiter::close_if_struck_out;
pub use limiter::RateLimiter;

/// One token bucket: `per_second` tokens added each second, at most `burst` held (a full
/// bucket at first). Each request takes one; a request finding none is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Tokens added per second (at least 1).
    pub per_second: u32,
    /// The most tokens held: how many requests may come at once after a quiet spell (at
    /// least 1).
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` a second with bursts of `burst` (each at least 1: 0 is taken as 1).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: per_second.max(1),
            burst: burst.max(1),
        }
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s burst {}", self.per_second, self.burst)
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// `"N/s"` (bursts of N) or `"N/s burst B"`, N and B whole numbers from 1.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}`: give a rate as `N/s` or `N/s burst B` (N, B from 1)");
        let number = |s: &str| s.trim().parse::<u32>().ok().filter(|n| *n > 0);
        let mut words = text.split_whitespace();
        let rate = words.next().ok_or_else(bad)?;
        let per_second = rate.strip_suffix("/s").and_then(number).ok_or_else(bad)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => per_second,
            (Some("burst"), Some(b), None) => number(b).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        Ok(Self { per_second, burst })
    }
}

/// The buckets of one command, or of one namespace's publications: one per connection,
/// one per user (shared by all of that user's connections on this server), either or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    /// Each connection's own bucket.
    pub per_connection: Option<RateLimit>,
    /// Each user's bucket, over all of their connections (a connection not identified has
    /// none).
    pub per_user: Option<RateLimit>,
}

impl Rule {
    /// A bucket per connection alone.
    pub fn per_connection(limit: RateLimit) -> Self {
        Self {
            per_connection: Some(limit),
            per_user: None,
        }
    }

    /// A bucket per user alone.
    pub fn per_user(limit: RateLimit) -> Self {
        Self {
            per_connection: None,
            per_user: Some(limit),
        }
    }

    /// This rule with a bucket per user too.
    pub fn and_per_user(mut self, limit: RateLimit) -> Self {
        self.per_user = Some(limit);
        self
    }

    /// Whether the rule limits nothing.
    pub fn is_empty(&self) -> bool {
        self.per_connection.is_none() && self.per_user.is_none()
    }
}

/// When a client that keeps going over its limits is disconnected: on its `refusals`-th
/// refusal within `window` (counted per connection, over every bucket). `refusals` 0:
/// never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strikes {
    /// Refusals that disconnect (0: none do).
    pub refusals: u32,
    /// The window they are counted over (a fixed window that starts at the first refusal).
    pub window: Duration,
}

impl Default for Strikes {
    /// 20 refusals within 10 seconds.
    fn default() -> Self {
        Self {
            refusals: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// A server's rate limits, all in one value so that a reload can replace them at once
/// ([`RateLimiter::set`]). By default nothing is limited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Every command that has no rule of its own in [`commands`](Self::commands): one
    /// bucket (per connection, per user) over all of them together. It covers the `$ch.`
    /// channel commands too.
    pub every_command: Rule,
    /// A rule per command name (calls, one-way sends, uploads and downloads), each with
    /// buckets of its own.
    pub commands: BTreeMap<String, Rule>,
    /// A rule per channel namespace's prefix (such as `chat:`) for what clients publish
    /// there (on top of the `$ch.pub` command's own rule). The server's own publications
    /// are not limited.
    pub publications: BTreeMap<String, Rule>,
    /// When a client that keeps going is disconnected.
    pub strikes: Strikes,
}

impl RateLimits {
    /// Sets [`every_command`](Self::every_command).
    pub fn every_command(mut self, rule: Rule) -> Self {
        self.every_command = rule;
        self
    }

    /// Sets the rule of `command`.
    pub fn command(mut self, command: impl Into<String>, rule: Rule) -> Self {
        self.commands.insert(command.into(), rule);
        self
    }

    /// Sets the rule of publications to the namespace `prefix` (as given to
    /// [`Namespace::new`](crate::channels::Namespace::new), such as `chat:`).
    pub fn publications(mut self, prefix: impl Into<String>, rule: Rule) -> Self {
        self.publications.insert(prefix.into(), rule);
        self
    }

    /// Sets [`strikes`](Self::strikes).
    pub fn strikes(mut self, refusals: u32, window: Duration) -> Self {
        self.strikes = Strikes { refusals, window };
        self
    }

    /// The rule of `command` and the name of its buckets (`*` for the shared ones).
    fn command_rule<'a>(&'a self, command: &'a str) -> (&'a Rule, &'a str) {
        match self.commands.get_key_value(command) {
            Some((name, rule)) => (rule, name),
            None => (&self.every_command, "*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_from_text_and_back() {
        assert_eq!("5/s".parse(), Ok(RateLimit::new(5, 5)));
        assert_eq!(" 5/s  burst 20 ".parse(), Ok(RateLimit::new(5, 20)));
        assert_eq!(
            RateLimit::new(5, 20).to_string().parse(),
            Ok(RateLimit::new(5, 20))
        );
        for bad in [
            "",
            "5",
            "0/s",
            "5/m",
            "-1/s",
            "5/s burst",
            "5/s burst 0",
            "5/s x 3",
            "5/s burst 3 4",
        ] {
            let err = bad.parse::<RateLimit>().unwrap_err();
            assert!(err.contains("N/s burst B"), "{bad}: {err}");
        }
        assert_eq!(RateLimit::new(0, 0), RateLimit::new(1, 1));
    }

    #[test]
    fn commands_without_a_rule_share_the_default_buckets() {
        let limits = RateLimits::default()
            .every_command(Rule::per_connection(RateLimit::new(1, 1)))
            .command("push", Rule::per_user(RateLimit::new(2, 2)));
        assert_eq!(limits.command_rule("push").1, "push");
        assert_eq!(
            limits.command_rule("push").0.per_user,
            Some(RateLimit::new(2, 2))
        );
        assert_eq!(limits.command_rule("who").1, "*");
        assert_eq!(limits.command_rule("anything").1, "*");
    }
}
