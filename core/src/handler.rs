//! Handlers by command name: the [`Router`], the [`Context`] a handler sees and the
//! [`Responder`] that carries its answer back.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::Error;
use crate::frame::{FLAG_DOWNLOAD, MAX_COMMAND_LEN};
use crate::hooks::{CommandInfo, Completion, Hooks};
use crate::runtime::BoxFuture;
use crate::stream::{pump, Dir, DownloadRequest, Incoming, Outgoing};

/// The state a router shares with its handlers ([`Router::with_state`]).
type State = Arc<dyn Any + Send + Sync>;

/// What a handler is given besides its payload: the connection the call came in on, and
/// the router's state.
#[derive(Clone)]
pub struct Context {
    conn: Connection,
    state: Option<State>,
}

impl Context {
    pub(crate) fn new(conn: Connection, state: Option<State>) -> Self {
        Self { conn, state }
    }

    /// The state given to the router with [`Router::with_state`], if it is an `S`.
    pub fn try_state<S: Send + Sync + 'static>(&self) -> Option<&S> {
        self.state.as_deref()?.downcast_ref()
    }

    /// The state given to the router with [`Router::with_state`].
    ///
    /// # Panics
    /// If the router has no state of type `S` (a mistake in the program: the handler then
    /// fails like any panicking handler, and the caller gets [`Error::NoResponse`]).
    pub fn state<S: Send + Sync + 'static>(&self) -> &S {
        self.try_state().unwrap_or_else(|| {
            panic!(
                "no state of type {} (Router::with_state)",
                std::any::type_name::<S>()
            )
        })
    }

    /// The connection the call arrived on; use it to call or push back to the peer.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The connection's id, unique within this process.
    pub fn connection_id(&self) -> u64 {
        self.conn.id()
    }

    /// The peer's address: the client's, as a trusted proxy announced it when the
    /// connection came through one ([`Connection::peer_addr`]).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer_addr()
    }

    /// The trusted proxy the connection came through, if any ([`Connection::proxy_addr`]).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.conn.proxy_addr()
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

    pub(crate) fn enter(self: &Arc<Self>) -> InFlightGuard {
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
    /// The caller asked for a stream back (a download).
    download: bool,
    in_flight: Option<InFlightGuard>,
    /// Reports the outcome to `on_complete` hooks (only when some are registered).
    done: Option<Box<Completion>>,
}

impl Responder {
    pub(crate) fn new(conn: Connection, id: u64, in_flight: &Arc<InFlight>) -> Self {
        Self {
            target: Some((conn, id)),
            download: false,
            in_flight: Some(in_flight.enter()),
            done: None,
        }
    }

    pub(crate) fn one_way(in_flight: &Arc<InFlight>) -> Self {
        Self {
            target: None,
            download: false,
            in_flight: Some(in_flight.enter()),
            done: None,
        }
    }

    /// Reports the outcome to `on_complete` hooks.
    pub(crate) fn track(mut self, done: Box<Completion>) -> Self {
        self.done = Some(done);
        self
    }

    fn finish(&mut self, outcome: Result<(), &Error>) {
        if let Some(done) = self.done.take() {
            done.finish(outcome);
        }
    }

    /// Marks the call as a download: the answer must be a stream.
    pub(crate) fn for_download(mut self) -> Self {
        self.download = true;
        self
    }

    /// Whether the caller asked for a stream back ([`Calls::download`](crate::Calls::download)); answer it
    /// with [`reply_stream`](Self::reply_stream).
    pub fn wants_stream(&self) -> bool {
        self.download
    }

    /// Answers a download with a stream, sent from its own task as the caller's window
    /// allows. The call stays in flight (for shutdown) until the stream has been sent.
    pub fn reply_stream(mut self, body: Outgoing) {
        let Some((conn, id)) = self.target.take() else {
            return self.finish(Ok(()));
        };
        if !self.download {
            let e = Error::msg("the handler answered with a stream; the caller wants a reply");
            self.finish(Err(&e));
            return conn.reply_error(id, &e);
        }
        let key = (Dir::Download, id);
        let head = body.head();
        let state = conn.stream_outbound(key);
        let (head, state) = match (head, state) {
            (Ok(head), Some(state)) => (head, state),
            (Err(e), _) => {
                conn.finish_outgoing(key, None);
                self.finish(Err(&e));
                return conn.reply_error(id, &e);
            }
            (_, None) => return self.finish(Err(&Error::Closed)), // the connection closed
        };
        conn.reply_flagged(id, FLAG_DOWNLOAD, &head);
        let in_flight = self.in_flight.take();
        let done = self.done.take();
        let runtime = conn.runtime().clone();
        runtime.spawn(Box::pin(async move {
            let _in_flight = in_flight;
            let pumped = pump(&conn, key, state, body).await;
            if let Err(e) = &pumped {
                tracing::debug!(conn = conn.id(), error = %e, "download stream ended early");
            }
            if let Some(done) = done {
                done.finish(pumped.as_ref().map(|_| ()));
            }
        }));
    }

