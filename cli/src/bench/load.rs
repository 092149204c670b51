//! The client side of the zserver rows, on any back end's runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use zserver::{Client, ClientBuilder, Config, Outgoing, Runtime, Transport};

use super::baseline::gib_per_s;
use super::{measure, run_on, BoxError, Sample, Tally, PAYLOAD, RAMP, STOP, WINDOW};
use zserver::Calls;

/// Source addresses the scale rows spread their connections over (127.0.0.2, 127.0.0.3, …):
/// each stays far below the server's default limit of 10,000 connections per address.
const SOURCES: usize = 16;

/// The local address connection `i` leaves from: one of [`SOURCES`] IPv4 loopback
/// addresses when the server is on IPv4 loopback, else any.
fn source(i: usize, server: SocketAddr) -> Option<SocketAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let ip = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
            Some(SocketAddr::new(ip.into(), 0))
        }
        _ => None,
    }
}

/// One back end's client side: its transport and a server to talk to.
pub(crate) struct Target {
    pub transport: Arc<dyn Transport>,
    pub runtime: Arc<dyn Runtime>,
    pub addr: SocketAddr,
    pub config: Config,
}

impl Target {
    pub(crate) fn new(backend: &str, addr: SocketAddr, encrypted: bool) -> Self {
        Self::over(backend, addr, encrypted, false)
    }

    /// Like [`new`](Self::new); over WebSocket (on the back end's TCP) if `ws`.
    pub(crate) fn over(backend: &str, addr: SocketAddr, encrypted: bool, ws: bool) -> Self {
        let mut transport = zserver::transport(backend).expect("built-in back end");
        if ws {
            transport = Arc::new(zserver::WsTransport::new(transport));
        }
        Self {
            runtime: transport.runtime(),
            transport,
            addr,
            config: if encrypted {
                Config::default()
            } else {
                Config::plain_trusted_link()
            },
        }
    }

    pub(crate) fn connect(&self) -> Client {
        let (t, c, addr) = (self.transport.clone(), self.config.clone(), self.addr);
        run_on(&self.runtime, async move {
            ClientBuilder::new(t).config(c).connect(addr).await
        })
        .unwrap_or_else(|e| panic!("cannot connect to the bench server at {addr}: {e}"))
    }
}

/// One call in flight: calls/s and round-trip percentiles.
pub(crate) fn pingpong(t: &Target, ramp: f64, secs: f64) -> Sample {
    let client = t.connect();
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    let p = phase.clone();
    let c = client.clone();
    t.runtime.spawn(Box::pin(async move {
        let payload = [0xA5u8; PAYLOAD];
        let mut tally = Tally::default();
        loop {
            let now = p.load(Ordering::Relaxed);
            if now == STOP {
                break;
            }
            let start = Instant::now();
            let reply = c.call_bytes("echo", &payload).await;
            assert_eq!(reply.expect("echo call").len(), PAYLOAD);
            tally.record(now, Some(start.elapsed()));
        }
        let _ = tx.send(tally);
    }));
    measure(&phase, rx, 1, ramp, secs)
}

/// `conns` connections, each with one task keeping 64 calls in flight: calls/s.
pub(crate) fn pipelined(t: &Target, conns: usize, ramp: f64, secs: f64) -> Sample {
    let clients: Vec<Client> = (0..conns).map(|_| t.connect()).collect();
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    for client in &clients {
        let (phase, client, tx) = (phase.clone(), client.clone(), tx.clone());
        t.runtime.spawn(Box::pin(async move {
            let payload = [0xA5u8; PAYLOAD];
            let mut inflight: FuturesUnordered<_> = (0..WINDOW)
                .map(|_| client.call_bytes("echo", &payload))
                .collect();
            let mut tally = Tally::default();
            while let Some(reply) = inflight.next().await {
                assert_eq!(reply.expect("echo call").len(), PAYLOAD);
                let now = phase.load(Ordering::Relaxed);
                if now != STOP {
                    tally.record(now, None);
                    inflight.push(client.call_bytes("echo", &payload));
                }
            }
            let _ = tx.send(tally);
        }));
    }
    measure(&phase, rx, conns, ramp, secs)
}

/// One-way sends for `secs`, then a call for the server's count: messages received per
/// second (the call is ordered after the sends, so it counts them all).
pub(crate) fn oneway(t: &Target, secs: f64) -> Sample {
    let client = t.connect();
    run_on(&t.runtime, async move {
        let payload = [0xA5u8; PAYLOAD];
        let before: u64 = client.call("count", &()).await?;
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        while Instant::now() < until {
            for _ in 0..256 {
                client.send_bytes("sink", payload).await?;
            }
        }
        let after: u64 = client.call("count", &()).await?;
        let rate = (after - before) as f64 / start.elapsed().as_secs_f64();
        Ok::<_, zserver::Error>(Sample::rate(rate))
    })
    .expect("one-way run")
}

/// One upload of `bytes` as a stream: GiB/s.
pub(crate) fn bulk(t: &Target, bytes: u64) -> Sample {
    let client = t.connect();
    run_on(&t.runtime, async move {
        let source = futures::io::AsyncReadExt::take(futures::io::repeat(0x5A), bytes);
        let start = Instant::now();
        let reply = client
            .upload("bulk", b"", Outgoing::reader(source, Some(bytes)))
            .await?;
        let elapsed = start.elapsed();
        assert_eq!(reply[..], bytes.to_le_bytes());
        Ok::<_, zserver::Error>(Sample::rate(gib_per_s(bytes, elapsed)))
    })
    .expect("bulk run")
}

/// Opens `n` connections, at most `at_once` handshakes at a time, spread over the source
/// addresses of [`source`]; returns them and the seconds it took, or which connection
/// failed and why.
pub(crate) fn open_many(
    t: &Target,
    n: usize,
    at_once: usize,
) -> Result<(Vec<Client>, f64), BoxError> {
    let (transport, config, addr) = (t.transport.clone(), t.config.clone(), t.addr);
    run_on(&t.runtime, async move {
        let start = Instant::now();
        let connect = |i| {
            let mut builder = ClientBuilder::new(transport.clone()).config(config.clone());
            if let Some(local) = source(i, addr) {
                builder = builder.bind(local);
            }
            async move { (i, builder.connect(addr).await) }
        };
        let results: Vec<(usize, Result<Client, zserver::Error>)> = futures::stream::iter(0..n)
            .map(connect)
            .buffer_unordered(at_once)
            .collect()
            .await;
        let mut clients = Vec::with_capacity(n);
        for (i, result) in results {
            let local = source(i, addr).map_or("any".into(), |a| a.ip().to_string());
            clients.push(result.map_err(|e| {
                format!(
                    "connection {} of {n} (from {local}) to {addr} failed: {e} \
                     (the server's connection limits, or the file-descriptor limit?)",
                    i + 1
                )
            })?);
        }
        Ok((clients, start.elapsed().as_secs_f64()))
    })
}
