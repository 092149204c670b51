//! [`LoginError`]: why a command that checks or sets a password (`register`, `login`,
//! `passwd`, `delete`) or a token (`login_token`, `refresh_token`) failed, with the refusals a client acts on told apart.
//!
//! On the wire these are ordinary handler errors (`Error` frame, code 1); the message text
//! is fixed for each refusal, and [`LoginError::from`] reads it back:
//!
//! | refusal | message |
//! | --- | --- |
//! | [`LoginError::Busy`] | `server busy, retry in N s` |
//! | [`LoginError::Limited`] | `too many failed logins; try again in N s` |
//! | [`LoginError::RegistrationsLimited`] | `too many registrations from this address; try again in N s` |
//! | [`LoginError::WrongPassword`] | `wrong user name or password` |
//! | [`LoginError::BadToken`] | `invalid token: REASON` |

use std::time::Duration;

use zserver::Error;

/// Why a password-checking command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The server is already hashing as many passwords as it allows and its queue is full,
    /// or this address has too many attempts in progress: nothing was checked (and nothing
    /// counts as a failure). Retry after `retry_after`.
    #[error("server busy, retry in {} s", .retry_after.as_secs())]
    Busy {
        /// How long to wait before retrying (whole seconds, at least 1).
        retry_after: Duration,
    },
    /// Too many failed logins within the window for this account from this address, from
    /// this address over all accounts, or for this account from all addresses (attempts in
    /// progress count too); nothing was checked.
    #[error("too many failed logins; try again in {} s", .retry_after.as_secs())]
    Limited {
        /// How long until the window has room again (at most).
        retry_after: Duration,
    },
    /// Too many registrations from this address within the window.
    #[error(
        "too many registrations from this address; try again in {} s",
        .retry_after.as_secs()
    )]
    RegistrationsLimited {
        /// How long until the window has room again (at most).
        retry_after: Duration,
    },
    /// Wrong password, or no such user (deliberately the same).
    #[error("wrong user name or password")]
    WrongPassword,
    /// A token (`login_token`, `refresh_token`) was refused; the reason in a few words
    /// (`expired`, `bad signature`, `algorithm not accepted` ...).
    #[error("invalid token: {0}")]
    BadToken(String),
    /// Any other failure (a bad name, a duplicate, the connection, the store ...).
    #[error(transparent)]
    Other(Error),
}

impl LoginError {
    /// Reads a refusal back from a handler error's message; `None` for other messages.
    fn parse(message: &str) -> Option<Self> {
        let seconds = |rest: &str| {
            rest.strip_suffix(" s")
                .and_then(|n| n.parse::<u64>().ok())
                .map(Duration::from_secs)
        };
        if let Some(rest) = message.strip_prefix("server busy, retry in ") {
            return seconds(rest).map(|retry_after| LoginError::Busy { retry_after });
        }
        if let Some(rest) = message.strip_prefix("too many failed logins; try again in ") {
            return seconds(rest).map(|retry_after| LoginError::Limited { retry_after });
        }
        let registrations = "too many registrations from this address; try again in ";
        if let Some(rest) = message.strip_prefix(registrations) {
            return seconds(rest)
                .map(|retry_after| LoginError::RegistrationsLimited { retry_after });
        }
        if let Some(reason) = message.strip_prefix("invalid token: ") {
            return Some(LoginError::BadToken(reason.to_owned()));
        }
        (message == "wrong user name or password").then_some(LoginError::WrongPassword)
    }

    /// Whether this is [`LoginError::Busy`].
    pub fn is_busy(&self) -> bool {
        matches!(self, LoginError::Busy { .. })
    }
}

impl From<Error> for LoginError {
    /// A handler error carrying one of the refusals' messages becomes that refusal; anything
    /// else is [`LoginError::Other`].
    fn from(e: Error) -> Self {
        match &e {
            Error::Remote(message) => LoginError::parse(message).unwrap_or(LoginError::Other(e)),
            _ => LoginError::Other(e),
        }
    }
}

impl From<LoginError> for Error {
    /// What a handler returns: the refusal's message as a handler error.
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::Other(e) => e,
            refusal => Error::Remote(refusal.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_survive_the_wire_as_themselves() {
        let secs = Duration::from_secs;
        for refusal in [
            LoginError::Busy {
                retry_after: secs(3),
            },
            LoginError::Limited {
                retry_after: secs(60),
            },
            LoginError::RegistrationsLimited {
                retry_after: secs(60),
            },
            LoginError::WrongPassword,
            LoginError::BadToken("expired".into()),
        ] {
            let wire: Error = refusal.clone().into();
            assert!(matches!(wire, Error::Remote(_)), "{wire:?}");
            assert_eq!(LoginError::from(wire), refusal);
        }
        // Other errors stay what they were, also look-alikes with no number.
        for other in [
            Error::Remote("server busy, retry in soon s".into()),
            Error::Remote("user `ann` already exists".into()),
            Error::Closed,
        ] {
            assert_eq!(LoginError::from(other.clone()), LoginError::Other(other));
        }
        assert!(LoginError::Busy {
            retry_after: secs(1)
        }
        .is_busy());
        assert!(!LoginError::WrongPassword.is_busy());
    }
}
