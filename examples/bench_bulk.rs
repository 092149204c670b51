//! Bulk throughput, plain against encrypted, beside its two ceilings, all in one run:
//!
//! - `loopback copy`: raw tokio TCP on 127.0.0.1, 1 MiB writes, no framing (the network's ceiling);
//! - `AES-256-GCM seal`: one core sealing 64 KiB records with the default provider (the
//!   cipher's ceiling);
//! - `zserver plain` / `zserver encrypted`: one client sends 1 MiB one-way messages to a server
//!   that counts the bytes; a final call waits until all have arrived.
//!
//! Rows run round-robin, `--runs` times each (default 5, `--quick` 3), and the median is
//! reported with ratios. Run with `cargo run --release --example bench_bulk [-- --quick]`;
//! `-- --only-encrypted` runs just the encrypted transfer (for a profiler).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zserver::secure::cipher::CipherState;
use zserver::secure::record::{RekeyPolicy, Sealer};
use zserver::{Config, Error, Provider, Router};

const CHUNK: usize = 1 << 20;

fn gib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / (1u64 << 30) as f64
}

/// Raw loopback: a writer task pushes `total` bytes, a reader task drains them.
async fn loopback_copy(total: u64) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "loopback closed early");
            got += n as u64;
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let buf = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&buf).await.unwrap();
        sent += CHUNK as u64;
    }
    reader.await.unwrap();
    gib_per_s(total, start.elapsed())
}

/// One core sealing 64 KiB records for about `secs`.
fn seal_rate(secs: f64) -> f64 {
    let mut sealer = Sealer::new(
        CipherState::new(Provider::default(), [1; 32]),
        RekeyPolicy::default(),
        Instant::now(),
    );
    let plain = vec![3u8; CHUNK];
    let mut out = BytesMut::with_capacity(CHUNK + 1024);
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        out.clear();
        sealer.seal(&plain, &mut out, Instant::now());
        bytes += CHUNK as u64;
    }
    gib_per_s(bytes, start.elapsed())
}

/// zserver bulk: `total` bytes in 1 MiB one-way sends, then a call that returns once the
/// server has counted them all.
async fn zserver_bulk(config: Config, total: u64) -> Result<f64, Error> {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let router = Router::new().stream("chunk", move |_ctx, b| {
        counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        async { Ok(Vec::new()) }
    });
    let server = zserver::server()
        .router(router)
        .config(config.clone())
        .bind("127.0.0.1:0")
        .await?;
    let client = zserver::client()
        .config(config)
        .connect(server.local_addr())
        .await?;
    let chunk = vec![9u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        client.send_bytes("chunk", &chunk).await?;
        sent += CHUNK as u64;
    }
    client.ping().await?; // the server has read everything sent before the ping
    let elapsed = start.elapsed();
    assert_eq!(received.load(Ordering::Relaxed), total);
    server.shutdown().await;
    Ok(gib_per_s(total, elapsed))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only-encrypted`: just the encrypted row, for profiling.
    if args.iter().any(|a| a == "--only-encrypted") {
        let gib = zserver::block_on(zserver_bulk(Config::default(), 4 << 30))?;
        println!("zserver encrypted {gib:.2} GiB/s");
        return Ok(());
    }
    let runs = if quick { 3 } else { 5 };
    let total: u64 = if quick { 1 << 30 } else { 4 << 30 };
    let (mut copy, mut seal, mut plain, mut enc) = (vec![], vec![], vec![], vec![]);
    zserver::block_on(async {
        // Warm-up, then round-robin so that machine noise hits every row alike.
        zserver_bulk(Config::plain_trusted_link(), 256 << 20).await?;
        for _ in 0..runs {
            copy.push(loopback_copy(total).await);
            seal.push(seal_rate(0.5));
            plain.push(zserver_bulk(Config::plain_trusted_link(), total).await?);
            enc.push(zserver_bulk(Config::default(), total).await?);
        }
        Ok::<_, Error>(())
    })?;
    let (copy, seal, plain, enc) = (median(copy), median(seal), median(plain), median(enc));
    let ceiling = copy.min(seal);
    println!(
        "bulk, {} GiB per run, median of {runs} runs (GiB/s), provider {}",
        total >> 30,
        Provider::default().name()
    );
    println!("  loopback copy (raw tokio)   {copy:6.2}");
    println!("  AES-256-GCM seal, one core  {seal:6.2}");
    println!(
        "  zserver plain               {plain:6.2}   {:.2}x loopback",
        plain / copy
    );
    println!(
        "  zserver encrypted           {enc:6.2}   {:.2}x plain, {:.2}x min(loopback, AES)",
        enc / plain,
        enc / ceiling
    );
    Ok(())
}
