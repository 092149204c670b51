//! The commands that hash a password (`register`, `login`'s check, `passwd`, `delete`):
//! each is counted against its limits before it is hashed, then hashed in the bounded pool,
//! and refused at once when a limit or the pool says no.

use std::sync::Arc;
use std::time::Instant;

use zserver::{Context, Error};

use super::limiter::{failure_keys, registration_key, Attempt};
use super::sessions::{ACCOUNT_DELETED, PASSWORD_CHANGED};
use super::{db, store_err, State};
use crate::error::LoginError;
use crate::lock;
use crate::store::{Store, StoreError};

/// Which limit an attempt counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// Failed password checks, per (address, account), per address and per account (login,
    /// passwd, delete): only a wrong password counts; a failure is told to the cluster's
    /// other nodes.
    Failures,
    /// Registrations per address: every one that reached the hash counts, whatever its
    /// outcome (a name refused before, as bad or taken, does not).
    Registrations,
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
        let retry_after = self.config().attempt_window;
        let (limiter, keys, refusal) = match limit {
            Limit::Failures => (
                &self.limiter,
                failure_keys(addr, user),
                LoginError::Limited { retry_after },
            ),
            Limit::Registrations => (
                &self.registrations,
                vec![registration_key(addr)],
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
        // Only a wrong password is a failed check (a store that failed checked nothing).
        let failed = match limit {
            Limit::Registrations => true,
            Limit::Failures => matches!(result, Err(StoreError::WrongPassword)),
        };
        let keys = attempt.end(failed);
        if let (true, Limit::Failures, Some(cluster)) = (failed, limit, &self.cluster) {
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
    let addr = ctx.peer_addr().ip();
    if lock(&state.registrations).blocked(&registration_key(addr), Instant::now()) {
        let retry_after = state.config().attempt_window;
        return Err(LoginError::RegistrationsLimited { retry_after }.into());
    }
    // A bad, or taken, name (or a bad password) is refused before anything is hashed, and
    // counts against no limit.
    let (name, pw) = (user.clone(), password.clone());
    db(state, move |s| s.check_new_user(&name, &pw)).await?;
    let name = user.clone();
    let work = move |s: &Store| s.add_user(&name, &password);
    Ok(state.hashed(ctx, Limit::Registrations, &user, work).await?)
}

/// `passwd`: the logged-in user's new password, once the old one checks out. The user's
/// other sessions end: here at once, on other nodes when they see the change in the store.
pub(super) async fn change_password(
    state: &Arc<State>,
    ctx: &Context,
    old: String,
    new: String,
) -> Result<(), Error> {
    let user = state.user(ctx)?;
    let (name, tag) = (user.clone(), state.session_tag(ctx.connection_id()));
    let work = move |s: &Store| s.change_password_keeping(&name, &old, &new, Some(&tag));
    let generation = state.hashed(ctx, Limit::Failures, &user, work).await?;
    state.changed_account();
    let stale = lock(&state.sessions).take_stale(&user, generation, Some(ctx.connection_id()));
    state.kick_all(&user, stale, PASSWORD_CHANGED).await;
    Ok(())
}

/// `delete`: the logged-in user's account, messages and files, once the password checks
/// out.
pub(super) async fn delete_account(
    state: &Arc<State>,
    ctx: &Context,
    password: String,
) -> Result<(), Error> {
    let user = state.user(ctx)?;
    // The store names this session as the one its server ends itself, so that no watcher
    // kicks it before it has its answer.
    let (name, tag) = (user.clone(), state.session_tag(ctx.connection_id()));
    let work = move |s: &Store| {
        s.verify(&name, &password)?;
        s.delete_user_keeping(&name, Some(&tag))
    };
    state.hashed(ctx, Limit::Failures, &user, work).await?;
    state.changed_account();
    let dir = state.files.join(&user);
    blocking::unblock(move || {
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
    // This session ends; the user's others here are kicked at once, those on other nodes
    // when they see the deletion in the store.
    state.end_session(&user, ctx.connection_id());
    let others = lock(&state.sessions).take_all(&user, ctx.connection_id());
    state.kick_all(&user, others, ACCOUNT_DELETED).await;
    Ok(())
}
