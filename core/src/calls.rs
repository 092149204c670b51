//! The call surface shared by [`Connection`], [`Client`](crate::Client) and
//! [`ReconnectingClient`](crate::ReconnectingClient): the [`Calls`] trait, and
//! [`RequestBuilder`] for a call with options.
//!
//! Each way of registering a handler on a [`Router`](crate::Router) has the call of the
//! same name: `Router::bytes` ↔ [`call_bytes`](Calls::call_bytes), `Router::call` ↔
//! [`call`](Calls::call), `Router::console` ↔ [`console`](Calls::console),
//! `Router::upload` ↔ [`upload`](Calls::upload), `Router::download` ↔
//! [`download`](Calls::download). Any handler also takes one-way
//! [`send`](Calls::send)s.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::Error;
use crate::service::{Method, ObjectId, RemoteObject, ServiceInfo};
use crate::stream::{FileDownload, Incoming, Outgoing};

/// Calls, one-way sends, streams and services, on whatever carries them. Bring it into
/// scope (`use zserver::Calls;`, or `use zserver::prelude::*;`) to call.
///
/// The common case is one short call (`conn.call_bytes("echo", b"hi").await`); options go
/// through [`request`](Self::request):
/// `conn.request("echo").timeout(Duration::from_secs(1)).bytes(b"hi").await`.
pub trait Calls: Sync {
    /// The connection the next call goes over: the connection itself, a client's, or a
    /// reconnecting client's live one ([`Error::Disconnected`] while it has none,
    /// [`Error::Closed`] once closed).
    fn link(&self) -> Result<Cow<'_, Connection>, Error>;

    /// A call to `command` with options (a time-out); finish it with the kind of call.
    fn request<'a>(&'a self, command: &'a str) -> RequestBuilder<'a> {
        RequestBuilder {
            link: self.link(),
            command,
            timeout: None,
        }
    }

