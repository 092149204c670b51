//! How a node joins its cluster: [`ClusterConfig`].

use std::time::Duration;

use zserver::Error;

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`. A user name and password
    /// (`nats://user:password@host:port`) or a token (`nats://token@host:port`) in it are
    /// sent to the server, percent-decoded; `tls://` requires TLS.
    pub nats_url: String,
    /// The cluster's name: the prefix of its NATS subjects, so clusters can share a NATS
    /// server. 1 to 64 characters of `a-z`, `A-Z`, `0-9`, `_`, `-`.
    pub name: String,
    /// How often a node says it is alive.
    pub heartbeat: Duration,
    /// A node not heard from for this long is dropped, with its users.
    pub node_timeout: Duration,
    /// How long a request to another node (a push, a snapshot) may take.
    pub request_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults: cluster `zserver`, a heartbeat every second, nodes dropped after 3 s of
    /// silence, requests to other nodes given 2 s.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            name: "zserver".into(),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
        }
    }

    /// [`Self::nats_url`] with any user name, password or token replaced by `***`, for logs
    /// and error messages.
    pub fn nats_url_redacted(&self) -> String {
        match self.nats_url.parse::<async_nats::ServerAddr>() {
            Ok(addr) if addr.has_user_pass() => {
                let mut url = addr.into_inner();
                // Both only fail for URLs that cannot have credentials at all.
                let _ = url.set_password(None);
                let _ = url.set_username("***");
                url.to_string()
            }
            Ok(_) => self.nats_url.clone(),
            // Unparsable: keep only what follows the last `@`, if any.
            Err(_) => match self.nats_url.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => self.nats_url.clone(),
            },
        }
    }

    /// The server's address and the connect options carrying the URL's credentials (the
    /// NATS client does not take them from the URL itself).
    pub(super) fn connect_options(
        &self,
    ) -> Result<(async_nats::ServerAddr, async_nats::ConnectOptions), Error> {
        let addr: async_nats::ServerAddr = self
            .nats_url
            .parse()
            .map_err(|e| Error::msg(format!("bad NATS URL {}: {e}", self.nats_url_redacted())))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let options = async_nats::ConnectOptions::new();
        let options = match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => {
                options.user_and_password(decode(user), decode(password))
            }
            (Some(token), None) => options.token(decode(token)),
            _ => options,
        };
        Ok((addr, options))
    }

    pub(super) fn check(&self) -> Result<(), Error> {
        let ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !ok {
            return Err(Error::msg(format!(
                "bad cluster name `{}`: 1 to 64 characters of a-z, A-Z, 0-9, `_`, `-`",
                self.name
            )));
        }
        if self.heartbeat.is_zero() || self.node_timeout <= self.heartbeat {
            return Err(Error::msg(
                "the cluster's node time-out must be longer than its heartbeat",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_decoded() {
        let redacted = |url: &str| ClusterConfig::new(url).nats_url_redacted();
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("nats://u:secret@10.0.0.5:4222"),
            "nats://***@10.0.0.5:4222"
        );
        assert_eq!(
            redacted("tls://tok3n@nats.example:4443"),
            "tls://***@nats.example:4443"
        );
        assert_eq!(redacted("u:secret@host"), "nats://***@host");
        assert_eq!(redacted("nats://u:secret@[bad"), "***@[bad");

        let config = ClusterConfig::new("nats://zs:p%40ss%20w%2Frd@127.0.0.1:4222");
        let (addr, _) = config.connect_options().unwrap();
        assert_eq!(addr.port(), 4222);
        assert!(ClusterConfig::new("http://x:1").connect_options().is_err());
    }

    #[test]
    fn config_checks_the_name_and_the_timings() {
        assert!(ClusterConfig::new("nats://127.0.0.1:4222").check().is_ok());
        for bad in ["", "a.b", "a b", "a*", "x>", &"n".repeat(65)] {
            let mut config = ClusterConfig::new("nats://x");
            config.name = bad.to_owned();
            let e = config.check().unwrap_err().to_string();
            assert!(e.contains("bad cluster name"), "{bad}: {e}");
        }
        let mut config = ClusterConfig::new("nats://x");
        config.node_timeout = config.heartbeat;
        assert!(config.check().is_err());
        config.heartbeat = Duration::ZERO;
        assert!(config.check().is_err());
    }
}
