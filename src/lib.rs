//! zserver: middleware for servers that hold very many long-lived client connections.
//!
//! The back end is picked by a Cargo feature: `tokio` (default), `smol`, or `async-std`
//! (kept for existing async-std applications; async-std is discontinued upstream, so new
//! applications should pick tokio or smol). Application code is the same under each.
//!
//! ```
//! use zserver::{Calls, Error, Router};
//!
//! zserver::block_on(async {
//!     let router = Router::new()
//!         .console("hello", |_ctx, name: String| async move { Ok(format!("hello, {name}")) });
//!     let server = zserver::server().router(router).bind("127.0.0.1:0").await?;
//!     let client = zserver::client().connect(server.local_addr()).await?;
//!     assert_eq!(client.console("hello", "world").await?, "hello, world");
//!     server.shutdown().await;
//!     Ok::<_, Error>(())
//! })
//! .unwrap();
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

pub use zserver_core::*;

#[cfg(not(any(feature = "tokio", feature = "async-std", feature = "smol")))]
compile_error!("zserver needs one back-end feature: `tokio` (default), `smol` or `async-std`");

/// The environment variable that picks the default back end among those compiled in:
/// `ZSERVER_BACKEND=smol` runs the same binary on smol. Unset, the default is tokio if
/// compiled in, else async-std, else smol.
pub const BACKEND_ENV: &str = "ZSERVER_BACKEND";

/// The names of the back ends compiled into this build, in the order tokio, async-std, smol.
fn compiled() -> Vec<&'static str> {
    [
        cfg!(feature = "tokio").then_some("tokio"),
        cfg!(feature = "async-std").then_some("async-std"),
        cfg!(feature = "smol").then_some("smol"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The process's default back end: [`BACKEND_ENV`] if set, else the first compiled in.
fn process_default() -> &'static str {
    static CHOSEN: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| {
        let compiled = compiled();
        match std::env::var(BACKEND_ENV) {
            Ok(name) if !name.is_empty() => compiled
                .iter()
                .copied()
                .find(|b| *b == name)
                .unwrap_or_else(|| {
                    panic!("{BACKEND_ENV}={name}: this build has the back ends {compiled:?} only")
                }),
            _ => compiled[0],
        }
    })
}

thread_local! {
    /// The back end [`with_backend`] chose for this thread, while it runs.
    static CHOSEN_HERE: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// The default back end's name, which [`server`], [`client`], [`block_on`], [`spawn`] and
/// [`sleep`] use: the one [`with_backend`] chose for this thread; else, on a thread of a
/// back end's runtime (a handler, a spawned task), that back end; else [`BACKEND_ENV`] if
/// set; else the first compiled in.
///
/// # Panics
/// If [`BACKEND_ENV`] names a back end that is not compiled into this build: running on
/// another one than asked would be worse than stopping.
pub fn default_backend() -> &'static str {
    if let Some(name) = CHOSEN_HERE.with(std::cell::Cell::get) {
        return name;
    }
    #[cfg(feature = "tokio")]
    if zserver_tokio::on_worker_thread() {
        return "tokio";
    }
    #[cfg(feature = "async-std")]
    if zserver_asyncstd::on_worker_thread() {
        return "async-std";
    }
    #[cfg(feature = "smol")]
    if zserver_smol::on_worker_thread() {
        return "smol";
    }
    process_default()
}

/// Runs `f` with `name` as this thread's default back end (see [`default_backend`]), as a
/// test suite does to run each case on every back end of one build.
///
/// ```
/// for name in zserver::backends() {
///     zserver::with_backend(name, || {
///         assert_eq!(zserver::default_backend(), name);
///         zserver::block_on(zserver::sleep(std::time::Duration::from_millis(1)));
///     });
/// }
/// ```
///
/// # Panics
/// If `name` is not a back end compiled into this build.
pub fn with_backend<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let name = compiled()
        .into_iter()
        .find(|b| *b == name)
        .unwrap_or_else(|| panic!("back end `{name}` is not compiled into this build"));
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHOSEN_HERE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CHOSEN_HERE.with(|c| c.replace(Some(name))));
    f()
}

/// The names of the back ends compiled into this build, the process's default first.
pub fn backends() -> Vec<&'static str> {
    let default = process_default();
    let mut names = compiled();
    names.retain(|b| *b != default);
    names.insert(0, default);
    names
}

/// The transport of the back end called `name` (`"tokio"`, `"async-std"`, `"smol"`), if
/// it is compiled in.
pub fn transport(name: &str) -> Option<Arc<dyn Transport>> {
    match name {
        #[cfg(feature = "tokio")]
        "tokio" => Some(Arc::new(
            zserver_tokio::TokioTransport::current_or_background(),
        )),
        #[cfg(feature = "async-std")]
        "async-std" => Some(Arc::new(zserver_asyncstd::AsyncStdTransport)),
        #[cfg(feature = "smol")]
        "smol" => Some(Arc::new(zserver_smol::SmolTransport)),
        _ => None,
    }
}

/// The default back end's transport (see [`default_backend`]). With tokio it uses the
/// caller's runtime if there is one, else a shared background one.
pub fn default_transport() -> Arc<dyn Transport> {
    transport(default_backend()).expect("the default back end is compiled in")
}

/// A server builder on the default back end.
pub fn server() -> ServerBuilder {
    ServerBuilder::new(default_transport())
}

/// A client builder on the default back end.
pub fn client() -> ClientBuilder {
    ClientBuilder::new(default_transport())
}

/// Connects a [`BlockingClient`] on the default back end, for code that is not async.
///
/// ```no_run
/// let client = zserver::connect_blocking("127.0.0.1:7000", std::time::Duration::from_secs(5))?;
/// let reply = client.console("hello", "world")?;
/// # Ok::<_, zserver::Error>(())
/// ```
pub fn connect_blocking(
    addr: impl ToSocketAddrs,
    timeout: Duration,
) -> Result<BlockingClient, Error> {
    BlockingClient::connect(client(), addr, timeout)
}

/// Runs a future to completion on the calling thread, driving the default back end.
/// Not for use inside an async context.
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    match default_backend() {
        #[cfg(feature = "tokio")]
        "tokio" => zserver_tokio::background().block_on(fut),
        #[cfg(feature = "async-std")]
        "async-std" => zserver_asyncstd::block_on(fut),
        #[cfg(feature = "smol")]
        "smol" => zserver_smol::block_on(fut),
        other => unreachable!("default_backend() returned {other}, which is not compiled in"),
    }
}

/// Runs `task` in the background on the default back end.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    default_transport().runtime().spawn(Box::pin(task));
}

/// Waits for `duration` on the default back end's timer.
pub async fn sleep(duration: Duration) {
    default_transport().runtime().sleep(duration).await
}

/// The README's examples, compiled and run as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
