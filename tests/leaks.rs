//! Nothing leaks across many short connections: after 10,000 connect / handshake / call /
//! disconnect cycles, the process's open file descriptors and resident memory are back
//! within a small margin of where they were. Runs on every back end.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use zserver::Calls;
use zserver::{Error, Router};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

async fn cycles(addr: std::net::SocketAddr, n: usize) -> Result<(), Error> {
    let results: Vec<Result<(), Error>> = stream::iter(0..n)
        .map(|i| async move {
            let client = zserver::client().connect(addr).await?;
            let reply = client.call_bytes("echo", (i as u64).to_le_bytes()).await?;
            assert_eq!(&reply[..], (i as u64).to_le_bytes());
            client.connection().close().await;
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

#[test]
fn ten_thousand_short_connections_leak_nothing() {
    zserver::block_on(async {
        let router = Router::new().bytes("echo", |_ctx, b| async move { Ok(b) });
        let server = zserver::server().router(router).bind("127.0.0.1:0").await?;
        let addr = server.local_addr();
        // Warm up: runtime threads, allocator arenas and caches reach their working size.
        cycles(addr, 1000).await?;
        wait_closed(&server).await;
        let (fds, rss) = (open_fds(), rss_kib());
        cycles(addr, 10_000).await?;
        wait_closed(&server).await;
        let (fds_after, rss_after) = (open_fds(), rss_kib());
        assert!(
            fds_after <= fds + 4,
            "open descriptors {fds} -> {fds_after} after 10,000 connections"
        );
        assert!(
            rss_after <= rss + 16 * 1024,
            "resident memory {rss} KiB -> {rss_after} KiB after 10,000 connections"
        );
        assert_eq!(server.stats().connections_accepted, 11_000);
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// Waits until the server holds no connection.
async fn wait_closed(server: &zserver::Server) {
    let start = Instant::now();
    while server.connection_count() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "connections did not close"
        );
        zserver::sleep(Duration::from_millis(10)).await;
    }
}