    /// Whether the caller expects no answer (the request was a one-way send).
    pub fn is_one_way(&self) -> bool {
        self.target.is_none()
    }

    /// Answers with a reply payload or an error.
    pub fn respond(mut self, result: Result<impl AsRef<[u8]>, Error>) {
        let failed = match self.target.take() {
            Some((conn, id)) if self.download => {
                conn.finish_outgoing((Dir::Download, id), None);
                let err = result.err().unwrap_or_else(|| {
                    Error::msg("the handler answered a download without a stream")
                });
                conn.reply_error(id, &err);
                Some(err)
            }
            Some((conn, id)) => match result {
                Ok(payload) => {
                    conn.reply(id, payload.as_ref());
                    None
                }
                Err(err) => {
                    conn.reply_error(id, &err);
                    Some(err)
                }
            },
            None => result.err(),
        };
        self.finish(failed.as_ref().map_or(Ok(()), Err));
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
            if std::thread::panicking() {
                // Counted before the caller can see the `NoResponse` (connection/panics.rs).
                conn.handler_panicked_while_answering();
            }
            if self.download {
                conn.finish_outgoing((Dir::Download, id), None);
            }
            conn.reply_error(id, &Error::NoResponse);
            self.finish(Err(&Error::NoResponse));
        } else if std::thread::panicking() {
            self.finish(Err(&Error::NoResponse));
        } else {
            // A one-way handler that finished without answering: nothing was owed.
            self.finish(Ok(()));
        }
    }
}

/// What kind of request a handler takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A payload in, a reply out.
    Call,
    /// A stream in (an upload), a reply out.
    Upload,
    /// A payload in, a stream out (a download).
    Download,
}

impl Shape {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Shape::Call => "a plain call",
            Shape::Upload => "an upload",
            Shape::Download => "a download",
        }
    }
}

/// One request as a handler receives it.
pub(crate) struct Request {
    /// The payload (for a download: the caller's meta).
    pub payload: Bytes,
    /// An upload's stream.
    pub body: Option<Incoming>,
    /// A download's starting offset.
    pub offset: u64,
}

/// A handler with its types erased: starts handling one request.
pub(crate) trait Handler: Send + Sync {
    /// What kind of request this handler takes.
    fn shape(&self) -> Shape {
        Shape::Call
    }

    /// The handler as a synchronous one, if it is: the connection may then call it
    /// directly, without a [`Responder`].
    fn as_sync(&self) -> Option<&dyn SyncHandler> {
        None
    }

    /// Handles a request; returns the work still to do, if any, as a future to drive.
    fn invoke(
        &self,
        ctx: Context,
        request: Request,
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
        request: Request,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        let fut = (self.0)(ctx, request.payload);
        Some(Box::pin(async move { responder.respond(fut.await) }))
    }
}

/// An upload handler: reads the caller's stream, then replies.
struct UploadFn<F, Fut, B>(F, PhantomData<fn() -> (Fut, B)>);

impl<F, Fut, B> Handler for UploadFn<F, Fut, B>
where
    F: Fn(Context, Incoming) -> Fut + Send + Sync,
    Fut: Future<Output = Result<B, Error>> + Send + 'static,
    B: AsRef<[u8]> + 'static,
{
    fn shape(&self) -> Shape {
        Shape::Upload
    }

    fn invoke(
        &self,
        ctx: Context,
        request: Request,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        let Some(body) = request.body else {
            responder.fail(Error::BadRequest("an upload without a stream".into()));
            return None;
        };
        let fut = (self.0)(ctx, body);
        Some(Box::pin(async move { responder.respond(fut.await) }))
    }
}

/// A download handler: answers with a stream.
struct DownloadFn<F, Fut>(F, PhantomData<fn() -> Fut>);

impl<F, Fut> Handler for DownloadFn<F, Fut>
where
    F: Fn(Context, DownloadRequest) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Outgoing, Error>> + Send + 'static,
{
    fn shape(&self) -> Shape {
        Shape::Download
    }

    fn invoke(
        &self,
        ctx: Context,
        request: Request,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        let req = DownloadRequest {
            meta: request.payload,
            offset: request.offset,
        };
        let fut = (self.0)(ctx, req);
        Some(Box::pin(async move {
            match fut.await {
                Ok(body) => responder.reply_stream(body),
                Err(e) => responder.fail(e),
            }
        }))
    }
}

