//! Handlers by command name: the [`Router`], the [`Context`] a handler sees and the
//! [`Responder`] that carries its answer back.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use event_listener::Event;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::Error;
use crate::frame::MAX_COMMAND_LEN;
use crate::runtime::BoxFuture;

/// What a handler is given besides its payload: the connection the call came in on.
#[derive(Clone)]
pub struct Context {
    conn: Connection,
}

impl Context {
    pub(crate) fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// The connection the call arrived on; use it to call or push back to the peer.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The connection's id, unique within this process.
    pub fn connection_id(&self) -> u64 {
        self.conn.id()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer_addr()
    }
}

/// Counts requests being handled (answers still owed, one-way handlers still running), so
/// that a connection can bound them and shutdown can wait for them. A connection's counter
/// also counts into its server's.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    changed: Event,
    parent: Option<Arc<InFlight>>,
}

impl InFlight {
    /// A counter that also counts into `parent`.
    pub(crate) fn child(parent: Arc<InFlight>) -> Self {
        Self {
            parent: Some(parent),
            ..Self::default()
        }
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        let mut level = Some(self);
        while let Some(counter) = level {
            counter.count.fetch_add(1, Ordering::AcqRel);
            level = counter.parent.as_ref();
        }
        InFlightGuard(self.clone())
    }

    /// Requests being handled right now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Completes once fewer than `limit` requests are being handled.
    pub(crate) async fn below(&self, limit: usize) {
        while self.count() >= limit {
            let listener = self.changed.listen();
            if self.count() < limit {
                return;
            }
            listener.await;
        }
    }

    /// Completes when no request is being handled.
    pub(crate) async fn idle(&self) {
        self.below(1).await
    }
}

pub(crate) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut level = Some(&self.0);
        while let Some(counter) = level {
            counter.count.fetch_sub(1, Ordering::AcqRel);
            counter.changed.notify(usize::MAX);
            level = counter.parent.as_ref();
        }
    }
}

/// The way back to a caller. A handler answers through it now or later, from any task
/// (ZServer4D's delayed response). Dropped without an answer, it tells the caller
/// [`Error::NoResponse`]. For a one-way send it discards the answer.
pub struct Responder {
    target: Option<(Connection, u64)>,
    _in_flight: InFlightGuard,
}

impl Responder {
    pub(crate) fn new(conn: Connection, id: u64, in_flight: &Arc<InFlight>) -> Self {
        Self {
            target: Some((conn, id)),
            _in_flight: in_flight.enter(),
        }
    }

    pub(crate) fn one_way(in_flight: &Arc<InFlight>) -> Self {
        Self {
            target: None,
            _in_flight: in_flight.enter(),
        }
    }

    /// Whether the caller expects no answer (the request was a one-way send).
    pub fn is_one_way(&self) -> bool {
        self.target.is_none()
    }

    /// Answers with a reply payload or an error.
    pub fn respond(mut self, result: Result<impl AsRef<[u8]>, Error>) {
        if let Some((conn, id)) = self.target.take() {
            match result {
                Ok(payload) => conn.reply(id, payload.as_ref()),
                Err(err) => conn.reply_error(id, &err),
            }
        }
    }

    /// Answers with raw bytes.
    pub fn reply(self, payload: impl AsRef<[u8]>) {
        self.respond(Ok(payload))
    }

    /// Answers with a serde value, encoded with postcard.
    pub fn reply_value<T: Serialize + ?Sized>(self, value: &T) {
        let encoded = postcard::to_allocvec(value).map_err(Error::from);
        self.respond(encoded)
    }

    /// Fails the call with this error.
    pub fn fail(self, error: impl Into<Error>) {
        self.respond(Err::<&[u8], _>(error.into()))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some((conn, id)) = self.target.take() {
            conn.reply_error(id, &Error::NoResponse);
        }
    }
}

