//! The commands' handlers: the router, and the login flow.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use zserver::Calls;
use zserver::{Connection, Context, DownloadRequest, Error, Outgoing, Responder, Router};

use super::config::WhenFull;
use super::files::put;
use super::passwords::{change_password, delete_account, register, Limit};
use super::push::{bounded, kick_connection, CONFIRM_PATIENCE};
use super::sessions::{already_in, replaced};
use super::{db, State};
use crate::error::LoginError;
use crate::lock;
use crate::metrics::LoginOutcome;
use crate::protocol::{
    Credentials, FileInfo, Incoming, NewPassword, Push, Recipients, Welcome, WhoPage, WhoRequest,
    MAX_WHO_PAGE,
};

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .with_state(state)
        .call("register", |ctx, c: Credentials| async move {
            register(state_of(&ctx), &ctx, c.user, c.password).await
        })
        .delayed("login", |ctx, payload, responder| {
            spawn_login(
                ctx,
                payload,
                responder,
                |state, ctx, c: Credentials| async move { login(&state, &ctx, c).await },
            )
        })
        .delayed("login_token", |ctx, payload, responder| {
            spawn_login(
                ctx,
                payload,
                responder,
                |state, ctx, token: String| async move { login_token(&state, &ctx, &token).await },
            )
        })
        .call("refresh_token", |ctx, token: String| async move {
            state_of(&ctx).refresh(&ctx, &token)
        })
        .call("channel_token", |ctx, token: String| async move {
            state_of(&ctx).channel_token(&ctx, &token)
        })
        .call("logout", |ctx, (): ()| async move {
            let s = state_of(&ctx);
            let user = s.user(&ctx)?;
            s.end_session(&user, ctx.connection_id());
            s.revoke(ctx.connection());
            // Subscriptions made while logged in stay; new ones need a login again.
            s.channels
                .identify(ctx.connection(), String::new(), Vec::new());
            Ok::<_, Error>(())
        })
        .call("passwd", |ctx, p: NewPassword| async move {
            change_password(state_of(&ctx), &ctx, p.old, p.new).await
        })
        .call("delete", |ctx, password: String| async move {
            delete_account(state_of(&ctx), &ctx, password).await
        })
        .call("who", |ctx, request: WhoRequest| async move {
            let s = state_of(&ctx);
            s.user(&ctx)?;
            Ok::<_, Error>(who_page(s.online(), request))
        })
        .call("push", |ctx, push: Push| async move {
            let s = state_of(&ctx);
            let from = s.user(&ctx)?;
            let (to, everyone) = match push.to {
                Recipients::Users(users) => (users, false),
                Recipients::Everyone => (s.online(), true),
            };
            let report = s.push_to(&from, to, &push.text).await?;
            Ok::<_, Error>(if everyone { bounded(report) } else { report })
        })
        .upload("put", |ctx, body| async move {
            put(state_of(&ctx), &ctx, body).await
        })
        .call("put_partial", |ctx, name: String| async move {
            let s = state_of(&ctx);
            let user = s.user(&ctx)?;
            s.on_disk(move |s| s.partial_upload(&user, &name)).await
        })
        .download("get", |ctx, req: DownloadRequest| async move {
            let s = state_of(&ctx);
            let (user, name) = (s.user(&ctx)?, req.meta_str()?.to_owned());
            let shown = name.clone();
            let path = s.on_disk(move |s| s.file_path(&user, &name)).await?;
            // Not the I/O error itself: it names the path on the server.
            let body = Outgoing::file(path, req.offset)
                .await
                .map_err(|e| match e {
                    Error::Io(_) => Error::msg(format!("no file `{shown}`")),
                    other => other,
                })?;
            Ok(body.on_progress(s.metrics.download_progress()))
        })
        .call("ls", |ctx, (): ()| async move {
            let s = state_of(&ctx);
            let user = s.user(&ctx)?;
            s.on_disk(move |s| s.list(&user)).await
        })
        .call("stat", |ctx, name: String| async move {
            let s = state_of(&ctx);
            let user = s.user(&ctx)?;
            s.on_disk(move |s| {
                let path = s.file_path(&user, &name)?;
                let meta = std::fs::metadata(&path)
                    .map_err(|_| Error::msg(format!("no file `{name}`")))?;
                Ok(FileInfo {
                    name,
                    size: meta.len(),
                })
            })
            .await
        })
        .call("rm", |ctx, name: String| async move {
            let s = state_of(&ctx);
            let user = s.user(&ctx)?;
            s.on_disk(move |s| {
                let path = s.file_path(&user, &name)?;
                std::fs::remove_file(&path).map_err(|_| Error::msg(format!("no file `{name}`")))
            })
            .await
        })
}