/// A synchronous handler: called on the connection's task as its request is read.
struct SyncFn<F, B>(Arc<F>, PhantomData<fn() -> B>);

/// Where a synchronous handler's answer goes: the reply bytes or the error.
pub(crate) type Answer<'a> = &'a mut dyn FnMut(Result<&[u8], &Error>);

/// A handler that answers at once, called with no [`Responder`] and no future.
pub(crate) trait SyncHandler: Send + Sync {
    /// Runs the handler and hands its answer to `answer`.
    fn call(&self, ctx: &Context, payload: Bytes, answer: Answer<'_>);
}

impl<F, B> SyncHandler for SyncFn<F, B>
where
    F: Fn(&Context, Bytes) -> Result<B, Error> + Send + Sync + 'static,
    B: AsRef<[u8]> + 'static,
{
    fn call(&self, ctx: &Context, payload: Bytes, answer: Answer<'_>) {
        match (self.0)(ctx, payload) {
            Ok(reply) => answer(Ok(reply.as_ref())),
            Err(e) => answer(Err(&e)),
        }
    }
}

impl<F, B> Handler for SyncFn<F, B>
where
    F: Fn(&Context, Bytes) -> Result<B, Error> + Send + Sync + 'static,
    B: AsRef<[u8]> + 'static,
{
    fn as_sync(&self) -> Option<&dyn SyncHandler> {
        Some(self)
    }

    /// The general path: on a sequential connection, or with `on_complete` hooks.
    fn invoke(
        &self,
        ctx: Context,
        request: Request,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        if ctx.conn.is_sequential() {
            // Its turn comes after the handlers queued before it.
            let f = self.0.clone();
            return Some(Box::pin(async move {
                responder.respond(f(&ctx, request.payload))
            }));
        }
        responder.respond((self.0)(&ctx, request.payload));
        None
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
        request: Request,
        responder: Responder,
    ) -> Option<BoxFuture<'static, ()>> {
        (self.0)(ctx, request.payload, responder);
        None
    }
}

/// The handlers one side of a connection offers, by command name.
///
/// ```
/// use zserver_core::{Error, Router};
/// let router = Router::new()
///     .console("hello", |_ctx, name: String| async move { Ok(format!("hello, {name}")) })
///     .bytes("echo", |_ctx, bytes| async move { Ok(bytes) })
///     .call("add", |_ctx, (a, b): (i64, i64)| async move { Ok::<_, Error>(a + b) });
/// assert!(router.contains("echo"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    handlers: FxHashMap<Box<str>, Arc<dyn Handler>>,
    pub(crate) hooks: Hooks,
    pub(crate) state: Option<State>,
    /// The server's rate limits on incoming commands (set by the server builder).
    pub(crate) rate: Option<crate::rate::RateLimiter>,
}

impl Router {
    /// A router with no handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shares `state` with every handler of this router, through
    /// [`Context::state`]: given once here instead of cloned into each handler. A later
    /// call replaces it.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use zserver_core::{Error, Router};
    ///
    /// struct Hits(AtomicU64);
    ///
    /// let router = Router::new()
    ///     .with_state(Hits(AtomicU64::new(0)))
    ///     .call("hit", |ctx, (): ()| async move {
    ///         Ok::<_, Error>(ctx.state::<Hits>().0.fetch_add(1, Ordering::Relaxed) + 1)
    ///     });
    /// # assert!(router.contains("hit"));
    /// ```
    pub fn with_state<S: Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state = Some(Arc::new(state));
        self
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

