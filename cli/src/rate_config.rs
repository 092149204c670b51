//! The `[limits.rate]` table of `zserver serve --config FILE`: the login server's rate
//! limits on commands, and when a client that keeps going is disconnected (a namespace's
//! publication limits are its `publish-rate` keys, in channel_config.rs). A rate is
//! `"N/s"` (bursts of N) or `"N/s burst B"`.
//!
//! ```toml
//! [limits.rate]
//! calls = "50/s burst 100"        # every command without its own rule, per connection
//! calls-per-user = "100/s"        # the same, per user over all of their sessions
//! disconnect-after = 20           # refusals within the window that disconnect (0: never)
//! disconnect-window-secs = 10
//! commands = { push = "2/s burst 5", who = "1/s" }   # per connection, per command
//! commands-per-user = { push = "5/s" }                # per user, per command
//! ```

use std::path::Path;
use std::time::Duration;

use zserver::rate::{RateLimit, RateLimits, Rule};

use crate::bench::BoxError;

const KEYS: &str = "calls, calls-per-user, disconnect-after, disconnect-window-secs, \
                    commands, commands-per-user";

/// The rate limits the file at `path` sets; `None` if it has no `[limits.rate]` table.
pub(crate) fn from_file(path: &Path) -> Result<Option<RateLimits>, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))?;
    parse(&table).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// A rate given as text under `at`.
pub(crate) fn rate(at: &str, value: &toml::Value) -> Result<RateLimit, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{at}: give a rate as a string, such as \"5/s burst 10\""))?
        .parse()
        .map_err(|e| format!("{at}: {e}"))
}

fn parse(table: &toml::Table) -> Result<Option<RateLimits>, String> {
    let Some(limits) = table.get("limits") else {
        return Ok(None);
    };
    let limits = limits
        .as_table()
        .ok_or("`limits` is a table: [limits.rate]")?;
    if let Some(other) = limits.keys().find(|k| *k != "rate") {
        return Err(format!("unknown key [limits] {other} (rate)"));
    }
    let Some(rate_table) = limits.get("rate") else {
        return Ok(None);
    };
    let rate_table = rate_table
        .as_table()
        .ok_or("[limits.rate] is a table of limits")?;
    let mut out = RateLimits::default();
    for (key, value) in rate_table {
        let at = format!("[limits.rate] {key}");
        let number = || {
            value
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("{at}: give a whole number"))
        };
        match key.replace('_', "-").as_str() {
            "calls" => out.every_command.per_connection = Some(rate(&at, value)?),
            "calls-per-user" => out.every_command.per_user = Some(rate(&at, value)?),
            "disconnect-after" => out.strikes.refusals = number()?,
            "disconnect-window-secs" => {
                out.strikes.window = Duration::from_secs(u64::from(number()?.max(1)))
            }
            which @ ("commands" | "commands-per-user") => {
                let commands = value
                    .as_table()
                    .ok_or_else(|| format!("{at}: give a table of command = rate"))?;
                for (command, value) in commands {
                    let limit = rate(&format!("{at}.{command}"), value)?;
                    let rule: &mut Rule = out.commands.entry(command.clone()).or_default();
                    match which {
                        "commands" => rule.per_connection = Some(limit),
                        _ => rule.per_user = Some(limit),
                    }
                }
            }
            _ => return Err(format!("unknown key {at} ({KEYS})")),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(text: &str) -> Result<Option<RateLimits>, String> {
        parse(&text.parse().unwrap())
    }

    #[test]
    fn the_table_becomes_rate_limits() {
        assert_eq!(limits("listen = \"127.0.0.1:1\"").unwrap(), None);
        let got = limits(
            "[limits.rate]\ncalls = \"50/s burst 100\"\ncalls_per_user = \"100/s\"\n\
             disconnect-after = 7\ndisconnect-window-secs = 30\n\
             commands = { push = \"2/s burst 5\", who = \"1/s\" }\n\
             commands-per-user = { push = \"5/s\" }\n",
        )
        .unwrap()
        .unwrap();
        let want = RateLimits::default()
            .every_command(
                Rule::per_connection(RateLimit::new(50, 100))
                    .and_per_user(RateLimit::new(100, 100)),
            )
            .command(
                "push",
                Rule::per_connection(RateLimit::new(2, 5)).and_per_user(RateLimit::new(5, 5)),
            )
            .command("who", Rule::per_connection(RateLimit::new(1, 1)))
            .strikes(7, Duration::from_secs(30));
        assert_eq!(got, want);
        // Only what is given changes.
        let got = limits("[limits.rate]\ncalls = \"3/s\"").unwrap().unwrap();
        assert_eq!(got.strikes, RateLimits::default().strikes);
        assert!(got.commands.is_empty());
        let example = limits(include_str!("../zserver.example.toml")).unwrap();
        assert_eq!(example, Some(RateLimits::default()));
    }

    #[test]
    fn bad_tables_are_refused_by_name() {
        let err = limits("[limits.rate]\ncals = \"1/s\"").unwrap_err();
        assert!(
            err.contains("[limits.rate] cals") && err.contains("calls-per-user"),
            "{err}"
        );
        let err = limits("[limits.rate]\ncalls = \"fast\"").unwrap_err();
        assert!(
            err.contains("[limits.rate] calls") && err.contains("N/s"),
            "{err}"
        );
        let err = limits("[limits.rate]\ncalls = 5").unwrap_err();
        assert!(err.contains("as a string"), "{err}");
        let err = limits("[limits.rate]\ncommands = { push = \"0/s\" }").unwrap_err();
        assert!(err.contains("[limits.rate] commands.push"), "{err}");
        let err = limits("[limits.rate]\ndisconnect-after = -1").unwrap_err();
        assert!(err.contains("whole number"), "{err}");
        let err = limits("[limits]\nrat = 1").unwrap_err();
        assert!(err.contains("[limits] rat"), "{err}");
        assert!(limits("limits = 3").is_err());
    }
}
