//! Hooks around every command (observe or veto), handlers on a blocking pool, and relaying
//! a call to another server; through the `zserver` facade only, on every back end:
//!
//! ```text
//! cargo test --test suite hooks::                                          # every back end
//! cargo test --test suite -- hooks:: --skip ::tokio:: --skip ::async_std::  # smol only
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use zserver::{Bytes, Client, CommandKind, Config, Error, Router, Server};

use crate::common::*;
use zserver::Calls;

async fn start(addr: &str, router: Router) -> Server {
    start_server(addr, router, Config::default()).await
}

async fn connect_with(server: &Server, router: Router) -> Client {
    connect_client(server, router, Config::default()).await
}

async fn connect(server: &Server) -> Client {
    connect_with(server, Router::new()).await
}

/// Echo handlers plus a one-way `note` that counts into `notes`.
fn base_router(notes: Arc<AtomicUsize>) -> Router {
    Router::new()
        .console("echo", |_ctx, text: String| async move { Ok(text) })
        .console("secret", |_ctx, _: String| async move {
            Ok("the secret".to_string())
        })
        .bytes("note", move |_ctx, _bytes: Bytes| {
            let notes = notes.clone();
            async move {
                notes.fetch_add(1, Ordering::SeqCst);
                Ok(Bytes::new())
            }
        })
}

// ----- hooks -----------------------------------------------------------------------------

both!(veto_by_command_name);
async fn veto_by_command_name(addr: &str) {
    let notes = Arc::new(AtomicUsize::new(0));
    let router = base_router(notes.clone()).on_execute(|info| {
        if info.command() == "secret" || (info.command() == "note" && info.payload_len() > 3) {
            return Err(Error::Denied(format!(
                "`{}` is not for you",
                info.command()
            )));
        }
        Ok(())
    });
    let server = start(addr, router).await;
    let client = connect(&server).await;
    assert_eq!(
        client.console("secret", "x").await,
        Err(Error::Denied("`secret` is not for you".into())),
        "a vetoed call gets the hook's error, with its own kind"
    );
    assert_eq!(client.console("echo", "hi").await.unwrap(), "hi");
    // A vetoed send is dropped; an allowed one runs. The echo after them orders the check.
    client.send_bytes("note", b"long payload").await.unwrap();
    client.send_bytes("note", b"ok").await.unwrap();
    assert_eq!(client.console("echo", "after").await.unwrap(), "after");
    until("the allowed note ran", || notes.load(Ordering::SeqCst) == 1).await;
    let stats = server.stats().totals;
    assert_eq!(stats.commands_vetoed, 2, "one call and one send vetoed");
    assert_eq!(stats.hook_panics, 0);
    assert_eq!(notes.load(Ordering::SeqCst), 1, "the vetoed send never ran");
    // The connection is fine after vetoes.
    assert_eq!(client.console("echo", "still").await.unwrap(), "still");
    server.shutdown().await;
}

both!(veto_by_connection_until_login);
async fn veto_by_connection_until_login(addr: &str) {
    let logged_in: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (hook_set, login_set) = (logged_in.clone(), logged_in.clone());
    let router = base_router(Arc::default())
        .console("login", move |ctx, password: String| {
            let set = login_set.clone();
            async move {
                if password != "open sesame" {
                    return Err(Error::Denied("wrong password".into()));
                }
                set.lock().unwrap().insert(ctx.connection_id());
                Ok("welcome".to_string())
            }
        })
        .on_execute(move |info| {
            if info.command() == "login" || hook_set.lock().unwrap().contains(&info.connection_id())
            {
                Ok(())
            } else {
                Err(Error::Denied("log in first".into()))
            }
        });
    let server = start(addr, router).await;
    let ann = connect(&server).await;
    let bob = connect(&server).await;
    assert_eq!(
        ann.console("echo", "hi").await,
        Err(Error::Denied("log in first".into()))
    );
    assert_eq!(
        ann.console("login", "guess").await,
        Err(Error::Denied("wrong password".into()))
    );
    assert_eq!(
        ann.console("login", "open sesame").await.unwrap(),
        "welcome"
    );
    assert_eq!(ann.console("echo", "hi").await.unwrap(), "hi");
    assert_eq!(ann.console("secret", "").await.unwrap(), "the secret");
    // Another connection from the same address is still refused.
    assert_eq!(
        bob.console("secret", "").await,
        Err(Error::Denied("log in first".into()))
    );
    assert_eq!(
        bob.console("nosuch", "").await,
        Err(Error::Denied("log in first".into())),
        "unknown commands are vetoed before they are looked up"
    );
    assert_eq!(
        ann.console("nosuch", "").await,
        Err(Error::UnknownCommand("nosuch".into()))
    );
    assert_eq!(server.stats().totals.commands_vetoed, 3);
    server.shutdown().await;
}

