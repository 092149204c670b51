//! The commands that hash a password (`register`, `login`'s check, `passwd`, `delete`):
//! each is counted against its limits before it is hashed, then hashed in the bounded pool,
//! and refused at once when a limit or the pool says no.

use std::net::IpAddr;
use std::sync::Arc;

use zserver::{Context, Error};

use super::limiter::Attempt;
use super::{store_err, State};
use crate::error::LoginError;
use crate::store::{check_name, Store, StoreError};

/// Which limit an attempt counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// Failed password checks, per address and per account (login, passwd, delete); a
    /// failure is told to the cluster's other nodes.
    Failures,
    /// Registrations per address: every one counts, whatever its outcome.
    Registrations,
}

/// The limiter keys of a password check by `user` from `addr`. A name that breaks the
/// naming rule counts against the address only (and one shared key), so a huge name is not
/// kept as a key.
fn failure_keys(addr: IpAddr, user: &str) -> Vec<String> {
    let user_key = match check_name(user) {
        Ok(()) => format!("user:{user}"),
        Err(_) => "user:(bad name)".to_owned(),
    };
    vec![format!("addr:{addr}"), user_key]
}

impl State {
    /// Runs `work` (which hashes) for the client on `ctx` acting as `user`, as an attempt
    /// counted against `limit` before it starts: refused at once if the limit is reached or
    /// the hashing pool is busy, then run in the pool, off the runtime's threads.
    pub(super) async fn hashed<T: Send + 'static>(
        self: &Arc<Self>,
        ctx: &Context,
        limit: Limit,
        user: &str,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, LoginError> {
        let addr = ctx.peer_addr().ip();
        let retry_after = self.config.attempt_window;
        let (limiter, keys, refusal) = match limit {
            Limit::Failures => (
                &self.limiter,
                failure_keys(addr, user),
                LoginError::Limited { retry_after },
            ),
            Limit::Registrations => (
                &self.registrations,
                vec![format!("addr:{addr}")],
                LoginError::RegistrationsLimited { retry_after },
            ),
        };
        let attempt = Attempt::begin(limiter, keys).ok_or(refusal)?;
        let store = self.store.clone();
        let result = match self.hashing.run(addr, move || work(&store)).await {
            Ok(result) => result,
            Err(busy) => {
                // Nothing was checked: not a failure.
                attempt.end(false);
                return Err(LoginError::Busy {
                    retry_after: busy.retry_after,
                });
            }
        };
        let failed = limit == Limit::Registrations || result.is_err();
        let keys = attempt.end(failed);
        if let (Err(_), Limit::Failures, Some(cluster)) = (&result, limit, &self.cluster) {
            cluster.failed(keys);
        }
        result.map_err(|e| match e {
            StoreError::WrongPassword => LoginError::WrongPassword,
            other => LoginError::Other(store_err(other)),
        })
    }
}

/// `register`: a new account, limited per address.
pub(super) async fn register(
    state: &Arc<State>,
    ctx: &Context,
    user: String,
    password: String,
) -> Result<(), Error> {
    let name = user.clone();
    let work = move |s: &Store| s.add_user(&name, &password);
    Ok(state.hashed(ctx, Limit::Registrations, &user, work).await?)
}

/// `passwd`: the logged-in user's new password, once the old one checks out.
pub(super) async fn change_password(
    state: &Arc<State>,
    ctx: &Context,
    old: String,
    new: String,
) -> Result<(), Error> {
    let user = state.user(ctx)?;
    let name = user.clone();
    let work = move |s: &Store| s.change_password(&name, &old, &new);
    Ok(state.hashed(ctx, Limit::Failures, &user, work).await?)
}

/// `delete`: the logged-in user's account, messages and files, once the password checks
/// out.
pub(super) async fn delete_account(
    state: &Arc<State>,
    ctx: &Context,
    password: String,
) -> Result<(), Error> {
    let user = state.user(ctx)?;
    let name = user.clone();
    let work = move |s: &Store| {
        s.verify(&name, &password)?;
        s.delete_user(&name)
    };
    state.hashed(ctx, Limit::Failures, &user, work).await?;
    let dir = state.files.join(&user);
    blocking::unblock(move || {
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
    state.end_session(&user, ctx.connection_id());
    Ok(())
}
