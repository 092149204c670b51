//! `SIGHUP` to `zserver serve`: the command line and the config file are read again and
//! the running server takes what it can ([`LoginServer::reload`]) without dropping a
//! connection; what needs a restart is logged.

use std::net::SocketAddr;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use zserver_login::LoginServer;

use crate::bench::BoxError;
use crate::login::{login_config, ServeArgs};

/// What `zserver serve` started with that only a restart changes, beside the login
/// server's own settings.
pub(crate) struct Started {
    /// `--listen`.
    pub(crate) listen: SocketAddr,
    /// `--backend`.
    pub(crate) backend: String,
}

impl Started {
    /// What `args` start with.
    pub(crate) fn of(args: &ServeArgs) -> Self {
        Self {
            listen: args.listen,
            backend: args.backend.clone(),
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM, reloading `server` on every SIGHUP meanwhile.
pub(crate) fn until_stopped(server: &LoginServer, started: &Started) -> Result<(), BoxError> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(server, started),
            _ => break,
        }
    }
    Ok(())
}

/// One reload: read, apply, log.
fn reload(server: &LoginServer, started: &Started) {
    let args = match crate::serve_args() {
        Ok(args) => args,
        Err(e) => return refused(&e.to_string()),
    };
    let config = match login_config(&args) {
        Ok(config) => config,
        Err(e) => return refused(&e.to_string()),
    };
    let mut report = server.reload(&config);
    let restart = "the server listens there from the start";
    if args.listen != started.listen {
        report.not_applied.push(("listen".into(), restart.into()));
    }
    if args.backend != started.backend {
        let why = "the back end is chosen at start";
        report.not_applied.push(("backend".into(), why.into()));
    }
    let applied = match report.applied.is_empty() {
        true => "nothing changed".to_string(),
        false => report.applied.join(", "),
    };
    tracing::info!(%applied, "SIGHUP: reloaded");
    println!("reloaded: {applied}");
    for (setting, why) in &report.not_applied {
        tracing::warn!(setting, why, "SIGHUP: not applied");
        println!("not reloaded: {setting} ({why}; restart to apply)");
    }
}

fn refused(why: &str) {
    tracing::error!(why, "SIGHUP: reload failed, nothing changed");
    println!("reload failed, nothing changed: {why}");
}
