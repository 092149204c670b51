//! Payload compression negotiated in the handshake (`zserver::compression`), through the facade
//! only, so that the same file runs on every back end:
//!
//! ```text
//! cargo test --test suite compression::                                          # every back end
//! cargo test --test suite -- compression:: --skip ::tokio:: --skip ::async_std::  # smol only
//! ```
//!
//! Every case runs over IPv4 and IPv6 loopback and fails within 30 s if anything hangs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};

use zserver::compression::{CompressionCodec, Lz4};
use zserver::{Bytes, Client, Compression, Config, Error, Outgoing, Router, Server, StableSession};

use crate::common::*;
use zserver::Calls;

/// Repetitive text: LZ4 shrinks it many times over.
fn compressible(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .cycle()
        .take(len)
        .copied()
        .collect()
}

fn router() -> Router {
    Router::new()
        .bytes("echo", |_ctx, bytes: Bytes| async move { Ok(bytes) })
        .bytes("len", |_ctx, bytes: Bytes| async move {
            Ok(Bytes::from((bytes.len() as u64).to_le_bytes().to_vec()))
        })
        .call("codec", |ctx, (): ()| async move {
            Ok::<_, Error>(ctx.connection().compression().map(str::to_owned))
        })
        .download("big", |_ctx, req| async move {
            Ok(Outgoing::bytes(compressible(req.offset as usize)))
        })
        .upload("check", |_ctx, body| async move {
            let got = body.read_all(8 << 20).await?;
            Ok(vec![u8::from(
                got == compressible(got.len()) && !got.is_empty(),
            )])
        })
}

fn with(config: Config, compression: Compression) -> Config {
    let mut config = config;
    config.compression = compression;
    config
}

async fn start(addr: &str, config: Config) -> Server {
    start_server(addr, router(), config).await
}

async fn connect(server: &Server, config: Config) -> Client {
    connect_client(server, Router::new(), config).await
}

async fn shutdown(server: &Server) {
    within(WAIT, "server shutdown", server.shutdown()).await;
}

/// Bytes on the wire for one echo of `payload`: call (as the server received it) and reply
/// (as the client received it). Receive counters are bumped before the frame is acted on,
/// so both are complete once the reply is in; send counters may still lag the write.
async fn echo_costs(server: &Server, client: &Client, payload: &[u8]) -> (u64, u64) {
    let (server_before, before) = (server.stats().totals, client.connection().stats());
    let reply = client.call_bytes("echo", payload).await.expect("echo");
    assert_eq!(&reply[..], payload, "echo round trip");
    (
        server.stats().totals.bytes_in - server_before.bytes_in,
        client.connection().stats().bytes_in - before.bytes_in,
    )
}

// ----- 1. both sides LZ4 ----------------------------------------------------------------------

both!(lz4_shrinks_large_payloads_on_the_wire);
async fn lz4_shrinks_large_payloads_on_the_wire(addr: &str) {
    let payload = compressible(256 * 1024);
    // Encrypted (the default) and plain: compression comes before encryption, so both shrink.
    for base in [Config::default(), Config::plain_trusted_link()] {
        let server = start(addr, with(base.clone(), Compression::lz4())).await;
        let client = connect(&server, with(base.clone(), Compression::lz4())).await;
        assert_eq!(client.connection().compression(), Some("lz4"));
        let server_side: Option<String> = client.call("codec", &()).await.unwrap();
        assert_eq!(server_side.as_deref(), Some("lz4"));
        let before = client.connection().stats();
        let (out, back) = echo_costs(&server, &client, &payload).await;
        assert!(out < payload.len() as u64 / 4, "sent {out} bytes");
        assert!(back < payload.len() as u64 / 4, "received {back} bytes");
        // The counters of bytes before and after compression, both ways.
        let after = client.connection().stats();
        let n = payload.len() as u64;
        assert_eq!(after.uncompressed_out - before.uncompressed_out, n);
        assert_eq!(after.uncompressed_in - before.uncompressed_in, n);
        let packed_out = after.compressed_out - before.compressed_out;
        let packed_in = after.compressed_in - before.compressed_in;
        assert!(packed_out > 0 && packed_out < n / 4, "{packed_out}");
        assert!(packed_in > 0 && packed_in < n / 4, "{packed_in}");

        let plain_server = start(addr, base.clone()).await;
        let plain_client = connect(&plain_server, base.clone()).await;
        assert_eq!(plain_client.connection().compression(), None);
        let (raw_out, raw_back) = echo_costs(&plain_server, &plain_client, &payload).await;
        assert!(raw_out >= payload.len() as u64, "sent {raw_out} bytes");
        assert!(raw_back >= payload.len() as u64);
        assert!(out * 4 < raw_out, "lz4 {out} vs uncompressed {raw_out}");
        shutdown(&server).await;
        shutdown(&plain_server).await;
    }
}

