//! The encrypted channel, seen from outside: what is on the wire, tampering, replay,
//! rekeying under load, key pinning. Runs unchanged on every back end.
//!
//! A small std-thread proxy sits between client and server. It parses the client's byte
//! stream (preamble, the two client handshake messages, then records) so that it can
//! capture, flip a bit in, or replay one record.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zserver::Calls;
use zserver::{Config, Encryption, Error, Keypair, Provider, RekeyPolicy, Router};

/// What the proxy does to the client's records.
#[derive(Clone, Copy)]
enum Tamper {
    Nothing,
    FlipBit {
        record: usize,
    },
    Replay {
        record: usize,
    },
    /// Hold handshake message 3 back and send it in one write with the first record.
    Message3WithFirstRecord,
}

/// Records the client sent, per proxied connection.
type Captured = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

struct Proxy {
    addr: SocketAddr,
    captured: Captured,
}

fn proxy(target: SocketAddr, tamper: Tamper) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let captured: Captured = Arc::default();
    let sink = captured.clone();
    thread::spawn(move || {
        for down in listener.incoming() {
            let Ok(down) = down else { return };
            let up = TcpStream::connect(target).unwrap();
            let index = {
                let mut all = sink.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            thread::spawn(move || copy_back(up2, down2));
            let sink = sink.clone();
            thread::spawn(move || forward_records(down, up, tamper, sink, index));
        }
    });
    Proxy { addr, captured }
}

fn copy_back(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
}

fn forward_records(
    mut down: TcpStream,
    mut up: TcpStream,
    tamper: Tamper,
    sink: Captured,
    index: usize,
) {
    let result = (|| -> std::io::Result<()> {
        let mut preamble = [0u8; 8];
        down.read_exact(&mut preamble)?;
        up.write_all(&preamble)?;
        let mut held = Vec::new();
        for message in 0..2 {
            let mut len = [0u8; 2];
            down.read_exact(&mut len)?;
            let mut msg = vec![0u8; usize::from(u16::from_le_bytes(len))];
            down.read_exact(&mut msg)?;
            if message == 1 && matches!(tamper, Tamper::Message3WithFirstRecord) {
                held = [&len[..], &msg].concat();
                continue;
            }
            up.write_all(&len)?;
            up.write_all(&msg)?;
        }
        for i in 0.. {
            let mut record = vec![0u8; 5];
            down.read_exact(&mut record)?;
            let len = u32::from_le_bytes(record[..4].try_into().unwrap()) as usize;
            record.resize(5 + len, 0);
            down.read_exact(&mut record[5..])?;
            sink.lock().unwrap()[index].push(record.clone());
            match tamper {
                Tamper::FlipBit { record: k } if k == i => {
                    record[5] ^= 0x01;
                    up.write_all(&record)?;
                }
                Tamper::Replay { record: k } if k == i => {
                    up.write_all(&record)?;
                    up.write_all(&record)?;
                }
                _ => up.write_all(&[std::mem::take(&mut held), record].concat())?,
            }
        }
        Ok(())
    })();
    drop(result);
    let _ = up.shutdown(Shutdown::Both);
    let _ = down.shutdown(Shutdown::Both);
}

fn echo_router() -> Router {
    Router::new().bytes("echo", |_ctx, b| async move { Ok(b) })
}

/// Polls `cond` until it holds or ten seconds pass.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        zserver::sleep(Duration::from_millis(10)).await;
    }
}