/// A handler with its types erased: starts handling one request.
pub(crate) trait Handler: Send + Sync {
    /// Handles `payload`; returns the work still to do, if any, as a future to drive.
    fn invoke(
        &self,
        ctx: Context,
        payload: Bytes,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>>;
}

/// An async handler; its future and the reply are boxed together once per call.
struct AsyncFn<F, Fut, B>(F, PhantomData<fn() -> (Fut, B)>);

impl<F, Fut, B> Handler for AsyncFn<F, Fut, B>
where
    F: Fn(Context, Bytes) -> Fut + Send + Sync,
    Fut: Future<Output = Result<B, Error>> + Send + 'static,
    B: AsRef<[u8]> + 'static,
{
    fn invoke(
        &self,
        ctx: Context,
        payload: Bytes,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        let fut = (self.0)(ctx, payload);
        Some(Box::pin(async move { responder.respond(fut.await) }))
    }
}

struct DelayedFn<F>(F);

impl<F> Handler for DelayedFn<F>
where
    F: Fn(Context, Bytes, Responder) + Send + Sync,
{
    fn invoke(
        &self,
        ctx: Context,
        payload: Bytes,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        (self.0)(ctx, payload, responder);
        None
    }
}

/// The handlers one side of a connection offers, by command name.
///
/// ```
/// use zserver_core::{Error, Router};
/// let router = Router::new()
///     .console("hello", |_ctx, name: String| async move { Ok(format!("hello, {name}")) })
///     .stream("echo", |_ctx, bytes| async move { Ok(bytes) })
///     .typed("add", |_ctx, (a, b): (i64, i64)| async move { Ok::<_, Error>(a + b) });
/// assert!(router.contains("echo"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    handlers: FxHashMap<Box<str>, Arc<dyn Handler>>,
}

impl Router {
    /// A router with no handlers.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, name: &str, handler: Arc<dyn Handler>) -> Self {
        assert!(
            !name.is_empty() && name.len() <= MAX_COMMAND_LEN,
            "command names are 1 to {MAX_COMMAND_LEN} bytes, `{name}` is not"
        );
        let previous = self.handlers.insert(name.into(), handler);
        assert!(previous.is_none(), "command `{name}` registered twice");
        self
    }

    /// Registers a console command: UTF-8 text in, text out (ZServer4D's console command).
    pub fn console<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.stream(name, move |ctx, bytes: Bytes| {
            let f = f.clone();
            async move {
                let text = String::from_utf8(bytes.into())
                    .map_err(|e| Error::BadRequest(format!("console text is not UTF-8: {e}")))?;
                f(ctx, text).await
            }
        })
    }

    /// Registers a stream command: bytes in, bytes out (ZServer4D's stream command).
    /// The reply may be any byte container (`Bytes`, `Vec<u8>`, `String`, ...).
    pub fn stream<F, Fut, B>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B, Error>> + Send + 'static,
        B: AsRef<[u8]> + 'static,
    {
        self.add(name, Arc::new(AsyncFn(f, PhantomData)))
    }

    /// Registers a typed command: a serde value in, a serde value out, both as postcard.
    /// A payload that does not decode as `T` is answered with [`Error::BadRequest`].
    pub fn typed<T, R, F, Fut>(self, name: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.stream(name, move |ctx, bytes: Bytes| {
            let f = f.clone();
            async move {
                let value: T =
                    postcard::from_bytes(&bytes).map_err(|e| Error::BadRequest(e.to_string()))?;
                let reply = f(ctx, value).await?;
                Ok(postcard::to_allocvec(&reply)?)
            }
        })
    }

    /// Registers a handler that answers through its [`Responder`], now or later from any
    /// task (ZServer4D's pause/continue result).
    pub fn delayed<F>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Bytes, Responder) + Send + Sync + 'static,
    {
        self.add(name, Arc::new(DelayedFn(f)))
    }

    /// Whether a handler is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// The registered command names, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(|k| &**k)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(name)
    }
}