both!(lz4_compresses_stream_data);
async fn lz4_compresses_stream_data(addr: &str) {
    let config = with(Config::default(), Compression::lz4());
    let server = start(addr, config.clone()).await;
    let client = connect(&server, config).await;
    let len = 3 * 1024 * 1024;
    let before = client.connection().stats();
    let incoming = client.download("big", b"", len as u64).await.unwrap();
    let body = incoming.read_all(len + 1).await.unwrap();
    assert_eq!(body.len(), len);
    assert!(body == compressible(len), "download intact");
    let received = client.connection().stats().bytes_in - before.bytes_in;
    assert!(received < len as u64 / 4, "received {received} bytes");
    // An upload: the handler sees the bytes as sent, and they cost a fraction on the wire.
    let before = server.stats().totals;
    let reply = client
        .upload("check", b"", Outgoing::bytes(compressible(len)))
        .await
        .unwrap();
    assert_eq!(&reply[..], &[1]);
    let sent = server.stats().totals.bytes_in - before.bytes_in;
    assert!(sent < len as u64 / 4, "sent {sent} bytes");
    shutdown(&server).await;
}

// ----- 2. the threshold -----------------------------------------------------------------------

both!(payloads_under_the_threshold_are_sent_as_they_are);
async fn payloads_under_the_threshold_are_sent_as_they_are(addr: &str) {
    let config = with(Config::plain_trusted_link(), Compression::lz4());
    let server = start(addr, config.clone()).await;
    let client = connect(&server, config).await;
    assert_eq!(client.connection().compression(), Some("lz4"));
    // Just under the default 1 KiB: as it is, framing on top.
    let small = vec![0u8; 1023];
    let (out, back) = echo_costs(&server, &client, &small).await;
    assert!(out > 1023 && back > 1023, "{out} / {back}");
    let stats = client.connection().stats();
    assert_eq!(
        stats.uncompressed_out + stats.uncompressed_in,
        0,
        "{stats:?}"
    );
    // At the threshold: compressed.
    let at = vec![0u8; 1024];
    let (out, back) = echo_costs(&server, &client, &at).await;
    assert!(out < 200 && back < 200, "{out} / {back}");
    shutdown(&server).await;

    // A threshold of 64 KiB on the client: its 32 KiB call goes as it is, while the
    // server (default threshold) still compresses its reply.
    let server = start(addr, with(Config::plain_trusted_link(), Compression::lz4())).await;
    let client = connect(
        &server,
        with(
            Config::plain_trusted_link(),
            Compression::lz4().with_threshold(64 * 1024),
        ),
    )
    .await;
    let (out, back) = echo_costs(&server, &client, &vec![7u8; 32 * 1024]).await;
    assert!(out > 32 * 1024, "{out}");
    assert!(back < 1024, "{back}");
    shutdown(&server).await;
}

// ----- 3. one side offers nothing ---------------------------------------------------------------

both!(one_sided_offer_negotiates_none);
async fn one_sided_offer_negotiates_none(addr: &str) {
    let payload = compressible(64 * 1024);
    for (server_c, client_c) in [
        (Compression::lz4(), Compression::off()),
        (Compression::off(), Compression::lz4()),
    ] {
        for base in [Config::default(), Config::plain_trusted_link()] {
            let server = start(addr, with(base.clone(), server_c.clone())).await;
            let client = connect(&server, with(base, client_c.clone())).await;
            assert_eq!(client.connection().compression(), None);
            let server_side: Option<String> = client.call("codec", &()).await.unwrap();
            assert_eq!(server_side, None);
            let (out, back) = echo_costs(&server, &client, &payload).await;
            assert!(out >= payload.len() as u64 && back >= payload.len() as u64);
            shutdown(&server).await;
        }
    }
}

