//! [`LoginServer::reload`](super::LoginServer::reload): a running server takes new
//! settings without dropping a connection. [`settings`] is the one list of what reloads:
//! each setting is either applied live or reported as needing a restart, with why.

use std::sync::Arc;

use super::limiter::Limiter;
use super::{LoginConfig, State};
use crate::lock;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The settings now in force from the new configuration (by their config-file names;
    /// the token keys and the TLS certificate are read again whenever they are set).
    pub applied: Vec<String>,
    /// Settings that changed but were not applied, each with why (most need a restart).
    pub not_applied: Vec<(String, String)>,
}

impl ReloadReport {
    /// Whether every change was applied.
    pub fn complete(&self) -> bool {
        self.not_applied.is_empty()
    }
}

/// One setting of [`settings`]: its name, whether the new configuration changes it, and
/// how it reloads.
struct Setting {
    name: &'static str,
    changed: bool,
    how: How,
}

/// A part of the state built from settings, rebuilt once per reload however many of its
/// settings changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Limiters,
    Namespaces,
    Tokens,
    Certificates,
}

enum How {
    /// Copied into the configuration in force (read at each use).
    Live(fn(&mut LoginConfig, &LoginConfig)),
    /// Copied, then the part of the state built from it is rebuilt.
    Rebuild(fn(&mut LoginConfig, &LoginConfig), Part),
    /// Only a restart applies it, for this reason.
    Restart(&'static str),
}

impl Part {
    /// Rebuilds this part from the new configuration.
    fn apply(self, state: &State, new: &LoginConfig) -> Result<(), String> {
        match self {
            Part::Limiters => limiters(state, new),
            Part::Namespaces => namespaces(state, new),
            Part::Tokens => tokens(state, new),
            Part::Certificates => certificates(state, new),
        }
    }
}

/// Every setting of [`LoginConfig`] and how it reloads: add a new one here.
fn settings(old: &LoginConfig, new: &LoginConfig) -> Vec<Setting> {
    macro_rules! setting {
        ($name:literal, $($field:ident).+, $how:expr) => {
            Setting {
                name: $name,
                changed: old.$($field).+ != new.$($field).+,
                how: $how,
            }
        };
    }
    macro_rules! copy {
        ($($field:ident).+) => {
            |to: &mut LoginConfig, from: &LoginConfig| to.$($field).+ = from.$($field).+.clone()
        };
    }
    macro_rules! live {
        ($name:literal, $($field:ident).+) => {
            setting!($name, $($field).+, How::Live(copy!($($field).+)))
        };
    }
    macro_rules! failed {
        ($name:literal, $($field:ident).+) => {
            setting!($name, $($field).+, How::Rebuild(copy!($($field).+), Part::Limiters))
        };
    }
    let debug_differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    vec![
        live!("quota-mib", quota_bytes),
        live!("keep-partial-uploads", keep_partial_uploads),
        live!("refuse-extra-login", when_full),
        failed!("max-failed-logins", max_failed_logins),
        failed!("max-failed-per-address", max_failed_per_address),
        failed!("max-failed-per-account", max_failed_per_account),
        failed!("max-registrations", max_registrations),
        failed!("attempt-window", attempt_window),
        setting!(
            "channels",
            channels,
            How::Rebuild(copy!(channels), Part::Namespaces)
        ),
        Setting {
            name: "limits.rate",
            changed: debug_differs(&old.rate, &new.rate),
            how: How::Live(copy!(rate)),
        },
        Setting {
            name: "token keys",
            changed: new.tokens.is_some() || old.tokens.is_some(),
            how: How::Rebuild(copy!(tokens), Part::Tokens),
        },
        Setting {
            name: "tls-cert",
            changed: new.ws_options.tls.is_some() || old.ws_options.tls.is_some(),
            how: How::Rebuild(|_, _| {}, Part::Certificates),
        },
        setting!(
            "max-sessions",
            max_sessions,
            How::Restart("sessions are counted (across the cluster) with the bound set at start")
        ),
        Setting {
            name: "hash-concurrency, hash-queue, hash-per-address",
            changed: (old.hash_concurrency, old.hash_queue, old.hash_per_address)
                != (new.hash_concurrency, new.hash_queue, new.hash_per_address),
            how: How::Restart("the hashing pool is sized at start"),
        },
        Setting {
            name: "argon2",
            changed: debug_differs(&old.password, &new.password),
            how: How::Restart("the store's hashing parameters are set at start"),
        },
        setting!(
            "data",
            data_dir,
            How::Restart("the data directory is opened at start")
        ),
        setting!("store", store, How::Restart("the store is opened at start")),
        Setting {
            name: "cluster",
            changed: debug_differs(&old.cluster, &new.cluster),
            how: How::Restart("the cluster is joined at start"),
        },
        Setting {
            name: "connection settings (compression, trusted-proxy, proxy-protocol)",
            changed: debug_differs(&old.connection, &new.connection),
            how: How::Restart("the listeners take them at start"),
        },
        setting!(
            "metrics",
            observe_calls,
            How::Restart("the call hook is set at start")
        ),
        setting!(
            "listen-ws",
            ws_listen,
            How::Restart("the WebSocket port is bound at start")
        ),
        Setting {
            name: "allowed-origin, web",
            changed: (&old.ws_options.allowed_origins, &old.ws_options.web_root)
                != (&new.ws_options.allowed_origins, &new.ws_options.web_root),
            how: How::Restart("the WebSocket listener takes them at start"),
        },
        setting!(
            "account-watch",
            account_watch,
            How::Restart("the watcher's period is set at start")
        ),
    ]
}

/// Applies what of `new` can be applied to `state`; reports the rest.
pub(super) fn reload(state: &State, new: &LoginConfig) -> ReloadReport {
    let old = state.config();
    let mut merged = (*old).clone();
    let mut report = ReloadReport::default();
    let mut rebuild = Vec::new();
    for setting in settings(&old, new) {
        if !setting.changed {
            continue;
        }
        match setting.how {
            How::Live(copy) => {
                copy(&mut merged, new);
                report.applied.push(setting.name.into());
            }
            How::Rebuild(copy, part) => {
                copy(&mut merged, new);
                rebuild.push((setting.name, part));
            }
            How::Restart(why) => {
                report.not_applied.push((setting.name.into(), why.into()));
            }
        }
    }
    let mut parts: Vec<Part> = rebuild.iter().map(|(_, part)| *part).collect();
    parts.sort();
    parts.dedup();
    for part in parts {
        let outcome = part.apply(state, new);
        for (name, _) in rebuild.iter().filter(|(_, p)| *p == part) {
            match &outcome {
                Ok(()) => report.applied.push(name.to_string()),
                Err(why) => report.not_applied.push((name.to_string(), why.clone())),
            }
        }
    }
    *state.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
    report
}

/// The failed-login and registration bounds (the counts so far stay).
fn limiters(state: &State, config: &LoginConfig) -> Result<(), String> {
    lock(&state.limiter).reconfigure(Limiter::failed_logins(config));
    lock(&state.registrations).reconfigure(Limiter::registrations(config));
    Ok(())
}

/// The channel namespaces: the next subscribe or publish follows them.
fn namespaces(state: &State, config: &LoginConfig) -> Result<(), String> {
    let namespaces = config.channels.iter().map(|ns| ns.namespace()).collect();
    state.channels.set_namespaces(namespaces);
    Ok(())
}

/// The token verifier, built from the keys the new configuration read; a bad key keeps
/// the old one.
fn tokens(state: &State, config: &LoginConfig) -> Result<(), String> {
    let verifier = match &config.tokens {
        Some(tokens) => Some(Arc::new(
            crate::tokens::Verifier::new(tokens).map_err(|e| format!("kept the old keys: {e}"))?,
        )),
        None => None,
    };
    *state.tokens.write().unwrap_or_else(|e| e.into_inner()) = verifier;
    Ok(())
}

/// The WebSocket listener's certificate, read again from its files (the same files: the
/// listener holds its certificates from the start).
fn certificates(state: &State, new: &LoginConfig) -> Result<(), String> {
    let old = state.config();
    let (now, wanted) = (&old.ws_options.tls, &new.ws_options.tls);
    match (now, wanted) {
        (Some(now), Some(wanted))
            if (now.cert_path(), now.key_path()) == (wanted.cert_path(), wanted.key_path()) =>
        {
            now.reload()
                .map_err(|e| format!("kept the old certificate: {e}"))
        }
        (Some(_), Some(_)) => Err("other certificate files: a restart takes them".into()),
        _ => Err("TLS is turned on or off at start".into()),
    }
}