#[derive(Default)]
struct Seen {
    executed: HashMap<(String, CommandKind), usize>,
    completed_ok: HashMap<String, usize>,
    completed_err: HashMap<String, Vec<Error>>,
    peers_ok: bool,
}

both!(observe_every_command);
async fn observe_every_command(addr: &str) {
    let seen = Watch::new(Seen {
        peers_ok: true,
        ..Seen::default()
    });
    let (on_exec, on_done) = (seen.clone(), seen.clone());
    let metrics = Arc::new(zserver::metrics::CallMetrics::default());
    let router = base_router(Arc::default())
        .on_complete(metrics.hook())
        .console("fail", |_ctx, _: String| async move {
            Err::<String, _>(Error::msg("nope"))
        })
        .delayed("drop", |_ctx, _bytes, responder| drop(responder))
        .on_execute(move |info| {
            let key = (info.command().to_string(), info.kind());
            let loopback = info.peer_addr().ip().is_loopback() && info.peer_key().is_some();
            on_exec.update(|s| {
                *s.executed.entry(key).or_default() += 1;
                s.peers_ok &= loopback;
            });
            Ok(())
        })
        .on_complete(move |info, outcome, elapsed| {
            assert!(elapsed < Duration::from_secs(60));
            let name = info.command().to_string();
            on_done.update(|s| match outcome {
                Ok(()) => *s.completed_ok.entry(name).or_default() += 1,
                Err(e) => s.completed_err.entry(name).or_default().push(e.clone()),
            });
        });
    let server = start(addr, router).await;
    let client = connect(&server).await;
    for i in 0..10 {
        assert_eq!(
            client.console("echo", &i.to_string()).await.unwrap(),
            i.to_string()
        );
    }
    for _ in 0..5 {
        client.send_bytes("note", b"n").await.unwrap();
    }
    assert_eq!(
        client.console("fail", "").await,
        Err(Error::Remote("nope".into()))
    );
    assert_eq!(client.console("drop", "").await, Err(Error::NoResponse));
    assert!(matches!(
        client.console("nosuch", "").await,
        Err(Error::UnknownCommand(_))
    ));
    seen.wait_for("every completion", |s| {
        s.completed_ok.get("echo") == Some(&10) && s.completed_ok.get("note") == Some(&5)
    })
    .await;
    seen.get(|s| {
        assert!(s.peers_ok, "hooks see the peer's loopback address and key");
        let count = |name: &str, kind| s.executed.get(&(name.to_string(), kind)).copied();
        assert_eq!(count("echo", CommandKind::Call), Some(10));
        assert_eq!(count("note", CommandKind::Send), Some(5));
        assert_eq!(count("fail", CommandKind::Call), Some(1));
        assert_eq!(count("drop", CommandKind::Call), Some(1));
        assert_eq!(
            count("nosuch", CommandKind::Call),
            Some(1),
            "unknown names too"
        );
        assert_eq!(s.completed_err["fail"], vec![Error::Remote("nope".into())]);
        assert_eq!(s.completed_err["drop"], vec![Error::NoResponse]);
        assert!(!s.completed_ok.contains_key("nosuch"));
        assert!(!s.completed_err.contains_key("nosuch"));
    });
    // The metrics hook saw the same completions (unknown commands are not handled).
    let m = metrics.snapshot();
    assert_eq!(
        m.calls,
        vec![("call", 12), ("send", 5), ("upload", 0), ("download", 0)]
    );
    assert_eq!(
        m.errors,
        vec![("call", "handler", 1), ("call", "no_response", 1)]
    );
    assert_eq!(m.count, 17);
    server.shutdown().await;
}