// ----- 4. a codec of the user's own ---------------------------------------------------------

static RLE_ENCODED: AtomicUsize = AtomicUsize::new(0);
static RLE_DECODED: AtomicUsize = AtomicUsize::new(0);

/// Run-length encoding: (count, byte) pairs.
struct Rle;

impl CompressionCodec for Rle {
    fn id(&self) -> u8 {
        200
    }
    fn name(&self) -> &'static str {
        "rle"
    }
    fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        RLE_ENCODED.fetch_add(1, Ordering::Relaxed);
        for run in input.chunk_by(|a, b| a == b) {
            for piece in run.chunks(255) {
                out.extend_from_slice(&[piece.len() as u8, piece[0]]);
            }
        }
        Ok(())
    }
    fn decode(&self, input: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        RLE_DECODED.fetch_add(1, Ordering::Relaxed);
        for pair in input.chunks(2) {
            let &[n, byte] = pair else {
                return Err(Error::Compression("odd length".into()));
            };
            if out.len() + n as usize > max_len {
                return Err(Error::Compression("decodes past the limit".into()));
            }
            out.resize(out.len() + n as usize, byte);
        }
        Ok(())
    }
}

both!(user_codec_is_negotiated_and_used);
async fn user_codec_is_negotiated_and_used(addr: &str) {
    // The client prefers RLE, the server LZ4: the client's preference wins.
    let server = start(addr, with(Config::default(), Compression::lz4().with(Rle))).await;
    let client = connect(
        &server,
        with(Config::default(), Compression::off().with(Rle).with(Lz4)),
    )
    .await;
    assert_eq!(client.connection().compression(), Some("rle"));
    let server_side: Option<String> = client.call("codec", &()).await.unwrap();
    assert_eq!(server_side.as_deref(), Some("rle"));
    let (enc, dec) = (
        RLE_ENCODED.load(Ordering::Relaxed),
        RLE_DECODED.load(Ordering::Relaxed),
    );
    let payload: Vec<u8> = (0..200u8).flat_map(|b| [b; 500]).collect();
    let (out, back) = echo_costs(&server, &client, &payload).await;
    assert!(out < payload.len() as u64 / 10, "sent {out}");
    assert!(back < payload.len() as u64 / 10, "received {back}");
    // Both ends encoded once (call, reply) and decoded once (tests run in parallel, so
    // other cases may add to the counts).
    assert!(RLE_ENCODED.load(Ordering::Relaxed) >= enc + 2);
    assert!(RLE_DECODED.load(Ordering::Relaxed) >= dec + 2);
    shutdown(&server).await;

    // The server lists RLE only; the client lists LZ4 then RLE: RLE is the one in common.
    let server = start(
        addr,
        with(Config::plain_trusted_link(), Compression::off().with(Rle)),
    )
    .await;
    let client = connect(
        &server,
        with(Config::plain_trusted_link(), Compression::lz4().with(Rle)),
    )
    .await;
    assert_eq!(client.connection().compression(), Some("rle"));
    let (out, _) = echo_costs(&server, &client, &payload).await;
    assert!(out < payload.len() as u64 / 10, "sent {out}");
    shutdown(&server).await;
}

// ----- 5. hostile peers ---------------------------------------------------------------------------

/// Runs `hostile` against a plain LZ4 server on a std thread while a normal client stays usable.
async fn hostile_peer_is_closed(
    addr: &str,
    hostile: impl FnOnce(SocketAddr) -> Result<(), String> + Send + 'static,
) {
    let config = with(Config::plain_trusted_link(), Compression::lz4());
    let server = start(addr, config.clone()).await;
    let good = connect(&server, config.clone()).await;
    assert_eq!(
        &good.call_bytes("echo", b"before").await.unwrap()[..],
        b"before"
    );
    hostile_closed_alone(&server, hostile).await;
    let big = compressible(100_000);
    let (out, _) = echo_costs(&server, &good, &big).await;
    assert!(out < 20_000, "still compressing: {out}");
    let fresh = connect(&server, config).await;
    assert_eq!(
        &fresh.call_bytes("echo", b"after").await.unwrap()[..],
        b"after"
    );
    shutdown(&server).await;
}

