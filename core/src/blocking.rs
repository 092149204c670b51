//! A blocking client for code that is not async (ZServer4D's WaitSend family).
//!
//! It has the methods of [`Calls`], each blocking the calling thread until the reply or
//! the time-out. The connection's I/O runs on the transport's runtime; a call made from one
//! of that runtime's worker threads is refused with [`Error::BlockingInRuntime`] instead of
//! stalling it.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::calls::{within, Calls, RequestBuilder};
use crate::client::{Client, ClientBuilder};
use crate::error::Error;
use crate::service::{Method, ObjectId, RemoteObject, ServiceInfo};
use crate::stream::{Incoming, Outgoing};

/// A client whose calls block the calling thread, each bounded by a time-out.
#[derive(Clone)]
pub struct BlockingClient {
    client: Client,
    timeout: Duration,
}

impl BlockingClient {
    /// Connects with `builder`, blocking until connected; calls time out after `timeout`.
    pub fn connect(
        builder: ClientBuilder,
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> Result<Self, Error> {
        if builder.transport().runtime().on_worker_thread() {
            return Err(Error::BlockingInRuntime);
        }
        let client = futures_lite::future::block_on(builder.connect(addr))?;
        Ok(Self::new(client, timeout))
    }

    /// Wraps a connected client; calls time out after `timeout`.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The async client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Changes the time-out for later calls.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn block<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.client.link()?.runtime().on_worker_thread() {
            return Err(Error::BlockingInRuntime);
        }
        futures_lite::future::block_on(fut)
    }

    /// [`block`](Self::block), failing with [`Error::Timeout`] after the time-out.
    fn block_timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let conn = self.client.link()?;
        self.block(async { within(&conn, self.timeout, fut).await? })
    }

    fn request<'a>(&'a self, command: &'a str) -> RequestBuilder<'a> {
        self.client.request(command).timeout(self.timeout)
    }

    /// [`Calls::call_bytes`], blocking.
    pub fn call_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> Result<Bytes, Error> {
        self.block(self.request(command).bytes(payload))
    }

    /// [`Calls::console`], blocking.
    pub fn console(&self, command: &str, text: &str) -> Result<String, Error> {
        self.block(self.request(command).console(text))
    }

    /// [`Calls::call`], blocking.
    pub fn call<T, R>(&self, command: &str, value: &T) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned + Send,
    {
        self.block(self.request(command).call(value))
    }

    /// [`Calls::send_bytes`], blocking; waits (up to the time-out) only for buffer space.
    pub fn send_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        self.block(self.request(command).send_bytes(payload))
    }

    /// [`Calls::send`], blocking; waits (up to the time-out) only for buffer space.
    pub fn send<T: Serialize + ?Sized>(&self, command: &str, value: &T) -> Result<(), Error> {
        self.block(self.request(command).send(value))
    }

    /// [`Calls::upload`], blocking until the handler's reply.
    pub fn upload(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        body: Outgoing,
    ) -> Result<Bytes, Error> {
        self.block(self.request(command).upload(meta, body))
    }

    /// [`Calls::download`], blocking until the stream starts. Reading the [`Incoming`] is
    /// async; from blocking code, [`download_to_file`](Self::download_to_file) is simpler.
    pub fn download(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        offset: u64,
    ) -> Result<Incoming, Error> {
        self.block(self.request(command).download(meta, offset))
    }

    /// [`Calls::download_to_file`], blocking until the file is written (no time-out: a
    /// big file takes as long as it takes).
    pub fn download_to_file(
        &self,
        command: &str,
        meta: impl AsRef<[u8]>,
        path: impl AsRef<Path>,
        resume: bool,
    ) -> Result<u64, Error> {
        let (meta, path) = (meta.as_ref(), path.as_ref());
        self.block(self.client.download_to_file(command, meta, path, resume))
    }

    /// [`Calls::ping`], blocking.
    pub fn ping(&self) -> Result<Duration, Error> {
        self.block_timed(self.client.ping())
    }

    /// [`Calls::services`], blocking.
    pub fn services(&self) -> Result<Vec<ServiceInfo>, Error> {
        self.block_timed(self.client.services())
    }

    /// [`Calls::invoke`], blocking.
    pub fn invoke<A, R>(&self, method: &Method<A, R>, argument: &A) -> Result<R, Error>
    where
        A: Serialize + Sync,
        R: DeserializeOwned + Send,
    {
        self.block_timed(self.client.invoke(method, argument))
    }

    /// [`Calls::create`], blocking.
    pub fn create<A>(
        &self,
        constructor: &Method<A, ObjectId>,
        argument: &A,
    ) -> Result<RemoteObject, Error>
    where
        A: Serialize + Sync,
    {
        self.block_timed(self.client.create(constructor, argument))
    }
}
