//! Token logins on the server: the check (counted against the failed-login limit of the
//! address, like a wrong password), the session's expiry (the connection is told and closed
//! when the token runs out, unless a newer one came with `refresh_token`), and the private
//! channels its `channels` claim grants.
//!
//! Checking a token runs inline, on the login's task: HS256, ES256 and EdDSA take a few
//! microseconds, RS256 (a public-key check with a small exponent) some tens; a token is at
//! most [`MAX_TOKEN_BYTES`](crate::tokens::MAX_TOKEN_BYTES) long, and failures count
//! against the address's limit, so a flood of forged tokens costs the server little.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future::or;
use zserver::{Connection, Context, Error};

use super::limiter::Attempt;
use super::push::kick_connection;
use super::State;
use crate::error::LoginError;
use crate::lock;
use crate::metrics::LoginOutcome;
use crate::tokens::{unix_now, TokenClaims};

/// What tokens gave a connection (one of its extensions): the grant of its token login
/// (none for a password login), and the private channels subscribe tokens added, each with
/// when it runs out (seconds since the Unix epoch).
#[derive(Default)]
pub(super) struct TokenSession(Mutex<Option<Grant>>, Mutex<Vec<(String, u64)>>);

/// Most channels subscribe tokens may add to one connection at once.
const MAX_EXTRA_CHANNELS: usize = 1024;

/// A token's grant to its connection.
struct Grant {
    /// Told apart from the grants that came before it on the same connection.
    id: u64,
    /// The token's `sub`.
    user: String,
    /// The private channels it may use.
    channels: HashSet<String>,
    /// Dropped with the grant (replaced, revoked): its expiry timer ends.
    _cancel: async_channel::Sender<()>,
}

/// The ids of grants.
static GRANTS: AtomicU64 = AtomicU64::new(0);

/// The reason of the `kicked` event a connection gets when its token expires.
pub(super) const EXPIRED: &str = "token expired";

/// Whether the token `conn` logged in with grants the private `channel`.
pub(super) fn granted(conn: &Connection, channel: &str) -> bool {
    let session = conn.extension::<TokenSession>();
    let now = unix_now().as_secs();
    lock(&session.0)
        .as_ref()
        .is_some_and(|g| g.channels.contains(channel))
        || lock(&session.1)
            .iter()
            .any(|(c, until)| c == channel && *until > now)
}

impl State {
    /// The claims of `token` from the client on `ctx`, once checked: refused at once if its
    /// address reached the failed-login limit; a refusal counts against it.
    pub(super) fn check_token(
        &self,
        ctx: &Context,
        token: &str,
    ) -> Result<TokenClaims, LoginError> {
        let Some(verifier) = self.verifier() else {
            return Err(LoginError::Other(Error::msg(
                "this server takes no login tokens",
            )));
        };
        let keys = vec![super::limiter::address_key(ctx.peer_addr().ip())];
        let retry_after = self.config().attempt_window;
        let result = match Attempt::begin(&self.limiter, keys) {
            None => Err(LoginError::Limited { retry_after }),
            Some(attempt) => {
                let result = verifier.verify(token).map_err(LoginError::BadToken);
                let keys = attempt.end(result.is_err());
                if let (Err(_), Some(cluster)) = (&result, &self.cluster) {
                    cluster.failed(keys);
                }
                result
            }
        };
        if let Err(e) = &result {
            if let Some(outcome) = LoginOutcome::of(e) {
                self.metrics.login(outcome);
            }
        }
        result
    }