/// A raw plain connection that negotiates LZ4 by hand (docs/PROTOCOL.md, section 2a).
fn raw_lz4(target: SocketAddr) -> TcpStream {
    let mut raw = raw_connect(target);
    raw.write_all(b"ZSRV\x01\x00\x00\x01").unwrap();
    let mut theirs = [0u8; 8];
    raw.read_exact(&mut theirs).expect("server preamble");
    assert_eq!(&theirs, b"ZSRV\x01\x00\x00\x01", "server offers codecs");
    raw.write_all(&[1, 1]).unwrap(); // one codec: lz4
    let mut offer = [0u8; 2];
    raw.read_exact(&mut offer).expect("server offer");
    assert_eq!(offer, [1, 1], "server offers lz4 only");
    raw
}

/// A `Call` frame (id 1, command `echo`) with flags `0x80` and `payload`.
fn compressed_call(payload: &[u8]) -> Vec<u8> {
    let mut frame = ((8 + payload.len()) as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&[0x00, 0x80, 0x01, 0x04]);
    frame.extend_from_slice(b"echo");
    frame.extend_from_slice(payload);
    frame
}

fn lz4(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Lz4.encode(data, &mut out).unwrap();
    out
}

both!(raw_peer_speaks_lz4_as_documented);
async fn raw_peer_speaks_lz4_as_documented(addr: &str) {
    if skip_over_ws("raw_peer_speaks_lz4_as_documented") {
        return;
    }
    let server = start(addr, with(Config::plain_trusted_link(), Compression::lz4())).await;
    let target = server.local_addr();
    on_thread(move || {
        let mut raw = raw_lz4(target);
        let text = compressible(5000);
        raw.write_all(&compressed_call(&lz4(&text))).unwrap();
        // The 5000-byte reply comes back compressed: Reply, flags 0x80, id 1, no command.
        let mut len = [0u8; 4];
        raw.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        raw.read_exact(&mut body).unwrap();
        assert_eq!(&body[..4], &[0x02, 0x80, 0x01, 0x00]);
        assert!(body.len() < 1000, "{} bytes", body.len());
        let mut plain = Vec::new();
        Lz4.decode(&body[4..], 1 << 22, &mut plain).unwrap();
        assert_eq!(plain, text);
    })
    .await;
    shutdown(&server).await;
}

both!(compressed_frame_without_a_codec_closes_connection);
async fn compressed_frame_without_a_codec_closes_connection(addr: &str) {
    if skip_over_ws("compressed_frame_without_a_codec_closes_connection") {
        return;
    }
    hostile_peer_is_closed(addr, |target| {
        // Flags byte 0 in the preamble: no codec offered, so none is negotiated (and the
        // server, which offers LZ4, sends no list); frames follow the preambles at once.
        let mut raw = raw_connect(target);
        raw.write_all(&PREAMBLE).unwrap();
        let mut theirs = [0u8; 8];
        raw.read_exact(&mut theirs).expect("server preamble");
        assert_eq!(&theirs, b"ZSRV\x01\x00\x00\x01");
        raw.write_all(&ECHO_HI_CALL).unwrap();
        let mut reply = [0u8; ECHO_HI_REPLY.len()];
        raw.read_exact(&mut reply)
            .expect("uncompressed call answered");
        assert_eq!(reply, ECHO_HI_REPLY);
        raw.write_all(&compressed_call(&lz4(b"hello"))).unwrap();
        expect_closed(&mut raw)
    })
    .await;
}

both!(decompression_bomb_closes_connection);
async fn decompression_bomb_closes_connection(addr: &str) {
    if skip_over_ws("decompression_bomb_closes_connection") {
        return;
    }
    hostile_peer_is_closed(addr, |target| {
        let mut raw = raw_lz4(target);
        // 8 MiB of zeros packs into ~32 KiB, twice the server's 4 MiB max_frame.
        let bomb = lz4(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 * 1024);
        raw.write_all(&compressed_call(&bomb)).unwrap();
        expect_closed(&mut raw)
    })
    .await;
}