    /// Calls `command` (a `Router::bytes` handler) with a raw payload and waits for the
    /// reply.
    fn call_bytes<'a>(
        &'a self,
        command: &'a str,
        payload: impl AsRef<[u8]> + Send + 'a,
    ) -> impl Future<Output = Result<Bytes, Error>> + Send + 'a {
        self.request(command).bytes(payload)
    }

    /// Calls a console command (a `Router::console` handler): text in, text out.
    fn console<'a>(
        &'a self,
        command: &'a str,
        text: &'a str,
    ) -> impl Future<Output = Result<String, Error>> + Send + 'a {
        self.request(command).console(text)
    }

    /// Calls a typed command (a `Router::call` handler): `value` is sent as postcard and
    /// the reply decoded as `R`.
    fn call<'a, T, R>(
        &'a self,
        command: &'a str,
        value: &T,
    ) -> impl Future<Output = Result<R, Error>> + Send + 'a
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'a,
    {
        self.request(command).call(value)
    }

    /// Sends a one-way message: the peer runs the handler and no reply comes back. Sends
    /// from one task arrive in the order they were made. `Ok` means queued, not delivered.
    ///
    /// Which handler gets it: the one the peer registered under `command`, whatever its
    /// kind ([`Router::console`](crate::Router::console), `bytes`, `call`, `sync_bytes`,
    /// `blocking_bytes`, `blocking_call`, `delayed`, whose
    /// [`Responder::is_one_way`](crate::Responder::is_one_way) says so); its result, error
    /// included, is discarded. Upload and download handlers take calls only: a send to one
    /// is dropped. A send to a command the peer does not have is dropped silently (counted
    /// in the peer's [`Stats::errors_in`](crate::Stats::errors_in)); nothing tells the
    /// sender, so use a call when you need to know it arrived.
    fn send_bytes<'a>(
        &'a self,
        command: &'a str,
        payload: impl AsRef<[u8]> + Send + 'a,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.request(command).send_bytes(payload)
    }

    /// Sends a one-way serde value (postcard); see [`send_bytes`](Self::send_bytes).
    fn send<'a, T: Serialize + ?Sized>(
        &'a self,
        command: &'a str,
        value: &T,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        self.request(command).send(value)
    }

    /// Calls `command` (a `Router::upload` handler) with `body` as a stream after `meta`,
    /// and waits for the handler's reply. The body is sent as the receiver's window
    /// allows; if the handler answers before reading it all, sending stops.
    fn upload<'a>(
        &'a self,
        command: &'a str,
        meta: impl AsRef<[u8]> + Send + 'a,
        body: Outgoing,
    ) -> impl Future<Output = Result<Bytes, Error>> + Send + 'a {
        self.request(command).upload(meta, body)
    }

    /// Calls `command` (a `Router::download` handler), whose answer is a stream, from byte
    /// `offset` (non-zero to resume). Returns as soon as the stream starts.
    fn download<'a>(
        &'a self,
        command: &'a str,
        meta: impl AsRef<[u8]> + Send + 'a,
        offset: u64,
    ) -> impl Future<Output = Result<Incoming, Error>> + Send + 'a {
        self.request(command).download(meta, offset)
    }

    /// Downloads into the file at `path`. With `resume`, an existing file is kept and the
    /// download goes on from its length, if its bytes are the sender's (else it starts
    /// over; see [`FileDownload`]); without, the file is replaced. Returns the bytes
    /// written by this call.
    fn download_to_file<'a>(
        &'a self,
        command: &'a str,
        meta: impl AsRef<[u8]> + Send + 'a,
        path: impl AsRef<Path> + Send + 'a,
        resume: bool,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
        async move {
            self.open_file_download(command, meta, path, resume)
                .await?
                .save()
                .await
        }
    }

    /// Opens a download into the file at `path`, resumed from the local file's length
    /// when `resume` and the sender's hash of its first bytes matches the local part
    /// (see [`FileDownload`]); [`FileDownload::save`] receives it.
    fn open_file_download<'a>(
        &'a self,
        command: &'a str,
        meta: impl AsRef<[u8]> + Send + 'a,
        path: impl AsRef<Path> + Send + 'a,
        resume: bool,
    ) -> impl Future<Output = Result<FileDownload, Error>> + Send + 'a {
        async move {
            let conn = self.link()?;
            conn.open_file_download(command, meta.as_ref(), path.as_ref(), resume)
                .await
        }
    }

    /// Measures one round trip with a ping frame.
    fn ping(&self) -> impl Future<Output = Result<Duration, Error>> + Send + '_ {
        async move { self.link()?.round_trip().await }
    }

    /// The services the peer offers, with their methods' ids and type names.
    fn services(&self) -> impl Future<Output = Result<Vec<ServiceInfo>, Error>> + Send + '_ {
        async move { self.link()?.list_services().await }
    }

    /// Calls a service method, typed end to end.
    fn invoke<'a, A, R>(
        &'a self,
        method: &'a Method<A, R>,
        argument: &'a A,
    ) -> impl Future<Output = Result<R, Error>> + Send + 'a
    where
        A: Serialize + Sync,
        R: DeserializeOwned + Send + 'a,
    {
        async move { self.link()?.invoke_method(method, argument).await }
    }

    /// Creates an instance of a class on the peer with its constructor; the object lives
    /// until [`RemoteObject::free`] or until its connection closes.
    fn create<'a, A>(
        &'a self,
        constructor: &'a Method<A, ObjectId>,
        argument: &'a A,
    ) -> impl Future<Output = Result<RemoteObject, Error>> + Send + 'a
    where
        A: Serialize + Sync,
    {
        async move { self.link()?.create_object(constructor, argument).await }
    }
}

impl Calls for Connection {
    fn link(&self) -> Result<Cow<'_, Connection>, Error> {
        Ok(Cow::Borrowed(self))
    }
}

/// A call with options, from [`Calls::request`]: set them, then finish with the kind of
/// call (`bytes`, `console`, `call`, `send_bytes`, `send`, `upload`, `download`, or a
/// `_then` form that runs a callback instead of being awaited).
///
/// ```
/// # async fn demo(conn: &zserver_core::Connection) -> Result<(), zserver_core::Error> {
/// use std::time::Duration;
/// use zserver_core::Calls;
///
/// let reply = conn.request("echo").timeout(Duration::from_secs(1)).bytes(b"hi").await?;
/// conn.request("log").timeout(Duration::from_millis(50)).send(&"started").await?;
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is finished with a kind of call"]
pub struct RequestBuilder<'a> {
    link: Result<Cow<'a, Connection>, Error>,
    command: &'a str,
    timeout: Option<Duration>,
}