both!(on_send_vetoes_locally);
async fn on_send_vetoes_locally(addr: &str) {
    let notes = Arc::new(AtomicUsize::new(0));
    let server = start(addr, base_router(notes.clone())).await;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let s = sent.clone();
    let client_router = Router::new().on_send(move |info| {
        s.lock()
            .unwrap()
            .push((info.command().to_string(), info.kind()));
        if info.command() == "secret" || info.payload_len() > 100 {
            return Err(Error::Denied("not from here".into()));
        }
        Ok(())
    });
    let client = connect_with(&server, client_router).await;
    assert_eq!(
        client.console("secret", "").await,
        Err(Error::Denied("not from here".into()))
    );
    assert_eq!(
        client
            .request("secret")
            .timeout(Duration::from_secs(5))
            .bytes(b"")
            .await,
        Err(Error::Denied("not from here".into()))
    );
    assert_eq!(
        client.send_bytes("note", [0u8; 200]).await,
        Err(Error::Denied("not from here".into()))
    );
    let called_back = Arc::new(AtomicUsize::new(0));
    let c = called_back.clone();
    assert_eq!(
        client.request("secret").console_then("", move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        }),
        Err(Error::Denied("not from here".into()))
    );
    assert_eq!(client.console("echo", "fine").await.unwrap(), "fine");
    client.send_bytes("note", b"small").await.unwrap();
    assert_eq!(client.console("echo", "sync").await.unwrap(), "sync");
    until("the allowed note ran", || notes.load(Ordering::SeqCst) == 1).await;
    // Nothing vetoed reached the server.
    let client_stats = client.connection().stats();
    assert_eq!(client_stats.calls_out, 3, "two echoes and one note left");
    until("the server counted them", || {
        server.stats().totals.calls_in == 3
    })
    .await;
    assert_eq!(called_back.load(Ordering::SeqCst), 0);
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 7, "the hook saw every attempt: {sent:?}");
    assert_eq!(sent[2], ("note".to_string(), CommandKind::Send));
    assert_eq!(sent[4], ("echo".to_string(), CommandKind::Call));
    server.shutdown().await;
}

both!(panicking_hooks_do_not_kill_the_connection);
async fn panicking_hooks_do_not_kill_the_connection(addr: &str) {
    let router = base_router(Arc::default())
        .on_execute(|info| {
            if info.command() == "secret" {
                panic!("hook bug");
            }
            Ok(())
        })
        .on_complete(|info, _, _| {
            if info.command() == "echo" {
                panic!("metrics bug");
            }
        });
    let server = start(addr, router).await;
    let client = connect_with(
        &server,
        Router::new().on_send(|info| {
            if info.command() == "boom" {
                panic!("client hook bug");
            }
            Ok(())
        }),
    )
    .await;
    assert!(
        matches!(client.console("secret", "").await, Err(Error::Denied(_))),
        "a panicking veto hook refuses the command"
    );
    assert!(matches!(
        client.console("boom", "").await,
        Err(Error::Denied(_))
    ));
    assert_eq!(client.connection().stats().hook_panics, 1);
    for _ in 0..3 {
        assert_eq!(client.console("echo", "ok").await.unwrap(), "ok");
    }
    until("the completion hook panics were counted", || {
        server.stats().totals.hook_panics == 4
    })
    .await;
    let stats = server.stats().totals;
    assert_eq!(stats.commands_vetoed, 1);
    assert_eq!(stats.handler_panics, 0);
    assert!(!client.connection().is_closed());
    assert_eq!(server.connection_count(), 1);
    server.shutdown().await;
}

both!(hooks_see_streams);
async fn hooks_see_streams(addr: &str) {
    let seen = Watch::new(Vec::new());
    let (on_exec, on_done) = (seen.clone(), seen.clone());
    let read = |_ctx, body: zserver::Incoming| async move {
        Ok(body.read_all(1 << 24).await?.len().to_string())
    };
    let router = Router::new()
        .upload("put", read)
        .upload("locked", read)
        .download("get", |_ctx, _req| async move {
            Ok(zserver::Outgoing::bytes(vec![7u8; 100_000]))
        })
        .on_execute(move |info| {
            on_exec.update(|s| s.push(("execute", info.command().to_string(), info.kind())));
            if info.command() == "locked" {
                return Err(Error::Denied("locked".into()));
            }
            Ok(())
        })
        .on_complete(move |info, outcome, _| {
            assert!(outcome.is_ok(), "{outcome:?}");
            on_done.update(|s| s.push(("complete", info.command().to_string(), info.kind())));
        });
    let server = start(addr, router).await;
    let client = connect(&server).await;
    let big = || zserver::Outgoing::bytes(vec![1u8; 1 << 20]);
    assert_eq!(
        &client.upload("put", "a", big()).await.unwrap()[..],
        b"1048576"
    );
    assert_eq!(
        within(WAIT, "a vetoed upload", client.upload("locked", "a", big())).await,
        Err(Error::Denied("locked".into())),
        "a vetoed upload is refused and its sender stopped"
    );
    let body = client.download("get", "x", 0).await.unwrap();
    assert_eq!(body.read_all(1 << 20).await.unwrap().len(), 100_000);
    assert_eq!(
        client.console("nosuch", "").await.unwrap_err(),
        Error::UnknownCommand("nosuch".into())
    );
    seen.wait_for("the download's completion", |s| s.len() == 6)
        .await;
    let mut events = seen.snapshot();
    events.sort();
    assert_eq!(
        events,
        [
            ("complete", "get".to_string(), CommandKind::Download),
            ("complete", "put".to_string(), CommandKind::Upload),
            ("execute", "get".to_string(), CommandKind::Download),
            ("execute", "locked".to_string(), CommandKind::Upload),
            ("execute", "nosuch".to_string(), CommandKind::Call),
            ("execute", "put".to_string(), CommandKind::Upload),
        ]
    );
    assert_eq!(server.stats().totals.commands_vetoed, 1);
    server.shutdown().await;
}