/// The login server's state, shared with every handler through the router.
fn state_of(ctx: &Context) -> &Arc<State> {
    ctx.state::<Arc<State>>()
}

/// A login command (`login`, `login_token`) on its own task, in the span the handler was
/// called in (the connection's, the call's): the request read as a `T`, `check` run on it,
/// then the welcome sent and its stored messages confirmed.
fn spawn_login<T, F, Fut>(ctx: Context, payload: Bytes, responder: Responder, check: F)
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: FnOnce(Arc<State>, Context, T) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(String, Welcome), LoginError>> + Send + 'static,
{
    let state = state_of(&ctx).clone();
    let runtime = state.runtime.clone();
    let span = tracing::Span::current();
    let task = async move {
        let request: T = match postcard::from_bytes(&payload) {
            Ok(request) => request,
            Err(e) => return responder.fail(Error::BadRequest(e.to_string())),
        };
        match check(state.clone(), ctx.clone(), request).await {
            Err(e) => responder.fail(e),
            Ok((user, welcome)) => {
                // Queued in order: the welcome, then the ping that confirms it.
                responder.reply_value(&welcome);
                confirm_offline(&state, ctx.connection(), user, welcome.offline).await;
            }
        }
    };
    runtime.spawn(Box::pin(tracing::Instrument::instrument(task, span)));
}

/// `login`: the password checked (limited, in the hashing pool), then the session bound.
/// Its refusals are [`LoginError`]s: wrong password, limited, busy (the metrics count them
/// apart).
async fn login(
    state: &Arc<State>,
    ctx: &Context,
    c: Credentials,
) -> Result<(String, Welcome), LoginError> {
    let (user, password) = (c.user.clone(), c.password);
    let check = move |s: &crate::store::Store| s.check_login(&user, &password);
    let refused = |e: LoginError| {
        if let Some(outcome) = LoginOutcome::of(&e) {
            state.metrics.login(outcome);
        }
        Err(e)
    };
    let generation = match state.hashed(ctx, Limit::Failures, &c.user, check).await {
        Ok(generation) => generation,
        Err(e) => return refused(e),
    };
    state.revoke(ctx.connection());
    let welcome = bind_session(state, ctx, &c.user, Vec::new(), generation).await?;
    Ok((c.user, welcome))
}

/// `login_token`: the token checked (limited like a wrong password), the user's account
/// made if it has none (so that messages to them are stored while they are offline), the
/// session bound with the claims' `info`, and its expiry and channels granted.
async fn login_token(
    state: &Arc<State>,
    ctx: &Context,
    token: &str,
) -> Result<(String, Welcome), LoginError> {
    let claims = state.check_token(ctx, token)?;
    state.revoke(ctx.connection());
    let user = claims.sub.clone();
    let generation = db(state, move |s| s.ensure_account(&user))
        .await
        .map_err(LoginError::Other)?;
    state.grant(ctx.connection(), &claims);
    let welcome = bind_session(state, ctx, &claims.sub, claims.info_bytes(), generation).await;
    if welcome.is_err() {
        state.revoke(ctx.connection());
    }
    Ok((claims.sub, welcome?))
}

