//! Scenario 3: a bad network. The [`netem`](crate::netem) link delays every packet by
//! 25 ms each way (a 50 ms round trip) and loses 5 % of them each way, from before the
//! client connects (so the TCP and Noise handshakes cross it too). On every back end:
//!
//! - 200 calls, 8 in flight at a time, all answered right, each handler run once;
//! - a 3 MiB upload, whose blake3 hash the server computes and the client checks;
//! - channel deliveries: a subscriber gets every publication of another client (100, ten
//!   in flight at a time) and of the server (200), each once, in the channel's order.
//!
//! Each prints its figures (calls per second, p50 and p99 call latency, upload
//! throughput, deliveries per second, and the loss the link actually applied), so that
//! `cargo test --test faults lossy:: -- --nocapture` gives a record. TCP recovers losses
//! with retransmissions (200 ms at the least, more when a retransmission is lost too), so
//! the tail of the latency and the upload's throughput are what this network costs; the
//! time limits (the suite's 30 s per case) are generous for them but finite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::generated::Probe;
use crate::common::{join_all, shutdown, suite_client, suite_server, within, WAIT};
use crate::netem::{self, Link, Netem};
use zserver::channels::{ChannelCalls, Channels, Event, Namespace, Subscription};
use zserver::{Calls, Client, Error, Outgoing, Router, Server};

/// One-way delay.
const DELAY: Duration = Duration::from_millis(25);
/// Loss probability, each way.
const LOSS: f64 = 0.05;

const MIB: u64 = 1024 * 1024;

/// A link with the bad network's delay and loss, for `test`; `None` where namespaces are
/// not available.
fn bad_network(test: &str) -> Option<Netem> {
    let net = netem::setup(test)?;
    net.link().set_delay(DELAY);
    net.link().set_loss(LOSS);
    Some(net)
}

/// Connects a client to `server` across the bad network (default configuration).
async fn connect(server: &Server) -> Client {
    within(
        WAIT,
        "connect across the bad network",
        suite_client().connect(server.local_addr()),
    )
    .await
    .expect("connect")
}

/// The loss the link applied so far, as text.
fn applied(link: &Link) -> String {
    let (sent, lost) = (link.forwarded(), link.dropped());
    let total = (sent + lost).max(1);
    format!(
        "{lost} of {total} packets lost ({:.1} %)",
        lost as f64 * 100.0 / total as f64
    )
}

/// The `q` quantile (0 to 1) of sorted `values`, by nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

