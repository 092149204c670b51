//! The small runtime interface the core needs: spawn a task, sleep, tell the time.
//!
//! Each back end implements it for its runtime, the way quinn's `Runtime` trait lets one
//! protocol core run on tokio, async-std and smol.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A boxed, sendable future, as the runtime trait passes them around.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Spawning and timers, provided by a back end.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `task` in the background until it completes.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// A future that completes after `duration`. It may be polled from any thread.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// The current time; a test runtime may simulate it.
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Whether the calling thread is one of this runtime's worker threads, where blocking
    /// would stall other tasks. Blocking APIs refuse to run there.
    fn on_worker_thread(&self) -> bool;
}
