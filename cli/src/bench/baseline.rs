//! The baselines: a hand-written raw tokio length-prefixed echo (the practical ceiling for
//! small calls), a raw tokio sink (for one-way messages), tarpc doing the same echo (the
//! peer a Rust user would pick instead), and the two ceilings of bulk transfer: one core's
//! AES-256-GCM rate and a raw loopback copy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::future;
use futures::stream::{FuturesUnordered, StreamExt};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{measure, Sample, Tally, PAYLOAD, RAMP, STOP, WINDOW};

const IO_BUF: usize = 64 * 1024;

/// The tokio runtime the baselines run on: 2 workers, like zserver's tokio back end.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The same echo as zserver's, as a tarpc service.
#[tarpc::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(payload: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, payload: Vec<u8>) -> Vec<u8> {
        payload
    }
}

/// Starts the three baseline servers; returns raw echo, raw sink and tarpc addresses.
pub(crate) async fn serve() -> std::io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let addrs = (echo.local_addr()?, sink.local_addr()?);
    tokio::spawn(accept(echo, raw_echo));
    tokio::spawn(accept(sink, raw_sink));
    let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default).await?;
    listener.config_mut().max_frame_length(16 << 20);
    let tarpc_addr = listener.local_addr();
    tokio::spawn(
        listener
            .filter_map(|r| future::ready(r.ok()))
            .map(BaseChannel::with_defaults)
            .map(|channel| {
                channel
                    .execute(EchoServer.serve())
                    .for_each(|response| async {
                        tokio::spawn(response);
                    })
            })
            .buffer_unordered(100_000)
            .for_each(|_| async {}),
    );
    Ok((addrs.0, addrs.1, tarpc_addr))
}

async fn accept<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let conn = serve(stream);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Echoes `u32-LE length + payload` frames through buffered halves, flushing whenever
/// nothing more is buffered to answer.
async fn raw_echo(stream: TcpStream) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let mut w = BufWriter::with_capacity(IO_BUF, w);
    let mut body = vec![0u8; 1024];
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).await.is_err() {
            break;
        }
        let n = u32::from_le_bytes(len) as usize;
        if body.len() < n {
            body.resize(n, 0);
        }
        r.read_exact(&mut body[..n]).await?;
        w.write_all(&len).await?;
        w.write_all(&body[..n]).await?;
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
    w.flush().await
}

/// Counts `u32-LE length + payload` frames; an empty frame is answered with the count
/// (u64 little-endian).
async fn raw_sink(stream: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let mut body = vec![0u8; 1024];
    let mut count = 0u64;
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let n = u32::from_le_bytes(len) as usize;
        if n == 0 {
            w.write_all(&count.to_le_bytes()).await?;
            continue;
        }
        if body.len() < n {
            body.resize(n, 0);
        }
        r.read_exact(&mut body[..n]).await?;
        count += 1;
    }
}

fn frame() -> [u8; 4 + PAYLOAD] {
    let mut f = [0xA5u8; 4 + PAYLOAD];
    f[..4].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
    f
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the baseline");
    stream.set_nodelay(true).unwrap();
    stream
}

/// One call in flight: calls/s and round-trip percentiles.
pub(crate) fn raw_pingpong(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    ramp: f64,
    secs: f64,
) -> Sample {
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    let p = phase.clone();
    rt.spawn(async move {
        let mut s = connect(addr).await;
        let (f, mut buf) = (frame(), [0u8; 4 + PAYLOAD]);
        let mut tally = Tally::default();
        loop {
            let now = p.load(Ordering::Relaxed);
            if now == STOP {
                break;
            }
            let t = Instant::now();
            s.write_all(&f).await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            tally.record(now, Some(t.elapsed()));
        }
        let _ = tx.send(tally);
    });
    measure(&phase, rx, 1, ramp, secs)
}

