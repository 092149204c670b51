//! A zserver peer for clients written in other languages (the TypeScript client's tests
//! and benchmark in `clients/ts/` run it), and the Rust side of their side-by-side bench.
//!
//! ```text
//! interop_peer serve [--rekey-records N]
//!     serves the commands below, encrypted and plain (trusted link), on 127.0.0.1 port 0,
//!     over TCP and (with the `ws` feature, on by default) WebSocket; prints one JSON line
//!     {"encrypted":ADDR,"plain":ADDR,"encrypted_ws":ADDR,"plain_ws":ADDR,"fingerprint":HEX},
//!     serves until its standard input closes
//! interop_peer bench ADDR FINGERPRINT [--secs S] [--bulk-mib M]
//!     the Rust client against ADDR (host:port, or ws://host:port/ over WebSocket): pipelined echo calls/s (64 in flight, 64-byte payloads)
//!     and one upload of M MiB to `bulk`; prints one JSON line
//! ```
//!
//! Commands: `echo` (stream: bytes back), `hello` (console), `add` (typed `(i64, i64)` ->
//! `i64`), `fail` (always an error), `sink` (one-way, counted) and `count` (typed -> u64),
//! `call-me-back` (console: calls the client's console command named by the text and
//! answers with the client's reply, or the error's text), `push-me` (console: sends the
//! text one-way to the client's `note`), `rekeys` (typed -> `(u64, u64)`: this
//! connection's keys replaced following the client, and its own), `bulk` (upload: drains,
//! answers the length as u64 LE), `store` (upload: answers the BLAKE3 hash and length of
//! what arrived, as 32 + 8 bytes), `blob` (download: the meta is a decimal length; sends
//! bytes `(i * 7 + i / 256) mod 256` for i from the offset).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use zserver::channels::{Channels, Namespace};
use zserver::Calls;
use zserver::{
    Client, ClientBuilder, Config, Encryption, Error, Incoming, Outgoing, RekeyPolicy, Router,
};

/// The channels each server offers.
fn channels() -> Channels {
    Channels::new()
        .namespace(
            Namespace::new("chat:")
                .history(5, None)
                .presence(true)
                .join_leave(true)
                .max_publication(1024),
        )
        .namespace(
            Namespace::new("news:")
                .history(5, None)
                .client_publish(false),
        )
        .namespace(Namespace::new("live:"))
}

/// Splits console text at its first space.
fn two(text: &str) -> (&str, &str) {
    text.split_once(' ').unwrap_or((text, ""))
}

fn router(channels: &Channels) -> Router {
    let sunk = Arc::new(AtomicU64::new(0));
    let counter = sunk.clone();
    let (identify, publish, kick, flood) = (
        channels.clone(),
        channels.clone(),
        channels.clone(),
        channels.clone(),
    );
    Router::new()
        .console("identify", move |ctx, text: String| {
            let (user, info) = two(&text);
            identify.identify(ctx.connection(), user, info.as_bytes().to_vec());
            async move { Ok(String::new()) }
        })
        .console("ch-publish", move |_ctx, text: String| {
            let (channel, data) = two(&text);
            let answer = publish
                .publish(channel, data)
                .map(|p| p.map_or_else(|| "none".to_owned(), |p| p.to_string()));
            async move { answer }
        })
        .console("ch-flood", move |_ctx, text: String| {
            let flood = flood.clone();
            async move {
                let (channel, n) = two(&text);
                let n: u32 = n
                    .parse()
                    .map_err(|e| Error::BadRequest(format!("ch-flood count: {e}")))?;
                let mut last = None;
                for i in 0..n.min(100_000) {
                    last = flood.publish(channel, i.to_string())?;
                    // Other tasks (subscribers' connections) run in between.
                    futures_lite::future::yield_now().await;
                }
                Ok(last.map_or_else(|| "none".to_owned(), |p| p.to_string()))
            }
        })
        .console("ch-kick", move |ctx, text: String| {
            let (channel, reason) = two(&text);
            let kicked = kick.unsubscribe(ctx.connection(), channel, reason);
            async move { Ok(kicked.to_string()) }
        })
        .bytes("echo", |_ctx, b| async move { Ok(b) })
        .console("hello", |_ctx, name: String| async move {
            Ok(format!("hello, {name}"))
        })
        .call("add", |_ctx, (a, b): (i64, i64)| async move {
            Ok::<_, Error>(a.wrapping_add(b))
        })
        .console("fail", |_ctx, _t: String| async move {
            Err::<String, _>(Error::msg("this command always fails"))
        })
        .delayed("sink", move |_ctx, _b, _r| {
            sunk.fetch_add(1, Ordering::Relaxed);
        })
        .call("count", move |_ctx, (): ()| {
            let n = counter.load(Ordering::Relaxed);
            async move { Ok::<_, Error>(n) }
        })
        .console("call-me-back", |ctx, command: String| async move {
            Ok(
                match ctx.connection().console(&command, "from the server").await {
                    Ok(answer) => format!("client answered: {answer}"),
                    Err(e) => format!("client failed: {e}"),
                },
            )
        })
        .console("push-me", |ctx, text: String| async move {
            ctx.connection().send_bytes("note", text.as_bytes()).await?;
            Ok(String::new())
        })
        .call("rekeys", |ctx, (): ()| {
            let s = ctx.connection().stats();
            async move { Ok::<_, Error>((s.rekeys_in, s.rekeys_out)) }
        })
        .upload("bulk", |_ctx, mut body: Incoming| async move {
            let mut n = 0u64;
            while let Some(chunk) = body.chunk().await? {
                n += chunk.len() as u64;
            }
            Ok(n.to_le_bytes().to_vec())
        })
        .upload("store", |_ctx, mut body: Incoming| async move {
            let mut hash = blake3::Hasher::new();
            let mut n = 0u64;
            while let Some(chunk) = body.chunk().await? {
                hash.update(&chunk);
                n += chunk.len() as u64;
            }
            let mut reply = hash.finalize().as_bytes().to_vec();
            reply.extend_from_slice(&n.to_le_bytes());
            Ok(reply)
        })
        .download("blob", |_ctx, req| async move {
            let len: u64 = req
                .meta_str()?
                .parse()
                .map_err(|e| Error::BadRequest(format!("blob length: {e}")))?;
            let len = len.min(1 << 30);
            let data: Vec<u8> = (req.offset.min(len)..len)
                .map(|i| (i.wrapping_mul(7) + i / 256) as u8)
                .collect();
            Ok(Outgoing::bytes(data))
        })
}