// ----- handlers on a blocking pool ------------------------------------------------------

/// A gate blocking threads until opened.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

both!(blocking_handlers_do_not_stall_the_runtime);
async fn blocking_handlers_do_not_stall_the_runtime(addr: &str) {
    // More blocked handlers than the machine has cores, so more than any runtime has
    // worker threads: if they ran on the runtime, nothing else could be answered.
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let slow = cores * 2 + 2;
    let gate = Arc::new(Gate::default());
    let started = Arc::new(AtomicUsize::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let router = base_router(Arc::default())
        .blocking_bytes("crunch", move |_ctx, bytes| {
            s.fetch_add(1, Ordering::SeqCst);
            g.wait();
            std::thread::sleep(Duration::from_millis(300));
            Ok(bytes.iter().map(|b| b.wrapping_add(1)).collect::<Vec<u8>>())
        })
        .blocking_call("sum", |_ctx, v: Vec<u64>| {
            Ok::<_, Error>(v.iter().sum::<u64>())
        })
        .blocking_bytes("explode", |_ctx, _bytes| -> Result<Vec<u8>, Error> {
            panic!("cpu handler bug")
        });
    let server = start(addr, router).await;
    let client = connect(&server).await;
    let other = connect(&server).await;
    let done = Arc::new(AtomicUsize::new(0));
    let slow_calls: Vec<_> = (0..slow)
        .map(|i| {
            let (client, done) = (client.clone(), done.clone());
            async move {
                let reply = client.call_bytes("crunch", [i as u8]).await;
                done.fetch_add(1, Ordering::SeqCst);
                reply
            }
        })
        .collect();
    let checks = async {
        until("every slow handler blocked its thread", || {
            started.load(Ordering::SeqCst) == slow
        })
        .await;
        // The same connection and another one still answer while every one is blocked.
        for i in 0..20 {
            let text = i.to_string();
            assert_eq!(client.console("echo", &text).await.unwrap(), text);
            assert_eq!(other.console("echo", &text).await.unwrap(), text);
        }
        let sum: u64 = other.call("sum", &vec![1u64, 2, 3]).await.unwrap();
        assert_eq!(sum, 6);
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "the slow calls are still running"
        );
        gate.open();
    };
    let (replies, ()) = futures_lite::future::zip(join_all(slow_calls), checks).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(&reply.unwrap()[..], [i as u8 + 1]);
    }
    // A panic on the pool is caught and counted like any handler's.
    assert_eq!(
        client.call_bytes("explode", b"").await,
        Err(Error::NoResponse)
    );
    assert_eq!(server.stats().totals.handler_panics, 1);
    assert_eq!(client.console("echo", "alive").await.unwrap(), "alive");
    server.shutdown().await;
}

// ----- relay ------------------------------------------------------------------------------

/// Server B: an echo, a slow command answered when the test says so, and errors.
fn backend_router(parked: Arc<Watch<Vec<zserver::Responder>>>) -> Router {
    Router::new()
        .bytes("echo", |_ctx, bytes: Bytes| async move { Ok(bytes) })
        .delayed("slow", move |_ctx, _bytes, responder| {
            parked.update(|p| p.push(responder))
        })
        .bytes("fail", |_ctx, _bytes: Bytes| async move {
            Err::<Bytes, _>(Error::msg("backend says no"))
        })
        .call("typed", |_ctx, n: u32| async move { Ok::<_, Error>(n * 2) })
        .on_execute(|info| {
            if info.command() == "private" {
                return Err(Error::Denied("private".into()));
            }
            Ok(())
        })
}