every_backend!(same_plaintext_gives_different_ciphertext_on_two_connections);
fn same_plaintext_gives_different_ciphertext_on_two_connections() {
    zserver::block_on(async {
        let server = zserver::server()
            .router(echo_router())
            .bind("127.0.0.1:0")
            .await?;
        let p = proxy(server.local_addr(), Tamper::Nothing);
        let secret = b"the same secret plaintext, sent twice".to_vec();
        for _ in 0..2 {
            let client = zserver::client().connect(p.addr).await?;
            assert!(client.connection().is_encrypted());
            assert_eq!(client.call_bytes("echo", &secret).await?, secret);
        }
        let captured = p.captured.lock().unwrap().clone();
        assert_eq!(captured.len(), 2);
        let (a, b) = (&captured[0][0], &captured[1][0]);
        assert_eq!(a.len(), b.len(), "same plaintext, same record size");
        assert_ne!(a, b, "two connections sealed the same bytes identically");
        for record in [a, b] {
            assert!(
                !record.windows(secret.len()).any(|w| w == secret.as_slice()),
                "plaintext visible on the wire"
            );
        }
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(the_first_record_may_share_a_write_with_message_3);
/// docs/PROTOCOL.md section 2b: the client may send its first record in the same write as
/// handshake message 3; the server reads message 3 and takes the bytes after it as records.
fn the_first_record_may_share_a_write_with_message_3() {
    zserver::block_on(async {
        let server = zserver::server()
            .router(echo_router())
            .bind("127.0.0.1:0")
            .await?;
        let p = proxy(server.local_addr(), Tamper::Message3WithFirstRecord);
        let client = zserver::client().connect(p.addr).await?;
        let answer = within_ten_seconds(client.call_bytes("echo", b"first record"))
            .await
            .expect("an answer to the call sent with message 3")?;
        assert_eq!(&answer[..], b"first record");
        assert_eq!(p.captured.lock().unwrap()[0].len(), 1, "one record sent");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// `fut`'s output, or `None` after ten seconds.
async fn within_ten_seconds<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        zserver::sleep(Duration::from_secs(10)).await;
        None
    })
    .await
}

every_backend!(a_flipped_bit_closes_the_connection_with_an_auth_error);
fn a_flipped_bit_closes_the_connection_with_an_auth_error() {
    zserver::block_on(async {
        let server = zserver::server()
            .router(echo_router())
            .bind("127.0.0.1:0")
            .await?;
        let p = proxy(server.local_addr(), Tamper::FlipBit { record: 0 });
        let tampered = zserver::client().connect(p.addr).await?;
        let bystander = zserver::client().connect(server.local_addr()).await?;
        let err = tampered
            .request("echo")
            .timeout(Duration::from_secs(10))
            .bytes(b"payload")
            .await
            .unwrap_err();
        assert_eq!(err, Error::Closed);
        eventually("the server counts the authentication failure", || {
            server.stats().totals.auth_failures == 1
        })
        .await;
        assert_eq!(&bystander.call_bytes("echo", b"fine").await?[..], b"fine");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_replayed_record_is_refused);
fn a_replayed_record_is_refused() {
    zserver::block_on(async {
        let calls = Arc::new(Mutex::new(0u32));
        let counted = calls.clone();
        let router = Router::new().bytes("count", move |_ctx, _b| {
            let counted = counted.clone();
            async move {
                *counted.lock().unwrap() += 1;
                Ok(Vec::new())
            }
        });
        let server = zserver::server().router(router).bind("127.0.0.1:0").await?;
        let p = proxy(server.local_addr(), Tamper::Replay { record: 0 });
        let client = zserver::client().connect(p.addr).await?;
        let _ = client
            .request("count")
            .timeout(Duration::from_secs(10))
            .bytes(b"once")
            .await;
        eventually("the replay is refused", || {
            server.stats().totals.auth_failures == 1
        })
        .await;
        client.connection().closed().await;
        assert_eq!(*calls.lock().unwrap(), 1, "the replayed call ran twice");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_wrong_pinned_key_is_refused_before_any_command_runs);
fn a_wrong_pinned_key_is_refused_before_any_command_runs() {
    zserver::block_on(async {
        let server = zserver::server()
            .router(echo_router())
            .bind("127.0.0.1:0")
            .await?;
        let wrong = Keypair::generate().public_key();
        let err = zserver::client()
            .pin_server_key(wrong)
            .connect(server.local_addr())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(&server.fingerprint()), "{err}");
        assert_eq!(server.stats().totals.calls_in, 0);
        // The server counts the handshake the client broke off.
        eventually("a failed handshake counted", || {
            server.stats().handshakes_failed == 1
        })
        .await;
        // The right pin, given as the fingerprint the server prints, connects.
        let client = zserver::client()
            .pin_server_fingerprint(&server.fingerprint())?
            .connect(server.local_addr())
            .await?;
        assert_eq!(&client.call_bytes("echo", b"ok").await?[..], b"ok");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(the_key_file_keeps_the_server_identity_across_restarts);
fn the_key_file_keeps_the_server_identity_across_restarts() {
    let dir = std::env::temp_dir().join(format!(
        "zserver-secure-{}-{}",
        std::process::id(),
        zserver::default_backend()
    ));
    let path = dir.join("server.key");
    let _ = std::fs::remove_dir_all(&dir);
    zserver::block_on(async {
        let first = zserver::server()
            .key_file(&path)?
            .bind("127.0.0.1:0")
            .await?;
        let fingerprint = first.fingerprint();
        first.shutdown().await;
        let second = zserver::server()
            .router(echo_router())
            .key_file(&path)?
            .bind("127.0.0.1:0")
            .await?;
        assert_eq!(second.fingerprint(), fingerprint);
        let client = zserver::client()
            .pin_server_fingerprint(&fingerprint)?
            .connect(second.local_addr())
            .await?;
        assert_eq!(&client.call_bytes("echo", b"same").await?[..], b"same");
        // The server saw the client's static key, proven in the handshake.
        let conn = second.connections().pop().expect("one connection");
        assert!(conn.peer_key().is_some());
        second.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

every_backend!(plain_and_encrypted_peers_refuse_each_other_clearly);
fn plain_and_encrypted_peers_refuse_each_other_clearly() {
    zserver::block_on(async {
        let server = zserver::server().bind("127.0.0.1:0").await?;
        let err = zserver::client()
            .config(Config::plain_trusted_link())
            .connect(server.local_addr())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Handshake(m) if m.contains("plain") && m.contains("encrypted")),
            "{err:?}"
        );
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_256_mib_transfer_rekeying_every_mib_arrives_with_the_same_hash);
/// 256 MiB in one-way sends with a rekey every MiB in each direction arrives intact, with
/// the providers mixed (ring on one side, aes-gcm on the other, where ring is built).
fn a_256_mib_transfer_rekeying_every_mib_arrives_with_the_same_hash() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 256;
    let rekey = RekeyPolicy {
        bytes: 1 << 20,
        ..RekeyPolicy::default()
    };
    let mut server_config = Config::default();
    server_config.encryption = Encryption::Noise {
        provider: Provider::RustCrypto,
        rekey,
    };
    let mut client_config = Config::default();
    client_config.encryption = Encryption::Noise {
        provider: Provider::default(),
        rekey,
    };
    zserver::block_on(async {
        let hasher = Arc::new(Mutex::new(blake3::Hasher::new()));
        let (sink, digest) = (hasher.clone(), hasher.clone());
        let router = Router::new()
            .bytes("chunk", move |_ctx, b| {
                sink.lock().unwrap().update(&b);
                async { Ok(Vec::new()) }
            })
            .bytes("digest", move |_ctx, _b| {
                let hash = *digest.lock().unwrap().finalize().as_bytes();
                async move { Ok(hash.to_vec()) }
            });
        let server = zserver::server()
            .router(router)
            .config(server_config)
            .bind("127.0.0.1:0")
            .await?;
        let client = zserver::client()
            .config(client_config)
            .connect(server.local_addr())
            .await?;
        let mut local = blake3::Hasher::new();
        let mut chunk = vec![0u8; CHUNK];
        for (i, byte) in chunk.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        for n in 0..CHUNKS {
            chunk[..8].copy_from_slice(&(n as u64).to_le_bytes());
            local.update(&chunk);
            client.send_bytes("chunk", &chunk).await?;
        }
        let remote = client.call_bytes("digest", b"").await?;
        assert_eq!(&remote[..], local.finalize().as_bytes());
        let stats = client.connection().stats();
        assert!(
            stats.rekeys_out >= 250,
            "client rekeyed {} times",
            stats.rekeys_out
        );
        let server_stats = server.stats().totals;
        assert_eq!(server_stats.rekeys_in, stats.rekeys_out);
        assert_eq!(server_stats.auth_failures, 0);
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_frame_larger_than_a_record_spans_records);
/// A frame larger than the largest record (possible with a raised `max_frame`) spans
/// records and still arrives intact.
fn a_frame_larger_than_a_record_spans_records() {
    let mut config = Config::default();
    config.max_frame = 16 << 20;
    zserver::block_on(async {
        let server = zserver::server()
            .router(echo_router())
            .config(config.clone())
            .bind("127.0.0.1:0")
            .await?;
        let client = zserver::client()
            .config(config)
            .connect(server.local_addr())
            .await?;
        let big: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251) as u8).collect();
        let back = client.call_bytes("echo", &big).await?;
        assert_eq!(back.len(), big.len());
        assert!(back == big, "payload changed in transit");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}