/// `conns` connections, each with 64 calls kept in flight: calls/s.
pub(crate) fn raw_pipelined(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    conns: usize,
    ramp: f64,
    secs: f64,
) -> Sample {
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    for _ in 0..conns {
        let (phase, tx) = (phase.clone(), tx.clone());
        rt.spawn(async move {
            let (r, w) = connect(addr).await.into_split();
            let window = Arc::new(Semaphore::new(WINDOW));
            let (p, win) = (phase.clone(), window.clone());
            tokio::spawn(async move {
                let mut w = BufWriter::with_capacity(IO_BUF, w);
                let f = frame();
                while p.load(Ordering::Relaxed) != STOP {
                    match win.try_acquire() {
                        Ok(permit) => permit.forget(),
                        Err(_) => {
                            w.flush().await.unwrap();
                            win.acquire().await.unwrap().forget();
                        }
                    }
                    w.write_all(&f).await.unwrap();
                }
                w.flush().await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut r = BufReader::with_capacity(IO_BUF, r);
            let mut buf = [0u8; 4 + PAYLOAD];
            let mut tally = Tally::default();
            while r.read_exact(&mut buf).await.is_ok() {
                tally.record(phase.load(Ordering::Relaxed), None);
                window.add_permits(1);
            }
            let _ = tx.send(tally);
        });
    }
    measure(&phase, rx, conns, ramp, secs)
}

/// One-way frames for `secs` through a buffered writer, then the sink's count: messages
/// received per second.
pub(crate) fn raw_oneway(rt: &tokio::runtime::Handle, addr: SocketAddr, secs: f64) -> Sample {
    rt.block_on(async move {
        let (mut r, w) = connect(addr).await.into_split();
        let mut w = BufWriter::with_capacity(IO_BUF, w);
        let f = frame();
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        while Instant::now() < until {
            for _ in 0..256 {
                w.write_all(&f).await.unwrap();
            }
        }
        w.write_all(&0u32.to_le_bytes()).await.unwrap();
        w.flush().await.unwrap();
        let mut count = [0u8; 8];
        r.read_exact(&mut count).await.unwrap();
        Sample::rate(u64::from_le_bytes(count) as f64 / start.elapsed().as_secs_f64())
    })
}

async fn tarpc_client(addr: SocketAddr) -> EchoClient {
    let mut connect = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
    connect.config_mut().max_frame_length(16 << 20);
    let transport = connect.await.expect("connect to tarpc");
    EchoClient::new(tarpc::client::Config::default(), transport).spawn()
}

/// tarpc, one call in flight.
pub(crate) fn tarpc_pingpong(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    ramp: f64,
    secs: f64,
) -> Sample {
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    let p = phase.clone();
    rt.spawn(async move {
        let client = tarpc_client(addr).await;
        let mut tally = Tally::default();
        loop {
            let now = p.load(Ordering::Relaxed);
            if now == STOP {
                break;
            }
            let t = Instant::now();
            let reply = client
                .echo(tarpc::context::current(), vec![0xA5; PAYLOAD])
                .await;
            assert_eq!(reply.expect("tarpc echo").len(), PAYLOAD);
            tally.record(now, Some(t.elapsed()));
        }
        let _ = tx.send(tally);
    });
    measure(&phase, rx, 1, ramp, secs)
}

/// tarpc, `conns` connections with 64 calls in flight on each.
pub(crate) fn tarpc_pipelined(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    conns: usize,
    ramp: f64,
    secs: f64,
) -> Sample {
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    for _ in 0..conns {
        let (phase, tx) = (phase.clone(), tx.clone());
        rt.spawn(async move {
            let client = tarpc_client(addr).await;
            let call = || client.echo(tarpc::context::current(), vec![0xA5; PAYLOAD]);
            let mut inflight: FuturesUnordered<_> = (0..WINDOW).map(|_| call()).collect();
            let mut tally = Tally::default();
            while let Some(reply) = inflight.next().await {
                assert_eq!(reply.expect("tarpc echo").len(), PAYLOAD);
                let now = phase.load(Ordering::Relaxed);
                if now != STOP {
                    tally.record(now, None);
                    inflight.push(call());
                }
            }
            let _ = tx.send(tally);
        });
    }
    measure(&phase, rx, conns, ramp, secs)
}

/// One core sealing 64 KiB records with ring's AES-256-GCM for about `secs`: GiB/s.
pub(crate) fn aes_rate(secs: f64) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
    let mut record = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut sealed = 0u64;
    let mut counter = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        let nonce = Nonce::assume_unique_for_key(nonce);
        let tag = key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut record);
        let _ = std::hint::black_box(tag.unwrap());
        sealed += record.len() as u64;
    }
    gib_per_s(sealed, start.elapsed())
}

/// Raw tokio TCP on 127.0.0.1, 1 MiB writes, no framing: GiB/s.
pub(crate) fn loopback_rate(rt: &tokio::runtime::Handle, total: u64) -> f64 {
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while got < total {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "loopback closed early");
                got += n as u64;
            }
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let buf = vec![7u8; 1 << 20];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            s.write_all(&buf).await.unwrap();
            sent += buf.len() as u64;
        }
        reader.await.unwrap();
        gib_per_s(total, start.elapsed())
    })
}

pub(crate) fn gib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / (1u64 << 30) as f64
}