    /// Registers a console command, reached with [`Calls::console`](crate::Calls::console):
    /// UTF-8 text in, text out (ZServer4D's console command).
    pub fn console<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.bytes(name, move |ctx, bytes: Bytes| {
            let f = f.clone();
            async move {
                let text = String::from_utf8(bytes.into())
                    .map_err(|e| Error::BadRequest(format!("console text is not UTF-8: {e}")))?;
                f(ctx, text).await
            }
        })
    }

    /// Registers a bytes command, reached with [`Calls::call_bytes`](crate::Calls::call_bytes):
    /// bytes in, bytes out (ZServer4D's stream command).
    /// The reply may be any byte container (`Bytes`, `Vec<u8>`, `String`, ...).
    pub fn bytes<F, Fut, B>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B, Error>> + Send + 'static,
        B: AsRef<[u8]> + 'static,
    {
        self.add(name, Arc::new(AsyncFn(f, PhantomData)))
    }

    /// Registers a typed command, reached with [`Calls::call`](crate::Calls::call): a serde
    /// value in, a serde value out, both as postcard.
    /// A payload that does not decode as `T` is answered with [`Error::BadRequest`].
    pub fn call<T, R, F, Fut>(self, name: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.bytes(name, move |ctx, bytes: Bytes| {
            let f = f.clone();
            async move {
                let value: T =
                    postcard::from_bytes(&bytes).map_err(|e| Error::BadRequest(e.to_string()))?;
                let reply = f(ctx, value).await?;
                Ok(postcard::to_allocvec(&reply)?)
            }
        })
    }

    /// Registers a CPU-heavy or blocking bytes command: a plain (not async) function run
    /// on a blocking thread pool (the `blocking` crate), so that it never stalls the
    /// connection's runtime thread (ZServer4D's HPC offload). Bytes in, bytes out; a panic
    /// inside is caught and counted like any handler's ([`Error::NoResponse`] to the caller).
    ///
    /// ```
    /// use zserver_core::Router;
    /// let router = Router::new().blocking_bytes("hash", |_ctx, bytes| {
    ///     Ok(blake3_like_work(&bytes).to_le_bytes().to_vec())
    /// });
    /// # fn blake3_like_work(b: &[u8]) -> u64 { b.iter().map(|&x| x as u64).sum() }
    /// assert!(router.contains("hash"));
    /// ```
    pub fn blocking_bytes<F, B>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Bytes) -> Result<B, Error> + Send + Sync + 'static,
        B: AsRef<[u8]> + Send + 'static,
    {
        let f = Arc::new(f);
        self.bytes(name, move |ctx, bytes: Bytes| {
            let f = f.clone();
            async move {
                let run = move || catch_unwind(AssertUnwindSafe(|| f(ctx, bytes)));
                // Re-raised here, the panic is caught and counted where handlers are polled.
                blocking::unblock(run)
                    .await
                    .unwrap_or_else(|panic| resume_unwind(panic))
            }
        })
    }

    /// Like [`blocking_bytes`](Self::blocking_bytes) for a typed command: a serde value in, a serde
    /// value out (postcard), the function run on a blocking thread pool.
    pub fn blocking_call<T, R, F>(self, name: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Context, T) -> Result<R, Error> + Send + Sync + 'static,
    {
        self.blocking_bytes(name, move |ctx, bytes: Bytes| {
            let value: T =
                postcard::from_bytes(&bytes).map_err(|e| Error::BadRequest(e.to_string()))?;
            Ok(postcard::to_allocvec(&f(ctx, value)?)?)
        })
    }

    /// Adds a hook run before a handler, for every incoming call and one-way send on every
    /// connection using this router (ZServer4D's `OnExecuteCommand`). It sees the command
    /// name, kind, payload size and connection ([`CommandInfo`]); returning an error vetoes
    /// the command: the handler does not run, a call gets that error as its reply (use
    /// [`Error::Denied`], which travels with its own code), a send is dropped. Vetoes are
    /// counted in [`Stats::commands_vetoed`](crate::Stats::commands_vetoed). Hooks run in the
    /// order added, on the connection's reader: keep them short and never block.
    /// Commands with no handler are seen too (and may be vetoed before the lookup); calls
    /// refused during shutdown are not.
    ///
    /// ```
    /// use zserver_core::{CommandKind, Error, Router};
    /// let router = Router::new()
    ///     .console("hello", |_ctx, name: String| async move { Ok(format!("hello, {name}")) })
    ///     .on_execute(|info| {
    ///         if info.command().starts_with("admin.") && !info.peer_addr().ip().is_loopback() {
    ///             return Err(Error::Denied(format!("`{}` is local only", info.command())));
    ///         }
    ///         tracing_like_log(info.connection_id(), info.command(), info.kind());
    ///         Ok(())
    ///     });
    /// # fn tracing_like_log(_: u64, _: &str, _: CommandKind) {}
    /// ```
    pub fn on_execute<F>(mut self, hook: F) -> Self
    where
        F: Fn(&CommandInfo<'_>) -> Result<(), Error> + Send + Sync + 'static,
    {
        self.hooks.execute.push(Arc::new(hook));
        self
    }

    /// Adds a hook run before this side sends a call, a one-way send, an upload or a
    /// download on a connection using this router (ZServer4D's `OnSendCommand`). Returning an
    /// error vetoes it locally: the caller gets that error and nothing is sent.
    ///
    /// ```
    /// use zserver_core::{Error, Router};
    /// let router = Router::new().on_send(|info| {
    ///     if info.payload_len() > 1 << 20 {
    ///         return Err(Error::Denied("payload over 1 MiB".into()));
    ///     }
    ///     Ok(())
    /// });
    /// ```
    pub fn on_send<F>(mut self, hook: F) -> Self
    where
        F: Fn(&CommandInfo<'_>) -> Result<(), Error> + Send + Sync + 'static,
    {
        self.hooks.send.push(Arc::new(hook));
        self
    }

    /// Adds a hook told when an incoming command's handler has answered (for a send: when
    /// its handler finished; for a download: when its stream was sent), with the outcome
    /// and the time since the command arrived; for metrics. A handler that panicked or
    /// dropped its responder shows as `Err(&Error::NoResponse)`. Vetoed commands and
    /// commands with no handler are not reported here (see [`on_execute`](Self::on_execute)).
    /// It runs on whichever task answered: keep it short.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use zserver_core::Router;
    /// let failures = Arc::new(AtomicU64::new(0));
    /// let f = failures.clone();
    /// let router = Router::new().on_complete(move |info, outcome, elapsed| {
    ///     if outcome.is_err() {
    ///         f.fetch_add(1, Ordering::Relaxed);
    ///     }
    ///     let _ = (info.command(), elapsed);
    /// });
    /// ```
    pub fn on_complete<F>(mut self, hook: F) -> Self
    where
        F: Fn(&CommandInfo<'_>, Result<(), &Error>, Duration) + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.hooks.complete).push(Arc::new(hook));
        self
    }

    /// Registers a synchronous bytes command: a plain (not async) function, bytes in,
    /// bytes out, called on the connection's own task as soon as its request is read, with
    /// no task spawned and no future boxed; its reply leaves in the same write as the other
    /// replies to that read. The cheapest kind of handler, for short work that never waits:
    /// the connection reads nothing else while it runs (use [`blocking_bytes`](Self::blocking_bytes) for
    /// heavy work, [`bytes`](Self::bytes) for anything that awaits). On a
    /// [`Config::sequential`](crate::Config::sequential) connection it takes its turn in the
    /// queue like any handler. A panic is caught and counted like any handler's.
    ///
    /// ```
    /// use zserver_core::Router;
    /// let router = Router::new().sync_bytes("len", |_ctx, bytes| Ok((bytes.len() as u64).to_le_bytes()));
    /// assert!(router.contains("len"));
    /// ```
    pub fn sync_bytes<F, B>(self, name: &str, f: F) -> Self
    where
        F: Fn(&Context, Bytes) -> Result<B, Error> + Send + Sync + 'static,
        B: AsRef<[u8]> + 'static,
    {
        self.add(name, Arc::new(SyncFn(Arc::new(f), PhantomData)))
    }

    /// Registers a handler that answers through its [`Responder`], now or later from any
    /// task (ZServer4D's pause/continue result).
    pub fn delayed<F>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Bytes, Responder) + Send + Sync + 'static,
    {
        self.add(name, Arc::new(DelayedFn(f)))
    }

    /// Registers an upload command: the caller sends a stream ([`Calls::upload`](crate::Calls::upload)) and
    /// the handler reads it as an [`Incoming`], then replies. The caller's meta is
    /// [`Incoming::meta`].
    pub fn upload<F, Fut, B>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Incoming) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B, Error>> + Send + 'static,
        B: AsRef<[u8]> + 'static,
    {
        self.add(name, Arc::new(UploadFn(f, PhantomData)))
    }

    /// Registers a download command: the caller asks with [`Calls::download`](crate::Calls::download) and the
    /// handler answers with an [`Outgoing`] stream, starting at the requested offset.
    pub fn download<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(Context, DownloadRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outgoing, Error>> + Send + 'static,
    {
        self.add(name, Arc::new(DownloadFn(f, PhantomData)))
    }

    /// Adds every handler of `other` (for routers built in separate modules).
    ///
    /// # Panics
    /// If both register the same command name.
    /// Hooks are kept too: `other`'s run after this router's. So is `other`'s state
    /// ([`with_state`](Self::with_state)) if this router has none.
    pub fn merge(mut self, other: Router) -> Self {
        if self.state.is_none() {
            self.state = other.state.clone();
        }
        for (name, handler) in other.handlers {
            self = self.add(&name, handler);
        }
        self.hooks.merge(other.hooks);
        self
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
