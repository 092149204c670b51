//! Stable sessions: the link under a connection is cut (by a proxy that drops every TCP
//! connection through it) while calls and a transfer run, and the application sees no
//! error, no loss and no duplicate. Runs unchanged on every back end.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::generated::Probe;
use crate::common::{
    bounded, join_all, skip_over_ws, suite_client, suite_server, until, within, WAIT,
};
use zserver::internal::wire::{self, Answer, Open, Refusal};
use zserver::Calls;
use zserver::{Config, Error, Outgoing, Router, StableSession};

const MIB: u64 = 1024 * 1024;

/// A TCP proxy on loopback whose links can be cut at any moment, losing whatever it had
/// read and not yet forwarded.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            links: Arc::default(),
            accepted: Arc::default(),
            refusing: Arc::default(),
        };
        let (links, accepted, refusing) = (
            proxy.links.clone(),
            proxy.accepted.clone(),
            proxy.refusing.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if refusing.load(Ordering::Acquire) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let mut held = links.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                drop(held);
                accepted.fetch_add(1, Ordering::AcqRel);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || forward(client, server));
                std::thread::spawn(move || forward(s2, c2));
            }
        });
        proxy
    }

    /// Drops every link through the proxy; returns how many there were.
    fn cut(&self) -> usize {
        let links = std::mem::take(&mut *self.links.lock().unwrap());
        for s in &links {
            let _ = s.shutdown(Shutdown::Both);
        }
        links.len() / 2
    }

    /// Links accepted so far (the first, plus one per resume).
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn stable_config(offline: Duration) -> Config {
    let mut stable = StableSession::default();
    stable.offline_timeout = offline;
    stable.keepalive = Duration::from_secs(1);
    let mut config = Config::default();
    config.stable = Some(stable);
    config
}

/// A handler that counts how often it ran for each request id.
fn counting_router(runs: Arc<Mutex<HashMap<u64, u32>>>) -> Router {
    Router::new().call("triple", move |_ctx, id: u64| {
        let runs = runs.clone();
        async move {
            *runs.lock().unwrap().entry(id).or_default() += 1;
            Ok(id * 3)
        }
    })
}