/// Binds the session of `user` to this connection (kicking their oldest past the most
/// sessions, or refusing), tells the cluster and the channels (presence shows `info`), and
/// takes the stored messages. `generation` is the account's, as the login checked it: a
/// change to the account since then (seen here meanwhile) refuses the login.
async fn bind_session(
    state: &Arc<State>,
    ctx: &Context,
    user: &str,
    info: Vec<u8>,
    generation: u64,
) -> Result<Welcome, LoginError> {
    let config = state.config();
    let elsewhere = state
        .cluster
        .as_ref()
        .map_or(0, |cl| cl.sessions_elsewhere(user));
    let max = config.max_sessions.max(1);
    let (kicked, previous) = {
        let mut sessions = lock(&state.sessions);
        sessions.prune();
        // The password checked was changed, or the account deleted, while it was checked.
        if sessions.stale(user, generation) {
            drop(sessions);
            state.metrics.login(LoginOutcome::WrongPassword);
            return Err(LoginError::WrongPassword);
        }
        let here = sessions
            .of(user)
            .iter()
            .filter(|old| old.id() != ctx.connection_id())
            .count();
        if config.when_full == WhenFull::Refuse && here + elsewhere >= max {
            return Err(LoginError::Other(Error::msg(already_in(user, max))));
        }
        let previous = sessions.bind(user, ctx.connection(), generation);
        // Past the most sessions here alone, the oldest here go; with sessions elsewhere
        // too, the cluster sees to it (each node kicks its own that are oldest).
        let all = sessions.of(user).to_vec();
        let over = all.len().saturating_sub(max);
        for old in &all[..over] {
            sessions.unbind(old.id());
        }
        (all[..over].to_vec(), previous)
    };
    if let Some(cluster) = &state.cluster {
        // Another user logged in on this connection before: that session ends.
        if let Some(previous) = previous.filter(|p| *p != user) {
            cluster.offline(&previous, ctx.connection_id());
        }
        // The kicked sessions end before the new one is announced, so that no node counts
        // them against it.
        for old in &kicked {
            cluster.offline(user, old.id());
        }
        cluster.online(user, ctx.connection());
    }
    let why = replaced(max);
    for old in &kicked {
        // The event goes out first, then the old connection closes.
        kick_connection(&*state.runtime, old, &why).await;
    }
    state.metrics.login(LoginOutcome::Ok);
    ctx.connection().span().record("user", user);
    state
        .channels
        .identify(ctx.connection(), user.to_owned(), info);
    tracing::info!(user = %user, "logged in");
    let owned = user.to_owned();
    let offline = db(state, move |s| s.take_messages(&owned))
        .await
        .map_err(LoginError::Other)?;
    Ok(Welcome {
        offline: offline
            .into_iter()
            .map(|m| Incoming {
                from: m.from,
                text: m.text,
            })
            .collect(),
    })
}

/// Waits until the client has read the welcome that carried `offline`, `user`'s stored
/// messages taken from the store: its answer to a ping queued after the welcome proves it
/// (the connection delivers in order). If the connection ends first, the messages are
/// stored again, for the next login: a client may then see one twice, never none.
async fn confirm_offline(state: &State, conn: &Connection, user: String, offline: Vec<Incoming>) {
    let ping = async { conn.ping().await.is_ok() };
    let patience = async {
        state.runtime.sleep(CONFIRM_PATIENCE).await;
        false
    };
    if offline.is_empty() || futures_lite::future::or(ping, patience).await {
        return;
    }
    tracing::info!(
        user,
        messages = offline.len(),
        "login reply not confirmed: messages stored again"
    );
    let store = state.store.clone();
    let again = blocking::unblock(move || {
        offline
            .iter()
            .try_for_each(|m| store.queue_message(&user, &m.from, &m.text))
    });
    if let Err(e) = again.await {
        tracing::warn!(error = %e, "could not store unconfirmed offline messages again");
    }
}

/// The page of `online` (sorted, no duplicates) that `request` asks for.
fn who_page(online: Vec<String>, request: WhoRequest) -> WhoPage {
    let total = online.len();
    let start = match &request.after {
        Some(after) => online.partition_point(|u| u <= after),
        None => 0,
    };
    let limit = request.limit.clamp(1, MAX_WHO_PAGE) as usize;
    let end = start.saturating_add(limit).min(total);
    let mut online = online;
    online.truncate(end);
    WhoPage {
        users: online.split_off(start),
        online: total as u64,
        more: end < total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("u{i:06}")).collect()
    }

    #[test]
    fn who_pages_through_the_online_users() {
        let online = names(0..10);
        let page = |after: Option<&str>, limit| {
            who_page(
                online.clone(),
                WhoRequest {
                    after: after.map(str::to_owned),
                    limit,
                },
            )
        };
        let first = page(None, 4);
        assert_eq!(
            (first.users, first.online, first.more),
            (names(0..4), 10, true)
        );
        let next = page(Some("u000003"), 4);
        assert_eq!(next.users, names(4..8));
        let last = page(Some("u000007"), 4);
        assert_eq!((last.users, last.more), (names(8..10), false));
        // After a name that is gone, and after the end.
        assert_eq!(page(Some("u000003x"), 1).users, names(4..5));
        assert_eq!(
            page(Some("zzz"), 4),
            WhoPage {
                users: vec![],
                online: 10,
                more: false
            }
        );
        // A limit of 0 still gives one name; a huge one at most MAX_WHO_PAGE.
        assert_eq!(page(None, 0).users, names(0..1));
        let many = who_page(
            names(0..70_000),
            WhoRequest {
                after: None,
                limit: u32::MAX,
            },
        );
        assert_eq!(many.users.len(), MAX_WHO_PAGE as usize);
        assert!(many.more);
    }
}