every_backend!(calls_over_a_bad_network);
/// 200 calls, 8 at a time: every one answered with its own result, every handler run
/// exactly once. Prints calls per second and the p50 and p99 latency.
fn calls_over_a_bad_network() {
    const CALLS: u64 = 200;
    const IN_FLIGHT: u64 = 8;
    let Some(net) = bad_network("calls_over_a_bad_network") else {
        return;
    };
    zserver::block_on(async {
        let runs = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
        let router = {
            let runs = runs.clone();
            Router::new().call("triple", move |_ctx, id: u64| {
                *runs.lock().unwrap().entry(id).or_default() += 1;
                async move { Ok::<_, Error>(id * 3) }
            })
        };
        let server = net
            .bind_server(suite_server().router(router))
            .expect("bind");
        let connecting = Instant::now();
        let client = connect(&server).await;
        let connected_in = connecting.elapsed();

        let start = Instant::now();
        let lanes = (0..IN_FLIGHT).map(|lane| {
            let client = &client;
            async move {
                let mut latencies = Vec::new();
                for id in (lane..CALLS).step_by(IN_FLIGHT as usize) {
                    let sent = Instant::now();
                    let answer: Result<u64, Error> = client.call("triple", &id).await;
                    assert_eq!(answer, Ok(id * 3), "call {id}");
                    latencies.push(sent.elapsed());
                }
                latencies
            }
        });
        let lanes = within(Duration::from_secs(25), "200 calls", join_all(lanes)).await;
        let elapsed = start.elapsed();

        let mut latencies: Vec<Duration> = lanes.into_iter().flatten().collect();
        assert_eq!(latencies.len(), CALLS as usize);
        let runs = std::mem::take(&mut *runs.lock().unwrap());
        assert_eq!(runs.len(), CALLS as usize, "every call reached its handler");
        assert!(runs.values().all(|&n| n == 1), "a handler ran twice");
        latencies.sort();
        let (p50, p99) = (quantile(&latencies, 0.50), quantile(&latencies, 0.99));
        assert!(p50 >= DELAY * 2, "p50 {p50:?} is under the round trip");
        eprintln!(
            "{}: bad network (25 ms each way, 5 % loss): {CALLS} calls, {IN_FLIGHT} in flight: \
             {:.0} calls/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; connect {:.0} ms; {}",
            zserver::default_backend(),
            CALLS as f64 / elapsed.as_secs_f64(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3,
            connected_in.as_secs_f64() * 1e3,
            applied(net.link()),
        );
        drop(client);
        shutdown(&server).await;
    });
}

every_backend!(an_upload_over_a_bad_network);
/// A 3 MiB upload arrives whole: the server's hash of what it read is the one of what the
/// client sent. Prints the throughput.
fn an_upload_over_a_bad_network() {
    const LEN: u64 = 3 * MIB;
    let Some(net) = bad_network("an_upload_over_a_bad_network") else {
        return;
    };
    zserver::block_on(async {
        let router = Router::new().upload("sink", |_ctx, mut body| async move {
            let mut hasher = blake3::Hasher::new();
            let mut len = 0u64;
            while let Some(chunk) = body.chunk().await? {
                len += chunk.len() as u64;
                hasher.update(&chunk);
            }
            let mut reply = hasher.finalize().as_bytes().to_vec();
            reply.extend_from_slice(&len.to_le_bytes());
            Ok(reply)
        });
        let server = net
            .bind_server(suite_server().router(router))
            .expect("bind");
        let client = connect(&server).await;
        let probe = Probe::default();
        let body = Outgoing::reader(probe.reader(LEN, 11), Some(LEN));
        let start = Instant::now();
        let reply = within(
            Duration::from_secs(25),
            "the upload",
            client.upload("sink", b"", body),
        )
        .await
        .expect("the upload");
        let elapsed = start.elapsed();
        assert_eq!(reply.len(), 40, "a hash and a length");
        assert_eq!(&reply[32..], &LEN.to_le_bytes(), "bytes the server read");
        assert_eq!(&reply[..32], &probe.hash()[..], "hash of what arrived");
        eprintln!(
            "{}: bad network (25 ms each way, 5 % loss): 3 MiB upload in {:.2} s: {:.2} MB/s; {}",
            zserver::default_backend(),
            elapsed.as_secs_f64(),
            LEN as f64 / 1e6 / elapsed.as_secs_f64(),
            applied(net.link()),
        );
        drop(client);
        shutdown(&server).await;
    });
}

/// A server with channels under `room:` (history of 1000, so publications have offsets)
/// and a `login` command that names the connection's user.
fn channel_server(net: &Netem) -> Server {
    let channels = Channels::new().namespace(Namespace::new("room:").history(1000, None));
    let ids = channels.clone();
    let router = Router::new().console("login", move |ctx, user: String| {
        ids.identify(ctx.connection(), user.clone(), Vec::new());
        async move { Ok(user) }
    });
    net.bind_server(suite_server().router(router).channels(channels))
        .expect("bind")
}

/// The next publication of `sub`: (offset, author, text).
async fn next_pub(sub: &mut Subscription) -> (u64, String, String) {
    let event = within(WAIT, "a publication", sub.recv())
        .await
        .expect("the subscription ended");
    match event {
        Event::Publication(p) => (p.offset, p.from, String::from_utf8(p.data).unwrap()),
        other => panic!("expected a publication, got {other:?}"),
    }
}

every_backend!(channels_over_a_bad_network);
/// A subscriber gets every publication once, in the channel's order: 100 from another
/// client across the same bad network (published ten at a time; the offsets the publisher
/// was given are the ones the subscriber sees) and 200 from the server.
fn channels_over_a_bad_network() {
    const FROM_CLIENT: u64 = 100;
    const FROM_SERVER: u64 = 200;
    let Some(net) = bad_network("channels_over_a_bad_network") else {
        return;
    };
    zserver::block_on(async {
        let server = channel_server(&net);
        let (sue, pat) = (connect(&server).await, connect(&server).await);
        assert_eq!(sue.console("login", "sue").await.as_deref(), Ok("sue"));
        assert_eq!(pat.console("login", "pat").await.as_deref(), Ok("pat"));
        let mut from_clients = sue.subscribe("room:clients").await.expect("subscribe");
        let mut from_server = sue.subscribe("room:server").await.expect("subscribe");

        let start = Instant::now();
        let published = async {
            let mut offsets = HashMap::new();
            for batch in 0..FROM_CLIENT / 10 {
                let round = (batch * 10..(batch + 1) * 10).map(|n| {
                    let pat = &pat;
                    async move { (n, pat.publish("room:clients", format!("c{n}")).await) }
                });
                for (n, position) in join_all(round).await {
                    let position = position.expect("publish").expect("a position");
                    offsets.insert(format!("c{n}"), position.offset);
                }
            }
            offsets
        };
        let received = async {
            let mut seen = Vec::new();
            for offset in 1..=FROM_CLIENT {
                let (got, from, text) = next_pub(&mut from_clients).await;
                assert_eq!(got, offset, "publications in the channel's order");
                assert_eq!(from, "pat");
                seen.push((text, got));
            }
            seen
        };
        let (offsets, seen) = within(
            Duration::from_secs(20),
            "the client's publications",
            futures_lite::future::zip(published, received),
        )
        .await;
        assert_eq!(
            offsets.len(),
            FROM_CLIENT as usize,
            "every publication distinct"
        );
        for (text, offset) in &seen {
            assert_eq!(
                offsets.get(text),
                Some(offset),
                "{text} arrived once, where published"
            );
        }
        let clients_took = start.elapsed();

        let start = Instant::now();
        for n in 0..FROM_SERVER {
            let position = server
                .channels()
                .publish("room:server", format!("s{n}"))
                .expect("publish")
                .expect("a position");
            assert_eq!(position.offset, n + 1);
        }
        within(
            Duration::from_secs(20),
            "the server's publications",
            async {
                for n in 0..FROM_SERVER {
                    let got = next_pub(&mut from_server).await;
                    assert_eq!(got, (n + 1, String::new(), format!("s{n}")));
                }
            },
        )
        .await;
        let server_took = start.elapsed();
        eprintln!(
            "{}: bad network (25 ms each way, 5 % loss): channels: {FROM_CLIENT} client \
             publications in {:.2} s ({:.0}/s, 10 in flight), {FROM_SERVER} server \
             publications delivered in {:.2} s ({:.0}/s), all once and in order; {}",
            zserver::default_backend(),
            clients_took.as_secs_f64(),
            FROM_CLIENT as f64 / clients_took.as_secs_f64(),
            server_took.as_secs_f64(),
            FROM_SERVER as f64 / server_took.as_secs_f64(),
            applied(net.link()),
        );
        drop((from_clients, from_server, sue, pat));
        shutdown(&server).await;
    });
}
