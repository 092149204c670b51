//! A relay (ZServer4D's event bridge): a front server forwards calls to a back-end server
//! over one client connection and answers with its replies, without blocking anything
//! while it waits. Both servers run in this process on loopback; the program prints what
//! happens and exits.
//!
//! Also shown: hooks on the front server (a log line and a veto per command) and a
//! CPU-heavy command run on the blocking pool.
//!
//! Run it with `cargo run --example relay` (add `--no-default-features --features smol`
//! or `--features async-std` to switch back end).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::Calls;
use zserver::{Bytes, Error, Router};

fn main() -> Result<(), Error> {
    zserver::block_on(run())
}

async fn run() -> Result<(), Error> {
    // The back end: an echo, a slow lookup, a failing command and a CPU-heavy one.
    let backend = zserver::server()
        .router(
            Router::new()
                .bytes("echo", |_ctx, bytes: Bytes| async move { Ok(bytes) })
                .console("lookup", |_ctx, key: String| async move {
                    zserver::sleep(Duration::from_millis(300)).await;
                    Ok(format!("value of {key}"))
                })
                .console("fail", |_ctx, _: String| async move {
                    Err::<String, _>(Error::msg("the back end refuses"))
                })
                .blocking_bytes("crunch", |_ctx, bytes| {
                    // Stands for real CPU work; it runs on the blocking pool, not the runtime.
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(fnv1a(&bytes).to_le_bytes().to_vec())
                }),
        )
        .bind("127.0.0.1:0")
        .await?;
    let to_backend = zserver::client().connect(backend.local_addr()).await?;

    // The front: `relay` takes (command, payload) and answers with the back end's reply
    // or error. Hooks log every command and refuse `relay` of `admin.*` commands.
    let relayed = Arc::new(AtomicU64::new(0));
    let count = relayed.clone();
    let front_router = Router::new()
        .call(
            "relay",
            move |_ctx, (command, payload): (String, Vec<u8>)| {
                let backend = to_backend.clone();
                async move {
                    if command.starts_with("admin.") {
                        return Err(Error::Denied(format!("`{command}` is not relayed")));
                    }
                    Ok(backend.call_bytes(&command, payload).await?.to_vec())
                }
            },
        )
        .on_execute(|info| {
            println!(
                "  [front] connection {} from {}: {:?} `{}` ({} bytes)",
                info.connection_id(),
                info.peer_addr(),
                info.kind(),
                info.command(),
                info.payload_len()
            );
            Ok(())
        })
        .on_complete(move |_info, outcome, elapsed| {
            count.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = outcome {
                println!("  [front] failed after {elapsed:?}: {e}");
            }
        });
    let front = zserver::server()
        .router(front_router)
        .bind("127.0.0.1:0")
        .await?;
    let client = zserver::client().connect(front.local_addr()).await?;
    let relay = |command: &'static str, payload: &'static [u8]| {
        let client = client.clone();
        async move {
            client
                .call::<_, Vec<u8>>("relay", &(command, payload))
                .await
        }
    };

    println!("echo through the relay:");
    let reply = relay("echo", b"hello via the front").await?;
    println!("  {}", String::from_utf8_lossy(&reply));

    println!("a slow back-end call does not hold up others:");
    let started = Instant::now();
    let slow = async {
        let reply = relay("lookup", b"answer").await;
        println!("  slow lookup answered after {:?}", started.elapsed());
        reply
    };
    let quick = async {
        for i in 0..5 {
            relay("echo", b"ping").await?;
            println!("  quick echo {i} answered after {:?}", started.elapsed());
        }
        Ok::<_, Error>(())
    };
    let (slow, quick) = futures_lite::future::zip(slow, quick).await;
    quick?;
    println!("  lookup: {}", String::from_utf8_lossy(&slow?));

    println!("errors come back with their kind:");
    println!("  fail    -> {:?}", relay("fail", b"").await);
    println!("  missing -> {:?}", relay("missing", b"").await);
    println!("  admin.x -> {:?}", relay("admin.x", b"").await);

    println!("CPU-heavy work on the blocking pool, relayed:");
    let digest = relay("crunch", b"some data").await?;
    println!("  crunch -> {digest:02x?}");

    println!(
        "front handled {} relays; back end saw {} calls",
        relayed.load(Ordering::Relaxed),
        backend.stats().totals.calls_in
    );
    front.shutdown().await;
    backend.shutdown().await;
    Ok(())
}

/// FNV-1a: a stand-in for real CPU work.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
