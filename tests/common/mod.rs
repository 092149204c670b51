//! Runtime-agnostic helpers for the engine tests: a hard time limit per test, an awaitable
//! shared value, a join over many futures, a way to run blocking code off the executor,
//! and raw-socket helpers for hostile-peer tests. Only std, futures-lite and the zserver
//! facade are used, so the same code runs under every back end.
#![allow(dead_code)]

pub(crate) mod generated;

/// `both!(case)`: the tests `case::BACKEND::v4` and `case::BACKEND::v6` for every back end
/// compiled in (`tokio`, `async_std`, `smol`), each running `async fn case(addr)` under
/// that back end's `block_on`, with that back end as the test thread's default, within the
/// time limit. `both!(sync case)` does the same for a plain `fn case(addr)` (run on a std
/// thread, outside any runtime).
#[allow(unused_macros)]
macro_rules! both {
    ($(#[$m:meta])* $name:ident) => {
        per_backend!(v4_and_v6, $(#[$m])* $name, |addr| zserver::block_on(super::super::$name(addr)));
    };
    ($(#[$m:meta])* sync $name:ident) => {
        per_backend!(v4_and_v6, $(#[$m])* $name, |addr| super::super::$name(addr));
    };
}

/// `every_backend!(case)`: the test `case::BACKEND::run` for every back end compiled in,
/// each running the plain `fn case()` with that back end as its thread's default, within
/// the time limit.
#[allow(unused_macros)]
macro_rules! every_backend {
    ($(#[$m:meta])* $name:ident) => {
        per_backend!(run_once, $(#[$m])* $name, |_unused| super::super::$name());
    };
}

/// The test `run` of one back end: `$body`, once.
#[allow(unused_macros)]
macro_rules! run_once {
    ($(#[$m:meta])* $backend:literal, |$addr:ident| $body:expr) => {
        one_test!($(#[$m])* run, $backend, (), |$addr| $body);
    };
}

/// `mod case { mod tokio { .. } mod async_std { .. } mod smol { .. } }`, each back end's
/// module holding the tests `$tests!` makes, for the back ends compiled in.
#[allow(unused_macros)]
macro_rules! per_backend {
    ($tests:ident, $(#[$m:meta])* $name:ident, |$addr:ident| $body:expr) => {
        mod $name {
            #[cfg(feature = "tokio")]
            mod tokio {
                $tests!($(#[$m])* "tokio", |$addr| $body);
            }
            #[cfg(feature = "async-std")]
            mod async_std {
                $tests!($(#[$m])* "async-std", |$addr| $body);
            }
            #[cfg(feature = "smol")]
            mod smol {
                $tests!($(#[$m])* "smol", |$addr| $body);
            }
        }
    };
}

/// The tests `v4` and `v6` of one back end: `$body` with `$addr` on IPv4 and IPv6 loopback.
#[allow(unused_macros)]
macro_rules! v4_and_v6 {
    ($(#[$m:meta])* $backend:literal, |$addr:ident| $body:expr) => {
        one_test!($(#[$m])* v4, $backend, "127.0.0.1:0", |$addr| $body);
        one_test!($(#[$m])* v6, $backend, "[::1]:0", |$addr| $body);
    };
}

/// The test `v4` of one back end: `$body` with `$addr` on IPv4 loopback.
#[allow(unused_macros)]
macro_rules! v4_only {
    ($(#[$m:meta])* $backend:literal, |$addr:ident| $body:expr) => {
        one_test!($(#[$m])* v4, $backend, "127.0.0.1:0", |$addr| $body);
    };
}

/// One test `$test` of one back end: `$body` with `$addr` bound to `$at`, on a thread
/// whose default back end is `$backend`, within the time limit.
#[allow(unused_macros)]
macro_rules! one_test {
    ($(#[$m:meta])* $test:ident, $backend:literal, $at:expr, |$addr:ident| $body:expr) => {
        #[test]
        $(#[$m])*
        fn $test() {
            crate::common::bounded_on($backend, || {
                let $addr = $at;
                $body
            })
        }
    };
}

use std::future::{poll_fn, Future};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Every test fails if it has not finished within this time.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(30);

/// How long a test waits for one expected event before failing.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Runs `f` on its own thread and fails if it panics or does not finish within
/// [`TEST_LIMIT`]. A hung body (async or blocking) thus fails instead of hanging the suite.
pub(crate) fn bounded(f: impl FnOnce() + Send + 'static) {
    bounded_on(zserver::default_backend(), f)
}

/// [`bounded`], with `backend` as the default back end of the thread that runs `f`.
pub(crate) fn bounded_on(backend: &'static str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("bounded-test-body".into())
        .spawn(move || {
            let result = zserver::with_backend(backend, || catch_unwind(AssertUnwindSafe(f)));
            let _ = tx.send(result);
        })
        .expect("spawn the test body thread");
    match rx.recv_timeout(TEST_LIMIT) {
        Ok(Ok(())) => thread.join().expect("test body thread"),
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?} (hang)"),
    }
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub(crate) async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    let timed = futures_lite::future::or(async { Some(fut.await) }, async {
        zserver::sleep(limit).await;
        None
    })
    .await;
    timed.unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `cond` every few milliseconds until it holds, failing after [`WAIT`]. Only for
/// state that has no event to await (such as a connection count dropping).
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        zserver::sleep(Duration::from_millis(5)).await;
    }
}

/// A shared value whose changes can be awaited from any task or thread.
pub(crate) struct Watch<T> {
    inner: Mutex<WatchInner<T>>,
}

struct WatchInner<T> {
    value: T,
    wakers: Vec<Waker>,
}

impl<T> Watch<T> {
    pub(crate) fn new(value: T) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(WatchInner {
                value,
                wakers: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, WatchInner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the value and wakes every waiter.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let (result, wakers) = {
            let mut inner = self.lock();
            let result = f(&mut inner.value);
            (result, std::mem::take(&mut inner.wakers))
        };
        wakers.into_iter().for_each(Waker::wake);
        result
    }

    /// Reads the value.
    pub(crate) fn get<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock().value)
    }

    /// Waits until `f` returns `Some`, failing the test after `limit`.
    pub(crate) async fn wait_within<R>(
        &self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&mut T) -> Option<R>,
    ) -> R {
        let ready = poll_fn(|cx| {
            let mut inner = self.lock();
            if let Some(r) = f(&mut inner.value) {
                return Poll::Ready(r);
            }
            if !inner.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                inner.wakers.push(cx.waker().clone());
            }
            Poll::Pending
        });
        within(limit, what, ready).await
    }

    /// Waits (up to [`WAIT`]) until `f` returns `Some`.
    pub(crate) async fn wait<R>(&self, what: &str, f: impl FnMut(&mut T) -> Option<R>) -> R {
        self.wait_within(WAIT, what, f).await
    }

    /// Waits (up to [`WAIT`]) until `pred` holds.
    pub(crate) async fn wait_for(&self, what: &str, mut pred: impl FnMut(&T) -> bool) {
        self.wait(what, |v| pred(v).then_some(())).await
    }
}

impl<T: Clone> Watch<T> {
    pub(crate) fn snapshot(&self) -> T {
        self.get(T::clone)
    }
}

/// Awaits every future, polling only those not yet done; results in input order.
pub(crate) async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("joined")).collect()
}

/// Runs blocking code on a plain std thread and awaits its result without blocking the
/// executor; a panic on that thread is re-raised here.
pub(crate) async fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let slot = Watch::new(None);
    let s = slot.clone();
    // The same back end as the test's, on this thread too.
    let backend = zserver::default_backend();
    std::thread::spawn(move || {
        let result = zserver::with_backend(backend, || catch_unwind(AssertUnwindSafe(f)));
        s.update(|v| *v = Some(result));
    });
    match slot
        .wait_within(TEST_LIMIT, "a blocking helper thread", Option::take)
        .await
    {
        Ok(v) => v,
        Err(panic) => resume_unwind(panic),
    }
}

// ----- raw sockets --------------------------------------------------------------------

/// The preamble of protocol version 1: magic, version 1 (LE), reserved 0.
pub(crate) const PREAMBLE: [u8; 8] = *b"ZSRV\x01\x00\x00\x00";

/// `Call` id 1 of command `echo` with payload `hi` (docs/PROTOCOL.md, "Worked example").
pub(crate) const ECHO_HI_CALL: [u8; 14] = [
    0x0a, 0, 0, 0, 0x00, 0x00, 0x01, 0x04, b'e', b'c', b'h', b'o', b'h', b'i',
];

/// The `Reply` to [`ECHO_HI_CALL`] from a console `echo` handler.
pub(crate) const ECHO_HI_REPLY: [u8; 10] = [0x06, 0, 0, 0, 0x02, 0x00, 0x01, 0x00, b'h', b'i'];

/// A blocking std socket with bounded reads and writes.
pub(crate) fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("raw connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Connects, exchanges preambles correctly and checks one documented call round trip.
pub(crate) fn raw_handshaken(addr: SocketAddr) -> TcpStream {
    let mut s = raw_connect(addr);
    s.write_all(&PREAMBLE).unwrap();
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs).expect("server preamble");
    assert_eq!(theirs, PREAMBLE, "server preamble");
    s.write_all(&ECHO_HI_CALL).unwrap();
    let mut reply = [0u8; ECHO_HI_REPLY.len()];
    s.read_exact(&mut reply)
        .expect("reply to the raw echo call");
    assert_eq!(reply, ECHO_HI_REPLY, "raw echo reply");
    s
}

/// Reads until the peer closes (EOF or reset). Fails if the socket stays open for the
/// read time-out, i.e. the server did not close the connection.
pub(crate) fn expect_closed(s: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("connection still open after read time-out: {e}"))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Ok(()), // reset by the server: closed as well
        }
    }
}

/// Runs `hostile` on a std thread against `server`, which holds exactly one good
/// connection, and waits until the server has closed the hostile one alone and counted
/// its error.
pub(crate) async fn hostile_closed_alone(
    server: &zserver::Server,
    hostile: impl FnOnce(SocketAddr) -> Result<(), String> + Send + 'static,
) {
    until("the good client is registered", || {
        server.connection_count() == 1
    })
    .await;
    let target = server.local_addr();
    let closed = on_thread(move || hostile(target)).await;
    assert_eq!(closed, Ok(()), "server must close the hostile connection");
    until("only the good connection is left", || {
        server.connection_count() == 1
    })
    .await;
    until("the protocol error is counted", || {
        server.stats().totals.errors_in >= 1
    })
    .await;
}

// ----- the transport under test --------------------------------------------------------

/// Whether the suites run over WebSocket: `ZSERVER_TEST_TRANSPORT=ws`. Servers built with
/// [`suite_server`] then listen, and clients built with [`suite_client`] connect, with
/// WebSocket over the back end's TCP; the tests themselves do not change. Tests that
/// speak the TCP wire format on raw sockets return early (see [`skip_over_ws`]).
pub(crate) fn over_ws() -> bool {
    std::env::var("ZSERVER_TEST_TRANSPORT").is_ok_and(|v| v == "ws")
}

/// The transport under test: the default back end's TCP, or WebSocket over it.
pub(crate) fn suite_transport() -> Arc<dyn zserver::Transport> {
    let tcp = zserver::default_transport();
    #[cfg(feature = "ws")]
    let tcp: Arc<dyn zserver::Transport> = if over_ws() {
        Arc::new(zserver::WsTransport::new(tcp))
    } else {
        tcp
    };
    #[cfg(not(feature = "ws"))]
    assert!(
        !over_ws(),
        "ZSERVER_TEST_TRANSPORT=ws needs the `ws` feature"
    );
    tcp
}

/// A server builder on the transport under test.
pub(crate) fn suite_server() -> zserver::ServerBuilder {
    zserver::ServerBuilder::new(suite_transport())
}

/// A client builder on the transport under test.
pub(crate) fn suite_client() -> zserver::ClientBuilder {
    zserver::ClientBuilder::new(suite_transport())
}

/// True (and says so) when running over WebSocket: for tests that write the TCP wire
/// format on raw sockets, which a WebSocket listener rightly refuses.
pub(crate) fn skip_over_ws(test: &str) -> bool {
    let skip = over_ws();
    if skip {
        eprintln!("{test}: raw TCP wire test, skipped over WebSocket");
    }
    skip
}

/// Binds a server on `addr` (port 0 for any) with `router` and `config`.
pub(crate) async fn start_server(
    addr: &str,
    router: zserver::Router,
    config: zserver::Config,
) -> zserver::Server {
    let server = suite_server()
        .router(router)
        .config(config)
        .bind(addr)
        .await
        .expect("bind");
    assert_ne!(server.local_addr().port(), 0, "port 0 was resolved");
    server
}

/// Connects a client with `router` and `config` to `server`, failing after [`WAIT`].
pub(crate) async fn connect_client(
    server: &zserver::Server,
    router: zserver::Router,
    config: zserver::Config,
) -> zserver::Client {
    within(
        WAIT,
        "connect",
        suite_client()
            .router(router)
            .config(config)
            .connect(server.local_addr()),
    )
    .await
    .expect("connect")
}

/// Shuts `server` down, failing if that takes over 15 s.
pub(crate) async fn shutdown(server: &zserver::Server) {
    within(
        Duration::from_secs(15),
        "server shutdown",
        server.shutdown(),
    )
    .await;
}
