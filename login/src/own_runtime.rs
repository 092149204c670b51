//! A tokio runtime of the login server's own (the cluster's NATS client, the server API), so
//! that a server on any of zserver's back ends can use tokio-based crates.

/// A tokio runtime owned by a part of the server, shut down without blocking when dropped:
/// it may be dropped on another runtime's thread, where a blocking shutdown panics.
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    /// A multi-threaded runtime of `threads` workers named `name`, with I/O and timers.
    pub(crate) fn new(threads: usize, name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// A handle to spawn on it.
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle().clone(),
            None => unreachable!("the runtime is only taken out when dropped"),
        }
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
