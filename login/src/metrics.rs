//! What the login server counts for monitoring: logins by outcome, pushes delivered live or
//! stored, file bytes moved, and (with [`LoginConfig::observe_calls`](crate::LoginConfig::observe_calls))
//! every command its handlers complete. Lock-free counters, read by an exporter when scraped
//! ([`LoginServer::metrics`](crate::LoginServer::metrics)).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use zserver::metrics::CallMetrics;

use crate::error::LoginError;

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Logged in.
    Ok,
    /// Unknown user or wrong password.
    WrongPassword,
    /// Refused because of too many failed logins from the address or for the account.
    Limited,
    /// Refused because the password-hashing capacity was exhausted (the server was busy).
    Busy,
    /// A token login (or refresh) refused: a bad signature, expired, a wrong algorithm ...
    BadToken,
}

impl LoginOutcome {
    /// Every outcome, in the order they are reported.
    pub const ALL: [LoginOutcome; 5] = [
        LoginOutcome::Ok,
        LoginOutcome::WrongPassword,
        LoginOutcome::Limited,
        LoginOutcome::Busy,
        LoginOutcome::BadToken,
    ];

    /// The outcome a failed login's error stands for (`None` for other failures: a bad
    /// name, the store, the connection).
    pub fn of(error: &LoginError) -> Option<Self> {
        match error {
            LoginError::WrongPassword => Some(LoginOutcome::WrongPassword),
            LoginError::Limited { .. } => Some(LoginOutcome::Limited),
            LoginError::Busy { .. } => Some(LoginOutcome::Busy),
            LoginError::BadToken(_) => Some(LoginOutcome::BadToken),
            _ => None,
        }
    }

    /// The outcome's name in metrics: `ok`, `wrong_password`, `limited`, `busy` or
    /// `bad_token`.
    pub fn name(self) -> &'static str {
        match self {
            LoginOutcome::Ok => "ok",
            LoginOutcome::WrongPassword => "wrong_password",
            LoginOutcome::Limited => "limited",
            LoginOutcome::Busy => "busy",
            LoginOutcome::BadToken => "bad_token",
        }
    }
}

/// The login server's live counters (relaxed atomics: each figure is exact, a snapshot is
/// not atomic).
#[derive(Debug, Default)]
pub struct LoginMetrics {
    logins: [AtomicU64; 5],
    pushes_live: AtomicU64,
    pushes_stored: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    calls: Arc<CallMetrics>,
}

/// A snapshot of [`LoginMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginSnapshot {
    /// Login attempts per outcome name, in the order of [`LoginOutcome::ALL`].
    pub logins: Vec<(&'static str, u64)>,
    /// Messages handed to a recipient's live session (one per recipient).
    pub pushes_live: u64,
    /// Messages stored for a recipient who was offline or not reading.
    pub pushes_stored: u64,
    /// File bytes received from users (uploads).
    pub bytes_up: u64,
    /// File bytes sent to users (downloads).
    pub bytes_down: u64,
}

impl LoginMetrics {
    /// Counts one login attempt.
    pub fn login(&self, outcome: LoginOutcome) {
        let i = LoginOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.logins[i].fetch_add(1, Relaxed);
    }

    /// Counts a push's recipients: `live` reached at once, `stored` kept for later.
    pub fn pushed(&self, live: usize, stored: usize) {
        self.pushes_live.fetch_add(live as u64, Relaxed);
        self.pushes_stored.fetch_add(stored as u64, Relaxed);
    }

    /// Counts file bytes received in an upload.
    pub fn uploaded(&self, bytes: u64) {
        self.bytes_up.fetch_add(bytes, Relaxed);
    }

    /// A progress callback for a download that counts its bytes as they are sent.
    pub fn download_progress(self: &Arc<Self>) -> impl FnMut(u64, Option<u64>) + Send + 'static {
        let metrics = self.clone();
        let mut counted = 0;
        move |done, _total| {
            metrics
                .bytes_down
                .fetch_add(done.saturating_sub(counted), Relaxed);
            counted = counted.max(done);
        }
    }

    /// Durations, counts and errors of the commands the server's handlers completed (empty
    /// unless [`LoginConfig::observe_calls`](crate::LoginConfig::observe_calls) is set).
    pub fn calls(&self) -> &Arc<CallMetrics> {
        &self.calls
    }

    /// The figures now.
    pub fn snapshot(&self) -> LoginSnapshot {
        LoginSnapshot {
            logins: LoginOutcome::ALL
                .iter()
                .zip(&self.logins)
                .map(|(o, n)| (o.name(), n.load(Relaxed)))
                .collect(),
            pushes_live: self.pushes_live.load(Relaxed),
            pushes_stored: self.pushes_stored.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_pushes_and_bytes() {
        let m = Arc::new(LoginMetrics::default());
        m.login(LoginOutcome::Ok);
        m.login(LoginOutcome::Busy);
        m.login(LoginOutcome::Busy);
        m.pushed(2, 1);
        m.uploaded(10);
        let mut progress = m.download_progress();
        progress(100, Some(300));
        progress(300, Some(300));
        let s = m.snapshot();
        assert_eq!(
            s.logins,
            vec![
                ("ok", 1),
                ("wrong_password", 0),
                ("limited", 0),
                ("busy", 2),
                ("bad_token", 0)
            ]
        );
        assert_eq!((s.pushes_live, s.pushes_stored), (2, 1));
        assert_eq!((s.bytes_up, s.bytes_down), (10, 300));
    }
}