/// Server A: `relay` takes `(command, payload)` and answers with B's reply to it, or with
/// B's error.
fn relay_router(backend: Client) -> Router {
    Router::new().call(
        "relay",
        move |_ctx, (command, payload): (String, Vec<u8>)| {
            let backend = backend.clone();
            async move { Ok(backend.call_bytes(&command, payload).await?.to_vec()) }
        },
    )
}

async fn relayed(client: &Client, command: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
    client.call("relay", &(command, payload)).await
}

both!(relay_forwards_without_blocking);
async fn relay_forwards_without_blocking(addr: &str) {
    let parked = Watch::new(Vec::new());
    let backend = start(addr, backend_router(parked.clone())).await;
    let to_backend = connect(&backend).await;
    let front = start(addr, relay_router(to_backend)).await;
    let clients = [
        connect(&front).await,
        connect(&front).await,
        connect(&front).await,
    ];

    // A relayed call B holds does not block other relayed calls.
    let slow = relayed(&clients[0], "slow", b"");
    let others = async {
        parked
            .wait_for("B holds the slow call", |p| p.len() == 1)
            .await;
        let calls = (0..300).map(|i: u32| {
            let client = &clients[i as usize % clients.len()];
            async move {
                let payload = i.to_le_bytes();
                let reply = relayed(client, "echo", &payload).await.unwrap();
                assert_eq!(&reply[..], payload);
            }
        });
        join_all(calls).await;
        parked.update(|p| p.pop().unwrap().reply(b"finally"));
    };
    let (slow, ()) = futures_lite::future::zip(slow, others).await;
    assert_eq!(&slow.unwrap()[..], b"finally");

    // B's errors reach the original caller with the same kind.
    assert_eq!(
        relayed(&clients[1], "fail", b"").await,
        Err(Error::Remote("backend says no".into()))
    );
    assert_eq!(
        relayed(&clients[1], "nosuch", b"").await,
        Err(Error::UnknownCommand("nosuch".into()))
    );
    assert_eq!(
        relayed(&clients[1], "private", b"").await,
        Err(Error::Denied("private".into()))
    );
    assert!(matches!(
        relayed(&clients[1], "typed", b"\xff\xff\xff\xff\xff\xff").await,
        Err(Error::BadRequest(_))
    ));
    // postcard: a small u32 is one byte.
    assert_eq!(relayed(&clients[2], "typed", &[21]).await.unwrap(), [42]);
    front.shutdown().await;
    backend.shutdown().await;
}

both!(a_panic_is_counted_before_its_caller_hears_of_it);
/// A handler's panic is counted before its caller is sent `NoResponse`: the responder the
/// unwinding drops counts it, then queues the answer. The `on_complete` hook runs right
/// after the answer is queued, on the same thread, so it sees what the caller could: the
/// panic already counted (before, it was counted only once the unwinding had finished).
async fn a_panic_is_counted_before_its_caller_hears_of_it(addr: &str) {
    let seen = Watch::new(Vec::<u64>::new());
    let record = seen.clone();
    let router = Router::new()
        .bytes("boom", |_ctx, _b| async move {
            zserver::sleep(Duration::from_millis(5)).await;
            if true {
                panic!("handler bug");
            }
            Ok(Vec::new())
        })
        .bytes("boom-now", |_ctx, _b| async move {
            if true {
                panic!("handler bug");
            }
            Ok(Vec::new())
        })
        .on_complete(move |info, _outcome, _elapsed| {
            let panics = info.connection().stats().handler_panics;
            record.update(|v| v.push(panics));
        });
    let server = start(addr, router).await;
    let client = connect(&server).await;
    assert_eq!(client.call_bytes("boom", b"").await, Err(Error::NoResponse));
    // The first hook may run after the caller heard (it follows the unwinding): wait for
    // it, or a busy machine lets the second panic be counted before it looks.
    seen.wait_for("the first completion", |v| v.len() == 1)
        .await;
    assert_eq!(
        client.call_bytes("boom-now", b"").await,
        Err(Error::NoResponse)
    );
    seen.wait_for("both completions", |v| v.len() == 2).await;
    assert_eq!(
        seen.snapshot(),
        [1, 2],
        "counted before the answer was queued"
    );
    assert_eq!(server.stats().totals.handler_panics, 2, "and counted once");
    server.shutdown().await;
}
