//! The `[channels.NAME]` tables of `zserver serve --config FILE`: the login server's channel
//! namespaces. Without any, the server offers its default (`chat`, see
//! [`ChannelNamespace::new`]); with some, exactly those.
//!
//! ```toml
//! [channels.chat]          # channels chat:... with the defaults
//! [channels.news]
//! history = 20             # publications kept per channel (0: none)
//! history-ttl-secs = 3600  # how long each is kept (0: no age limit)
//! durable = true           # history in the store, so that recovery survives a restart
//! presence = false
//! join-leave = false
//! client-publish = false   # only the server's own code publishes
//! max-publication = 4096   # bytes
//! publish-rate = "5/s burst 10"      # per connection (N/s, or N/s burst B)
//! publish-rate-per-user = "10/s"     # per user, over all of their sessions
//! ```

use std::path::Path;
use std::time::Duration;

use zserver_login::ChannelNamespace;

use crate::bench::BoxError;

/// The namespaces the file at `path` configures; `None` if it has no `channels` table.
pub(crate) fn from_file(path: &Path) -> Result<Option<Vec<ChannelNamespace>>, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))?;
    parse(&table).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn parse(table: &toml::Table) -> Result<Option<Vec<ChannelNamespace>>, String> {
    let Some(channels) = table.get("channels") else {
        return Ok(None);
    };
    let channels = channels
        .as_table()
        .ok_or("`channels` is a table of namespaces: [channels.NAME]")?;
    channels
        .iter()
        .map(|(name, options)| namespace(name, options))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn namespace(name: &str, options: &toml::Value) -> Result<ChannelNamespace, String> {
    let at = |key: &str| format!("[channels.{name}] {key}");
    if name.is_empty() || name.contains(':') {
        return Err(format!(
            "[channels.{name}]: a namespace name is not empty and has no `:`"
        ));
    }
    let options = options
        .as_table()
        .ok_or_else(|| format!("[channels.{name}] is a table of options"))?;
    let mut ns = ChannelNamespace::new(name);
    for (key, value) in options {
        let number = || {
            value
                .as_integer()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("{}: give a whole number", at(key)))
        };
        let flag = || {
            value
                .as_bool()
                .ok_or_else(|| format!("{}: give true or false", at(key)))
        };
        match key.replace('_', "-").as_str() {
            "history" => ns.history = number()?,
            "history-ttl-secs" => {
                let secs = number()? as u64;
                ns.history_ttl = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "durable" => ns.durable = flag()?,
            "presence" => ns.presence = flag()?,
            "join-leave" => ns.join_leave = flag()?,
            "client-publish" => ns.client_publish = flag()?,
            "max-publication" => ns.max_publication = number()?,
            "publish-rate" => ns.publish_rate = Some(crate::rate_config::rate(&at(key), value)?),
            "publish-rate-per-user" => {
                ns.publish_rate_per_user = Some(crate::rate_config::rate(&at(key), value)?)
            }
            _ => {
                return Err(format!(
                    "unknown key {} (history, history-ttl-secs, durable, presence, join-leave, \
                     client-publish, max-publication, publish-rate, publish-rate-per-user)",
                    at(key)
                ))
            }
        }
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zserver::rate::RateLimit;

    fn namespaces(text: &str) -> Result<Option<Vec<ChannelNamespace>>, String> {
        parse(&text.parse().unwrap())
    }

    #[test]
    fn tables_become_namespaces_with_defaults_for_what_is_not_given() {
        assert_eq!(namespaces("listen = \"127.0.0.1:1\"").unwrap(), None);
        let got = namespaces(
            "[channels.chat]\n[channels.news]\nhistory = 20\nhistory-ttl-secs = 0\n\
             client_publish = false\nmax-publication = 4096\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(got[0], ChannelNamespace::new("chat"));
        let news = &got[1];
        assert_eq!(
            (news.name.as_str(), news.history, news.history_ttl),
            ("news", 20, None)
        );
        assert!(!news.client_publish && news.presence && news.durable);
        assert_eq!(news.max_publication, 4096);
        assert_eq!(
            (news.publish_rate, news.publish_rate_per_user),
            (None, None)
        );
        let got = namespaces(
            "[channels.chat]\npublish-rate = \"5/s burst 10\"\npublish_rate_per_user = \"10/s\"\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(got[0].publish_rate, Some(RateLimit::new(5, 10)));
        assert_eq!(got[0].publish_rate_per_user, Some(RateLimit::new(10, 10)));
    }

    #[test]
    fn bad_tables_are_refused_by_name() {
        let err = namespaces("[channels.chat]\nhistroy = 3").unwrap_err();
        assert!(err.contains("[channels.chat] histroy"), "{err}");
        let err = namespaces("[channels.chat]\nhistory = -1").unwrap_err();
        assert!(err.contains("whole number"), "{err}");
        let err = namespaces("[channels.chat]\npresence = 1").unwrap_err();
        assert!(err.contains("true or false"), "{err}");
        assert!(namespaces("channels = 3").is_err());
        let err = namespaces("[channels.chat]\npublish-rate = \"5/min\"").unwrap_err();
        assert!(
            err.contains("[channels.chat] publish-rate") && err.contains("N/s"),
            "{err}"
        );
    }
}