fn serve(args: &[String]) -> Result<(), Error> {
    let mut config = Config::default();
    if let Some(n) = flag(args, "--rekey-records") {
        config.encryption = Encryption::Noise {
            provider: Default::default(),
            rekey: RekeyPolicy {
                records: n.parse().expect("--rekey-records N"),
                ..RekeyPolicy::default()
            },
        };
    }
    let servers = zserver::block_on(async move {
        let (channels_encrypted, channels_plain) = (channels(), channels());
        let encrypted = zserver::server()
            .config(config)
            .router(router(&channels_encrypted))
            .channels(channels_encrypted)
            .bind("127.0.0.1:0")
            .await?;
        let plain = zserver::server()
            .config(Config::plain_trusted_link())
            .router(router(&channels_plain))
            .channels(channels_plain)
            .bind("127.0.0.1:0")
            .await?;
        #[cfg(feature = "ws")]
        let ws = format!(
            ",\"encrypted_ws\":\"{}\",\"plain_ws\":\"{}\"",
            encrypted
                .listen_ws("127.0.0.1:0", zserver::WsOptions::new())
                .await?,
            plain
                .listen_ws("127.0.0.1:0", zserver::WsOptions::new())
                .await?
        );
        #[cfg(not(feature = "ws"))]
        let ws = String::new();
        Ok::<_, Error>((encrypted, plain, ws))
    })?;
    println!(
        "{{\"encrypted\":\"{}\",\"plain\":\"{}\"{},\"fingerprint\":\"{}\"}}",
        servers.0.local_addr(),
        servers.1.local_addr(),
        servers.2,
        servers.0.fingerprint()
    );
    let _ = std::io::stdin().lines().count();
    Ok(())
}

fn bench(args: &[String]) -> Result<(), Error> {
    let (addr, pin) = match args {
        [addr, pin, ..] => (addr.clone(), pin.clone()),
        _ => {
            return Err(Error::msg(
                "bench ADDR FINGERPRINT [--secs S] [--bulk-mib M]",
            ))
        }
    };
    let secs: f64 = flag(args, "--secs").map_or(3.0, |s| s.parse().expect("--secs S"));
    let mib: u64 = flag(args, "--bulk-mib").map_or(256, |s| s.parse().expect("--bulk-mib M"));
    zserver::block_on(async move {
        let builder = zserver::client().pin_server_fingerprint(&pin)?;
        let client = if addr.starts_with("ws://") {
            connect_ws(builder, &addr).await?
        } else {
            builder.connect(addr.as_str()).await?
        };
        // Pipelined echo: 64 calls of 64 bytes in flight; a short warm-up, then `secs`.
        let payload = [0xA5u8; 64];
        let mut inflight: FuturesUnordered<_> = (0..64)
            .map(|_| client.call_bytes("echo", payload))
            .collect();
        let warm = Instant::now() + Duration::from_millis(300);
        let mut start = None;
        let mut calls = 0u64;
        while let Some(reply) = inflight.next().await {
            assert_eq!(reply?.len(), 64);
            let now = Instant::now();
            match start {
                None if now >= warm => start = Some(now),
                Some(t) if now.duration_since(t).as_secs_f64() >= secs => continue,
                Some(_) => calls += 1,
                None => {}
            }
            inflight.push(client.call_bytes("echo", payload));
        }
        let elapsed = start.map_or(1.0, |t| t.elapsed().as_secs_f64().min(secs));
        let calls_per_s = calls as f64 / elapsed;
        // Bulk: one upload of `mib` MiB, drained by the server.
        let bytes = mib << 20;
        let source = futures_lite::io::AsyncReadExt::take(futures_lite::io::repeat(0x5A), bytes);
        let t0 = Instant::now();
        let reply = client
            .upload("bulk", b"", Outgoing::reader(source, Some(bytes)))
            .await?;
        let bulk_secs = t0.elapsed().as_secs_f64();
        assert_eq!(reply[..], bytes.to_le_bytes());
        println!(
            "{{\"calls_per_s\":{calls_per_s:.0},\"bulk_mib_per_s\":{:.1}}}",
            mib as f64 / bulk_secs
        );
        Ok(())
    })
}

#[cfg(feature = "ws")]
async fn connect_ws(builder: ClientBuilder, url: &str) -> Result<Client, Error> {
    builder.connect_ws(url).await
}

#[cfg(not(feature = "ws"))]
async fn connect_ws(_: ClientBuilder, _: &str) -> Result<Client, Error> {
    Err(Error::msg(
        "interop_peer was built without the `ws` feature",
    ))
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => Err(Error::msg(
            "usage: interop_peer serve [--rekey-records N] | bench ADDR FINGERPRINT [--secs S] [--bulk-mib M]",
        )),
    }
}