    /// Gives `conn` the grant of `claims` (replacing any before it) and starts its expiry
    /// timer: at `exp` plus the leeway the session ends, unless the grant was replaced or
    /// revoked, or the connection closed, first.
    pub(super) fn grant(self: &Arc<Self>, conn: &Connection, claims: &TokenClaims) {
        let id = GRANTS.fetch_add(1, Relaxed);
        let (cancel, cancelled) = async_channel::bounded::<()>(1);
        *lock(&conn.extension::<TokenSession>().0) = Some(Grant {
            id,
            user: claims.sub.clone(),
            channels: claims.channels.iter().cloned().collect(),
            _cancel: cancel,
        });
        let leeway = self
            .config()
            .tokens
            .as_ref()
            .map_or(Duration::ZERO, |t| t.leeway);
        let left = (Duration::from_secs(claims.exp) + leeway).saturating_sub(unix_now());
        let (state, conn, runtime) = (Arc::downgrade(self), conn.clone(), self.runtime.clone());
        let task = async move {
            let expired = async {
                runtime.sleep(left).await;
                true
            };
            let cancelled = async {
                let _ = cancelled.recv().await;
                false
            };
            let closed = async {
                conn.closed().await;
                false
            };
            if or(expired, or(cancelled, closed)).await {
                if let Some(state) = state.upgrade() {
                    state.expire(&conn, id).await;
                }
            }
        };
        self.runtime.spawn(Box::pin(task));
    }

    /// Forgets what tokens gave `conn` (logout, a new login on it).
    pub(super) fn revoke(&self, conn: &Connection) {
        let session = conn.extension::<TokenSession>();
        lock(&session.0).take();
        lock(&session.1).clear();
    }

    /// `channel_token`: a subscribe token for the session on `ctx` (any login, the same
    /// `sub`) grants the private channels of its `channels` claim until its `exp` (plus
    /// the leeway), for subscribing and publishing; subscriptions made stay after it.
    pub(super) fn channel_token(&self, ctx: &Context, token: &str) -> Result<(), Error> {
        let user = self.user(ctx)?;
        let claims = self.check_token(ctx, token)?;
        if claims.sub != user {
            let why = format!("it is for `{}`, this session is `{user}`'s", claims.sub);
            return Err(LoginError::BadToken(why).into());
        }
        if claims.channels.is_empty() {
            return Err(LoginError::BadToken("it grants no `channels`".into()).into());
        }
        let leeway = self
            .config()
            .tokens
            .as_ref()
            .map_or(0, |t| t.leeway.as_secs());
        let (until, now) = (claims.exp.saturating_add(leeway), unix_now().as_secs());
        let session = ctx.connection().extension::<TokenSession>();
        let mut extra = lock(&session.1);
        extra.retain(|(_, until)| *until > now);
        if extra.len() + claims.channels.len() > MAX_EXTRA_CHANNELS {
            return Err(Error::msg(format!(
                "subscribe tokens grant at most {MAX_EXTRA_CHANNELS} channels to a connection"
            )));
        }
        extra.extend(claims.channels.into_iter().map(|c| (c, until)));
        Ok(())
    }

    /// Ends the session on `conn` whose grant `id` expired (if it is still the one): the
    /// client gets `kicked` ("token expired"), then the connection closes.
    async fn expire(&self, conn: &Connection, id: u64) {
        let Some(grant) = lock(&conn.extension::<TokenSession>().0).take_if(|g| g.id == id) else {
            return;
        };
        self.end_session(&grant.user, conn.id());
        self.channels.identify(conn, String::new(), Vec::new());
        tracing::info!(user = %grant.user, "token expired");
        kick_connection(&*self.runtime, conn, EXPIRED).await;
    }

    /// `refresh_token`: a newer token for the session on `ctx` (which logged in with a
    /// token, for the same `sub`) replaces its expiry, channels and info.
    pub(super) fn refresh(self: &Arc<Self>, ctx: &Context, token: &str) -> Result<(), Error> {
        let user = self.user(ctx)?;
        let conn = ctx.connection();
        if lock(&conn.extension::<TokenSession>().0).is_none() {
            return Err(Error::msg(
                "this session did not log in with a token (login_token): nothing to refresh",
            ));
        }
        let claims = self.check_token(ctx, token)?;
        if claims.sub != user {
            let why = format!("it is for `{}`, this session is `{user}`'s", claims.sub);
            return Err(LoginError::BadToken(why).into());
        }
        self.grant(conn, &claims);
        self.channels.identify(conn, user, claims.info_bytes());
        Ok(())
    }
}