every_backend!(ten_thousand_calls_survive_cut_links);
/// 10,000 calls, 100 at a time, with the link cut under every tenth batch: every call
/// succeeds with its own answer, every handler ran exactly once, and the connection (one
/// and the same) never saw an error.
fn ten_thousand_calls_survive_cut_links() {
    bounded(|| {
        zserver::block_on(async {
            let runs = Arc::new(Mutex::new(HashMap::new()));
            let config = stable_config(Duration::from_secs(10));
            let server = suite_server()
                .router(counting_router(runs.clone()))
                .config(config.clone())
                .bind("127.0.0.1:0")
                .await?;
            let proxy = Proxy::start(server.local_addr());
            let client = suite_client().config(config).connect(proxy.addr).await?;
            let mut cuts = 0;
            for batch in 0..100u64 {
                let calls = (batch * 100..(batch + 1) * 100)
                    .map(|id| {
                        let client = &client;
                        async move { (id, client.call::<u64, u64>("triple", &id).await) }
                    })
                    .collect::<Vec<_>>();
                let cut = async {
                    if batch % 10 == 5 {
                        zserver::sleep(Duration::from_millis(1)).await;
                        cuts += proxy.cut();
                    }
                };
                let (results, ()) = within(
                    WAIT,
                    "a batch of calls",
                    futures_lite::future::zip(join_all(calls), cut),
                )
                .await;
                for (id, result) in results {
                    assert_eq!(result, Ok(id * 3), "call {id}");
                }
            }
            let runs = std::mem::take(&mut *runs.lock().unwrap());
            assert_eq!(runs.len(), 10_000, "every call reached its handler");
            assert!(
                runs.values().all(|&n| n == 1),
                "no handler ran twice: {:?}",
                runs.iter()
                    .filter(|(_, &n)| n != 1)
                    .take(5)
                    .collect::<Vec<_>>()
            );
            assert!(cuts >= 10, "the link was cut {cuts} times");
            assert!(
                proxy.accepted() > cuts,
                "{} links for {cuts} cuts",
                proxy.accepted()
            );
            assert!(!client.connection().is_closed());
            assert_eq!(server.connection_count(), 1, "one connection throughout");
            assert_eq!(server.stable_sessions(), 1);
            eprintln!("10,000 calls over {} links ({cuts} cuts)", proxy.accepted());
            drop(client);
            until("the session ends", || server.stable_sessions() == 0).await;
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(one_way_sends_survive_cut_links);
/// 5,000 one-way sends with the link cut under them every 500: the server's handler sees
/// every one exactly once, in order (they ride the session's replayed byte stream too).
fn one_way_sends_survive_cut_links() {
    bounded(|| {
        zserver::block_on(async {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            let router = Router::new().call("note", move |_ctx, id: u64| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(id);
                    Ok(())
                }
            });
            let config = stable_config(Duration::from_secs(10));
            let server = suite_server()
                .router(router)
                .config(config.clone())
                .bind("127.0.0.1:0")
                .await?;
            let proxy = Proxy::start(server.local_addr());
            let client = suite_client().config(config).connect(proxy.addr).await?;
            // A round trip first: the server has finished its side of the handshake. (A
            // link cut before that is another case: the server refuses the resume of a
            // session it has not bound yet.)
            client.ping().await?;
            let mut cuts = 0;
            for id in 0..5_000u64 {
                client.send("note", &id).await?;
                if id % 500 == 250 {
                    // Cut the live link, then go on once the session has a new one.
                    let links = proxy.accepted();
                    cuts += proxy.cut();
                    until("a new link", || proxy.accepted() > links).await;
                }
            }
            until("every send arrived", || seen.lock().unwrap().len() >= 5_000).await;
            let seen = std::mem::take(&mut *seen.lock().unwrap());
            assert_eq!(
                seen,
                (0..5_000).collect::<Vec<u64>>(),
                "each once, in order"
            );
            assert!(cuts >= 10, "the link was cut {cuts} times");
            assert!(!client.connection().is_closed());
            drop(client);
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(a_256_mib_upload_survives_cut_links);
/// A 256 MiB upload with the link cut every 100 ms arrives whole, with the sender's hash.
fn a_256_mib_upload_survives_cut_links() {
    let result = zserver::block_on(async {
        let router = Router::new().upload("sink", |_ctx, mut body| async move {
            let mut hasher = blake3::Hasher::new();
            while let Some(chunk) = body.chunk().await? {
                hasher.update(&chunk);
            }
            Ok(hasher.finalize().as_bytes().to_vec())
        });
        let config = stable_config(Duration::from_secs(10));
        let server = suite_server()
            .router(router)
            .config(config.clone())
            .bind("127.0.0.1:0")
            .await?;
        let proxy = Arc::new(Proxy::start(server.local_addr()));
        let client = suite_client().config(config).connect(proxy.addr).await?;
        let done = Arc::new(AtomicBool::new(false));
        let cutter = {
            let (proxy, done) = (proxy.clone(), done.clone());
            std::thread::spawn(move || {
                let mut cuts = 0;
                while !done.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                    cuts += proxy.cut();
                }
                cuts
            })
        };
        let probe = Probe::default();
        let body = Outgoing::reader(probe.reader(256 * MIB, 5), Some(256 * MIB));
        let progress = body.progress();
        let reply = client.upload("sink", b"", body).await;
        done.store(true, Ordering::Release);
        let cuts = cutter.join().unwrap();
        assert_eq!(&reply?[..], &probe.hash()[..], "hash of what arrived");
        assert_eq!(progress.done(), 256 * MIB);
        assert!(cuts >= 3, "the link was cut {cuts} times");
        eprintln!("256 MiB over {} links ({cuts} cuts)", proxy.accepted());
        server.shutdown().await;
        Ok::<_, Error>(())
    });
    result.unwrap();
}

every_backend!(a_session_gone_past_the_offline_timeout_fails_its_calls);
/// When the server cannot be reached again within the offline time-out, a call in flight
/// fails with an error (it does not hang), and the server forgets the session.
fn a_session_gone_past_the_offline_timeout_fails_its_calls() {
    bounded(|| {
        zserver::block_on(async {
            let parked = Arc::new(Mutex::new(Vec::new()));
            let router = {
                let parked = parked.clone();
                Router::new().delayed("park", move |_ctx, _body, responder| {
                    parked.lock().unwrap().push(responder);
                })
            };
            let config = stable_config(Duration::from_millis(500));
            let server = suite_server()
                .router(router)
                .config(config.clone())
                .bind("127.0.0.1:0")
                .await?;
            let proxy = Proxy::start(server.local_addr());
            let client = suite_client().config(config).connect(proxy.addr).await?;
            let call = client.call_bytes("park", b"");
            let cut = async {
                until("the call is parked", || !parked.lock().unwrap().is_empty()).await;
                proxy.refusing.store(true, Ordering::Release);
                proxy.cut();
            };
            let (result, ()) = within(
                WAIT,
                "the failed call",
                futures_lite::future::zip(call, cut),
            )
            .await;
            assert_eq!(result.unwrap_err(), Error::Closed);
            within(WAIT, "the client closing", client.connection().closed()).await;
            until("the server forgets the session", || {
                server.stable_sessions() == 0 && server.connection_count() == 0
            })
            .await;
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(an_unknown_session_cannot_be_resumed);
/// A resume for a session the server does not know is refused, and the server goes on.
fn an_unknown_session_cannot_be_resumed() {
    if skip_over_ws("an_unknown_session_cannot_be_resumed") {
        return;
    }
    bounded(|| {
        zserver::block_on(async {
            let config = stable_config(Duration::from_secs(5));
            let server = suite_server()
                .router(counting_router(Arc::default()))
                .config(config.clone())
                .bind("127.0.0.1:0")
                .await?;
            let addr = server.local_addr();
            let answer = crate::common::on_thread(move || {
                let mut raw = TcpStream::connect(addr).unwrap();
                let mut challenge = [0u8; wire::CHALLENGE_LEN];
                raw.read_exact(&mut challenge).unwrap();
                let nonce = wire::parse_challenge(&challenge).unwrap();
                let id = [0xAB; wire::ID_LEN];
                let proof = wire::proof(&[0; wire::KEY_LEN], &nonce, &id, 0);
                let open = Open::Resume {
                    id,
                    received: 0,
                    proof,
                };
                raw.write_all(&open.encode()).unwrap();
                let mut answer = [0u8; wire::ANSWER_LEN];
                raw.read_exact(&mut answer).unwrap();
                Answer::decode(&answer).unwrap()
            })
            .await;
            assert_eq!(answer, Answer::Refused(Refusal::Unknown));
            let client = suite_client().config(config).connect(addr).await?;
            assert_eq!(client.call::<u64, u64>("triple", &5).await?, 15);
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(both_ends_must_use_stable_sessions);
/// A stable client at a server without stable sessions gets a clear error.
fn both_ends_must_use_stable_sessions() {
    bounded(|| {
        zserver::block_on(async {
            let server = suite_server().bind("127.0.0.1:0").await?;
            let err = suite_client()
                .config(stable_config(Duration::from_secs(1)))
                .connect(server.local_addr())
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("does not use stable sessions"),
                "{err}"
            );
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(a_session_that_never_finishes_its_handshake_is_dropped);
/// A new session whose handshake never finishes is dropped with it, not kept for the
/// offline time-out: silent sockets cannot pile up sessions.
fn a_session_that_never_finishes_its_handshake_is_dropped() {
    if skip_over_ws("a_session_that_never_finishes_its_handshake_is_dropped") {
        return;
    }
    bounded(|| {
        zserver::block_on(async {
            let mut config = stable_config(Duration::from_secs(60));
            config.handshake_timeout = Duration::from_millis(300);
            let server = suite_server().config(config).bind("127.0.0.1:0").await?;
            let addr = server.local_addr();
            let raw = crate::common::on_thread(move || {
                let mut raw = TcpStream::connect(addr).unwrap();
                let mut challenge = [0u8; wire::CHALLENGE_LEN];
                raw.read_exact(&mut challenge).unwrap();
                raw.write_all(&Open::New.encode()).unwrap();
                let mut answer = [0u8; wire::ANSWER_LEN];
                raw.read_exact(&mut answer).unwrap();
                assert!(matches!(
                    Answer::decode(&answer).unwrap(),
                    Answer::Accepted { .. }
                ));
                raw // then says nothing
            })
            .await;
            until("the session is open", || server.stable_sessions() == 1).await;
            until("the server forgets the session", || {
                server.stable_sessions() == 0
            })
            .await;
            drop(raw);
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}
