//! A blocking client for code that is not async (ZServer4D's WaitSend family).
//!
//! Every call blocks the calling thread until the reply or the time-out. The connection's
//! I/O runs on the transport's runtime; a call made from one of that runtime's worker
//! threads is refused with [`Error::BlockingInRuntime`] instead of stalling it.

use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Client, ClientBuilder};
use crate::error::Error;

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
        if self.client.runtime().on_worker_thread() {
            return Err(Error::BlockingInRuntime);
        }
        futures_lite::future::block_on(fut)
    }

    /// Calls `command` with raw bytes and waits for the reply.
    pub fn call_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> Result<Bytes, Error> {
        self.block(
            self.client
                .call_bytes_timeout(command, payload, self.timeout),
        )
    }

    /// Calls a console command and waits for its text reply.
    pub fn console(&self, command: &str, text: &str) -> Result<String, Error> {
        self.block(self.client.console_timeout(command, text, self.timeout))
    }

    /// Calls a typed command and waits for its reply.
    pub fn call<T, R>(&self, command: &str, value: &T) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.block(self.client.call_timeout(command, value, self.timeout))
    }

    /// Sends a one-way message, waiting (up to the time-out) only for buffer space.
    pub fn send_bytes(&self, command: &str, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        let client = &self.client;
        let sleep = client.runtime().sleep(self.timeout);
        self.block(futures_lite::future::or(
            client.send_bytes(command, payload),
            async {
                sleep.await;
                Err(Error::Timeout)
            },
        ))
    }
}