impl<'a> RequestBuilder<'a> {
    /// Fails the call with [`Error::Timeout`] if its reply (a stream's end, for streams)
    /// has not come within `timeout`; for one-way sends, bounds the wait for buffer space.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A raw payload in, the reply's bytes out.
    pub async fn bytes(self, payload: impl AsRef<[u8]>) -> Result<Bytes, Error> {
        let conn = self.link?;
        conn.call_raw(self.command, payload.as_ref(), self.timeout)
            .await
    }

    /// Text in, text out.
    pub async fn console(self, text: &str) -> Result<String, Error> {
        decode_text(self.bytes(text).await?)
    }

    /// `value` as postcard in, the reply decoded as `R`.
    pub fn call<T, R>(self, value: &T) -> impl Future<Output = Result<R, Error>> + Send + 'a
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'a,
    {
        let payload = postcard::to_allocvec(value).map_err(Error::from);
        async move { decode_value(&self.bytes(payload?).await?) }
    }

    /// A one-way message with a raw payload.
    pub async fn send_bytes(self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        let conn = self.link?;
        match self.timeout {
            None => conn.wait_for_space().await,
            Some(limit) => within(&conn, limit, conn.wait_for_space()).await?,
        }
        conn.send_now(self.command, payload.as_ref())
    }

    /// A one-way serde value (postcard).
    pub fn send<T: Serialize + ?Sized>(
        self,
        value: &T,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        let payload = postcard::to_allocvec(value).map_err(Error::from);
        async move { self.send_bytes(payload?).await }
    }

    /// An upload: `body` as a stream after `meta`; the handler's reply out.
    pub async fn upload(self, meta: impl AsRef<[u8]>, body: Outgoing) -> Result<Bytes, Error> {
        let conn = self.link?;
        let upload = conn.upload_body(self.command, meta.as_ref(), body);
        match self.timeout {
            None => upload.await,
            Some(limit) => within(&conn, limit, upload).await?,
        }
    }

    /// A download from byte `offset`; the timeout bounds the wait for the stream to start.
    pub async fn download(self, meta: impl AsRef<[u8]>, offset: u64) -> Result<Incoming, Error> {
        let conn = self.link?;
        let download = conn.open_download(self.command, meta.as_ref(), offset);
        match self.timeout {
            None => download.await,
            Some(limit) => within(&conn, limit, download).await?,
        }
    }

    /// Like [`bytes`](Self::bytes), but returns at once and runs `callback` with the
    /// result when it arrives (on the connection's task: keep it short). No wait for
    /// buffer space; with a time-out, `callback` gets [`Error::Timeout`] at the deadline
    /// and a later reply is dropped.
    pub fn bytes_then(
        self,
        payload: impl AsRef<[u8]>,
        callback: impl FnOnce(Result<Bytes, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        let conn = self.link?;
        conn.call_with_callback(
            self.command,
            payload.as_ref(),
            self.timeout,
            Box::new(callback),
        )
    }

    /// [`console`](Self::console) with a callback; see [`bytes_then`](Self::bytes_then).
    pub fn console_then(
        self,
        text: &str,
        callback: impl FnOnce(Result<String, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        self.bytes_then(text, move |r| callback(r.and_then(decode_text)))
    }

    /// [`call`](Self::call) with a callback; see [`bytes_then`](Self::bytes_then).
    pub fn call_then<T, R>(
        self,
        value: &T,
        callback: impl FnOnce(Result<R, Error>) + Send + 'static,
    ) -> Result<(), Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = postcard::to_allocvec(value)?;
        self.bytes_then(payload, move |r| callback(r.and_then(|b| decode_value(&b))))
    }
}

/// `fut`'s output, or [`Error::Timeout`] once `limit` has passed (on `conn`'s runtime).
pub(crate) async fn within<T>(
    conn: &Connection,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Result<T, Error> {
    let sleep = conn.runtime().sleep(limit);
    futures_lite::future::or(async { Ok(fut.await) }, async {
        sleep.await;
        Err(Error::Timeout)
    })
    .await
}

fn decode_text(bytes: Bytes) -> Result<String, Error> {
    String::from_utf8(bytes.into()).map_err(|e| Error::Payload(format!("reply is not UTF-8: {e}")))
}

fn decode_value<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, Error> {
    postcard::from_bytes(bytes).map_err(Error::from)
}