both!(lying_length_prefix_closes_connection);
async fn lying_length_prefix_closes_connection(addr: &str) {
    if skip_over_ws("lying_length_prefix_closes_connection") {
        return;
    }
    hostile_peer_is_closed(addr, |target| {
        let mut raw = raw_lz4(target);
        // Announces 4 GiB - 1 in a 6-byte payload: refused before any allocation.
        raw.write_all(&compressed_call(&[0xff, 0xff, 0xff, 0xff, 0x10, 0x00]))
            .unwrap();
        expect_closed(&mut raw)
    })
    .await;
}

both!(garbage_compressed_payload_closes_connection);
async fn garbage_compressed_payload_closes_connection(addr: &str) {
    if skip_over_ws("garbage_compressed_payload_closes_connection") {
        return;
    }
    hostile_peer_is_closed(addr, |target| {
        let mut raw = raw_lz4(target);
        raw.write_all(&compressed_call(&[100, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]))
            .unwrap();
        expect_closed(&mut raw)
    })
    .await;
}

// ----- 6. with stable sessions ----------------------------------------------------------------

both!(lz4_over_a_stable_session);
async fn lz4_over_a_stable_session(addr: &str) {
    // The codec lists travel as session data, like the preambles and the Noise handshake.
    let mut config = with(Config::default(), Compression::lz4());
    config.stable = Some(StableSession::default());
    let server = start(addr, config.clone()).await;
    let client = connect(&server, config).await;
    assert_eq!(client.connection().compression(), Some("lz4"));
    let payload = compressible(200_000);
    let (out, back) = echo_costs(&server, &client, &payload).await;
    assert!(out < 50_000 && back < 50_000, "{out} / {back}");
    shutdown(&server).await;
}

// ----- 7. the lists are authenticated ---------------------------------------------------------

/// A one-connection TCP relay in front of `target` that turns the client's codec list
/// `01 01` (LZ4) into `01 c8` (codec 200) on its way to the server.
fn tampering_relay(target: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        let mut server = raw_connect(target);
        let (mut client_r, mut server_w) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut head = [0u8; 10];
            if client_r.read_exact(&mut head).is_ok() {
                assert_eq!(&head[8..], &[1, 1], "the client offers lz4");
                head[9] = 200;
                let _ = server_w.write_all(&head);
                let _ = std::io::copy(&mut client_r, &mut server_w);
            }
            let _ = server_w.shutdown(std::net::Shutdown::Both);
        });
        let _ = std::io::copy(&mut server, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Both);
    });
    addr
}

both!(tampered_codec_list_fails_the_handshake);
async fn tampered_codec_list_fails_the_handshake(addr: &str) {
    if skip_over_ws("tampered_codec_list_fails_the_handshake") {
        return;
    }
    let config = with(Config::default(), Compression::lz4());
    let server = start(addr, config.clone()).await;
    let relay = tampering_relay(server.local_addr());
    // The server sees a list without LZ4 and settles on none, the client on LZ4; the
    // lists are in the Noise prologue, so the handshake fails instead.
    let connected = within(
        WAIT,
        "connect through the relay",
        suite_client().config(config).connect(relay),
    )
    .await;
    assert!(
        matches!(connected, Err(Error::Handshake(_))),
        "{connected:?}"
    );
    assert_eq!(server.connection_count(), 0);
    shutdown(&server).await;
}

// ----- 8. Zstandard (the `zstd` feature) ----------------------------------------------------------

#[cfg(feature = "zstd")]
both!(zstd_is_negotiated_when_both_offer_it);
#[cfg(feature = "zstd")]
async fn zstd_is_negotiated_when_both_offer_it(addr: &str) {
    let payload = compressible(300_000);
    let server = start(addr, with(Config::default(), Compression::zstd())).await;
    let client = connect(&server, with(Config::default(), Compression::zstd())).await;
    assert_eq!(client.connection().compression(), Some("zstd"));
    let (out, back) = echo_costs(&server, &client, &payload).await;
    assert!(out < 10_000 && back < 10_000, "{out} / {back}");
    // A server with LZ4 only: the client's second choice.
    let lz4_server = start(addr, with(Config::default(), Compression::lz4())).await;
    let client = connect(&lz4_server, with(Config::default(), Compression::zstd())).await;
    assert_eq!(client.connection().compression(), Some("lz4"));
    let (out, _) = echo_costs(&lz4_server, &client, &payload).await;
    assert!(out < payload.len() as u64 / 4, "{out}");
    shutdown(&server).await;
    shutdown(&lz4_server).await;
}
