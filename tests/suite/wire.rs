//! Wire-level behaviour seen from outside: write coalescing, the preamble a server sends,
//! back-pressure on a peer that never reads. Raw-socket tests use a plain trusted-link server.
//! Runs unchanged on every back end.

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use zserver::Calls;
use zserver::{Error, Router};

every_backend!(small_frames_are_coalesced_into_few_writes);
/// Many small frames queued close together leave in far fewer socket writes.
fn small_frames_are_coalesced_into_few_writes() {
    zserver::block_on(async {
        let (tx, rx) = async_channel::unbounded::<()>();
        let router = Router::new().bytes("tick", move |_ctx, _b| {
            let tx = tx.clone();
            async move {
                let _ = tx.try_send(());
                Ok(Vec::new())
            }
        });
        let server = zserver::server().router(router).bind("127.0.0.1:0").await?;
        let client = zserver::client().connect(server.local_addr()).await?;
        const N: u64 = 2000;
        for i in 0..N {
            client.send_bytes("tick", i.to_le_bytes()).await?;
        }
        for _ in 0..N {
            rx.recv().await.map_err(|_| Error::Closed)?;
        }
        // The writer counts a write once the socket took it, which can be just after the
        // server has already handled the frames: read the counters once they stop moving.
        let mut stats = client.connection().stats();
        for _ in 0..100 {
            zserver::sleep(Duration::from_millis(20)).await;
            let now = client.connection().stats();
            if now.writes == stats.writes && now.bytes_out == stats.bytes_out && now.writes > 0 {
                break;
            }
            stats = now;
        }
        assert_eq!(stats.frames_out, N);
        assert!(stats.writes >= 1);
        assert!(
            stats.writes * 4 <= N,
            "{} writes for {N} frames: frames were not coalesced",
            stats.writes
        );
        let server_side = server.stats().totals;
        assert_eq!(server_side.frames_in, N);
        assert!(
            server_side.reads < N,
            "{} reads for {N} frames",
            server_side.reads
        );
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(server_opens_with_magic_and_version);
/// The first bytes a server sends are the preamble: magic and protocol version.
fn server_opens_with_magic_and_version() {
    let plain = zserver::server().config(zserver::Config::plain_trusted_link());
    let server = zserver::block_on(plain.bind("127.0.0.1:0")).unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"ZSRV\x01\x00\x00\x00").unwrap();
    let mut preamble = [0u8; 8];
    sock.read_exact(&mut preamble).unwrap();
    assert_eq!(&preamble, b"ZSRV\x01\x00\x00\x00");
    // A Ping (kind 4) with id 7 is answered by a Pong (kind 5) with id 7.
    sock.write_all(&[4, 0, 0, 0, 4, 0, 7, 0]).unwrap();
    let mut pong = [0u8; 8];
    sock.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [4, 0, 0, 0, 5, 0, 7, 0]);
    zserver::block_on(server.shutdown());
}

every_backend!(a_peer_that_never_reads_is_throttled_not_buffered);
/// A peer that pipelines calls and never reads its replies is throttled: the server stops
/// reading from it (its replies queue to a bound), so the peer's writes stall long before it
/// has pushed 512 MiB, while another client is still served.
fn a_peer_that_never_reads_is_throttled_not_buffered() {
    let router = Router::new().bytes("echo", |_ctx, b| async move { Ok(b) });
    let plain = zserver::Config::plain_trusted_link();
    let server = zserver::block_on(
        zserver::server()
            .router(router)
            .config(plain.clone())
            .bind("127.0.0.1:0"),
    )
    .unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    sock.write_all(b"ZSRV\x01\x00\x00\x00").unwrap();
    // One Call frame: kind 0, flags 0, id 1, command "echo", 16 KiB payload.
    let payload = vec![0xab_u8; 16 * 1024];
    let mut frame = Vec::new();
    let body_len = 1 + 1 + 1 + 1 + 4 + payload.len();
    frame.extend_from_slice(&(body_len as u32).to_le_bytes());
    frame.extend_from_slice(&[0, 0, 1, 4]);
    frame.extend_from_slice(b"echo");
    frame.extend_from_slice(&payload);
    let limit = 512usize << 20;
    let mut sent = 0usize;
    let stalled = loop {
        match sock.write_all(&frame) {
            Ok(()) => sent += frame.len(),
            Err(_) => break true,
        }
        if sent >= limit {
            break false;
        }
    };
    assert!(
        stalled,
        "the server kept reading {sent} bytes from a peer that never reads"
    );
    assert!(
        sent < 128 << 20,
        "{sent} bytes accepted before back-pressure"
    );
    zserver::block_on(async {
        let client = zserver::client()
            .config(plain)
            .connect(server.local_addr())
            .await?;
        assert_eq!(
            &client.call_bytes("echo", b"still served").await?[..],
            b"still served"
        );
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_panic_in_sequential_mode_fails_only_that_call);
/// A panicking handler on a sequential connection fails only its own call: the calls after
/// it are still handled, in order.
fn a_panic_in_sequential_mode_fails_only_that_call() {
    zserver::block_on(async {
        let router = Router::new()
            .bytes("boom", |_ctx, _b| async move {
                if true {
                    panic!("handler bug");
                }
                Ok(Vec::new())
            })
            .bytes("echo", |_ctx, b| async move { Ok(b) });
        let mut config = zserver::Config::default();
        config.sequential = true;
        let server = zserver::server()
            .router(router)
            .config(config)
            .bind("127.0.0.1:0")
            .await?;
        let client = zserver::client().connect(server.local_addr()).await?;
        assert_eq!(client.call_bytes("boom", b"").await, Err(Error::NoResponse));
        assert_eq!(&client.call_bytes("echo", b"after").await?[..], b"after");
        let conn = server
            .connections()
            .into_iter()
            .next()
            .expect("one connection");
        assert_eq!(conn.stats().handler_panics, 1, "the panic is counted");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_panicking_handler_fails_only_its_call);
/// A handler that panics, before or after its first await, fails its own call with
/// `NoResponse`; the panic is counted and the connection keeps serving.
fn a_panicking_handler_fails_only_its_call() {
    zserver::block_on(async {
        let router = Router::new()
            .bytes("boom-now", |_ctx, _b| async move {
                if true {
                    panic!("handler bug");
                }
                Ok(Vec::new())
            })
            .bytes("boom-later", |_ctx, _b| async move {
                zserver::sleep(std::time::Duration::from_millis(5)).await;
                if true {
                    panic!("handler bug");
                }
                Ok(Vec::new())
            })
            .bytes("echo", |_ctx, b| async move { Ok(b) });
        let server = zserver::server().router(router).bind("127.0.0.1:0").await?;
        let client = zserver::client().connect(server.local_addr()).await?;
        assert_eq!(
            client.call_bytes("boom-now", b"").await,
            Err(Error::NoResponse)
        );
        assert_eq!(
            client.call_bytes("boom-later", b"").await,
            Err(Error::NoResponse)
        );
        assert_eq!(&client.call_bytes("echo", b"after").await?[..], b"after");
        let conn = server
            .connections()
            .into_iter()
            .next()
            .expect("one connection");
        assert_eq!(conn.stats().handler_panics, 2);
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

fn heartbeat_config(beat_ms: u64, idle_ms: u64) -> zserver::Config {
    let mut config = zserver::Config::plain_trusted_link();
    config.heartbeat = Some(Duration::from_millis(beat_ms));
    config.idle_timeout = Duration::from_millis(idle_ms);
    config
}

every_backend!(a_silent_peer_is_pinged_then_disconnected);
/// A peer that goes silent is probed with a `Ping` after one heartbeat, and disconnected
/// once the idle time-out passes without a word from it (DataSnap's idle disconnect).
fn a_silent_peer_is_pinged_then_disconnected() {
    let server = zserver::block_on(
        zserver::server()
            .config(heartbeat_config(50, 300))
            .bind("127.0.0.1:0"),
    )
    .unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"ZSRV\x01\x00\x00\x00").unwrap();
    let start = std::time::Instant::now();
    let mut received = Vec::new();
    sock.read_to_end(&mut received).unwrap();
    let elapsed = start.elapsed();
    assert!(
        received.starts_with(b"ZSRV\x01\x00\x00\x00"),
        "{received:02x?}"
    );
    let ping = [4, 0, 0, 0, 4, 0, 0, 0];
    assert!(
        received[8..].windows(8).any(|w| w == ping),
        "a Ping frame before the close: {received:02x?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    zserver::block_on(server.shutdown());
}

every_backend!(heartbeats_keep_a_quiet_connection_open);
/// Two live peers with nothing to say keep each other alive with heartbeats, well past
/// the idle time-out.
fn heartbeats_keep_a_quiet_connection_open() {
    zserver::block_on(async {
        let router = Router::new().bytes("echo", |_ctx, b| async move { Ok(b) });
        let server = zserver::server()
            .router(router)
            .config(heartbeat_config(40, 200))
            .bind("127.0.0.1:0")
            .await?;
        let client = zserver::client()
            .config(heartbeat_config(40, 200))
            .connect(server.local_addr())
            .await?;
        zserver::sleep(Duration::from_millis(1000)).await;
        assert!(
            !client.connection().is_closed(),
            "the connection outlived five idle time-outs"
        );
        assert_eq!(
            &client.call_bytes("echo", b"still here").await?[..],
            b"still here"
        );
        assert!(
            client.connection().stats().frames_in >= 5,
            "heartbeat pongs arrived"
        );
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(silent_sockets_do_not_starve_real_clients);
/// 2,000 sockets that connect and say nothing (slowloris) do not stop a normal client's
/// calls, and each is dropped once the handshake time-out passes.
fn silent_sockets_do_not_starve_real_clients() {
    let mut config = zserver::Config::default();
    config.handshake_timeout = Duration::from_millis(1500);
    let router = Router::new().bytes("echo", |_ctx, b| async move { Ok(b) });
    let server = zserver::block_on(
        zserver::server()
            .router(router)
            .config(config)
            .bind("127.0.0.1:0"),
    )
    .unwrap();
    let silent: Vec<std::net::TcpStream> = (0..2000)
        .map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    zserver::block_on(async {
        let client = zserver::client().connect(server.local_addr()).await?;
        for i in 0..100u32 {
            let reply = client.call_bytes("echo", i.to_le_bytes()).await?;
            assert_eq!(&reply[..], i.to_le_bytes());
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    for mut sock in silent {
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        // The server's preamble, then EOF once the handshake time-out passes.
        let mut total = 0;
        loop {
            match sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("a silent socket was not dropped: {e}"),
            }
        }
        assert_eq!(total, 8, "only the preamble was sent");
    }
    zserver::block_on(server.shutdown());
}

every_backend!(connections_past_the_per_address_limit_are_refused);
/// Connections past `max_connections_per_ip` are closed at once and counted; a place frees
/// up when a connection ends.
fn connections_past_the_per_address_limit_are_refused() {
    zserver::block_on(async {
        let mut config = zserver::Config::default();
        config.max_connections_per_ip = 2;
        let server = zserver::server().config(config).bind("127.0.0.1:0").await?;
        let first = zserver::client().connect(server.local_addr()).await?;
        let second = zserver::client().connect(server.local_addr()).await?;
        let third = zserver::client()
            .connect_timeout(Duration::from_secs(5))
            .connect(server.local_addr())
            .await;
        assert!(
            third.is_err(),
            "a third connection from one address is refused"
        );
        assert_eq!(server.stats().connections_refused, 1);
        first.connection().close().await;
        let start = std::time::Instant::now();
        let again = loop {
            match zserver::client().connect(server.local_addr()).await {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    zserver::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        };
        assert!(!again.connection().is_closed() && !second.connection().is_closed());
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}

every_backend!(a_reused_stream_id_is_refused_and_orphans_nothing);
/// A peer that opens a second upload under the id of one still open gets an error for the
/// second, and the first handler is not orphaned: when the connection closes it ends (with
/// an error) instead of waiting forever. (Found by the dispatcher fuzz target.)
fn a_reused_stream_id_is_refused_and_orphans_nothing() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let router = Router::new().upload("sink", move |_ctx, body| {
        let done = done_tx.clone();
        async move {
            let result = body.read_all(1 << 20).await;
            let _ = done.send(result.is_ok());
            result
        }
    });
    let (server, mut sock) = plain_server_and_raw_peer(router);
    // Call (kind 0), flag UPLOAD, id 1, command "sink", head: unknown length, no meta.
    let upload = [10, 0, 0, 0, 0, 1, 1, 4, b's', b'i', b'n', b'k', 0, 0];
    sock.write_all(&upload).unwrap();
    sock.write_all(&upload).unwrap();
    // The second is answered with an Error frame (kind 3) for id 1: code 3, bad request.
    let mut head = [0u8; 8];
    sock.read_exact(&mut head).unwrap();
    assert_eq!(&head[4..8], &[3, 0, 1, 1], "an Error for id 1: {head:?}");
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 4];
    sock.read_exact(&mut rest).unwrap();
    assert!(
        String::from_utf8_lossy(&rest).contains("already open"),
        "{rest:?}"
    );
    drop(sock);
    let finished = done_rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(
        finished,
        Ok(false),
        "the first upload's handler ended with an error"
    );
    zserver::block_on(server.shutdown());
}

/// Reads one frame from a raw socket: (kind, flags, id, payload). Ids and the command
/// length are read as one-byte varints, enough for the small frames of these tests.
fn read_raw_frame(sock: &mut std::net::TcpStream) -> (u8, u8, u8, Vec<u8>) {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    sock.read_exact(&mut body).unwrap();
    let command_len = body[3] as usize;
    (body[0], body[1], body[2], body[4 + command_len..].to_vec())
}

/// The next frame that is not a `Credit` for upload 1 (whether the upload's consumer grants
/// credit before its `End` is processed is a race).
fn read_raw_answer(sock: &mut std::net::TcpStream) -> (u8, u8, u8, Vec<u8>) {
    loop {
        let frame = read_raw_frame(sock);
        if (frame.0, frame.1, frame.2) != (10, 1, 1) {
            return frame;
        }
    }
}

every_backend!(data_after_end_is_answered_with_stop_not_a_close);
/// docs/PROTOCOL.md §5b and §7: `Data` after a stream's `End` is `Data` for a stream the
/// receiver no longer knows. It is answered with `Stop` and the connection stays up; other
/// stream frames for unknown streams are ignored.
fn data_after_end_is_answered_with_stop_not_a_close() {
    let router = Router::new()
        .upload(
            "sink",
            |_ctx, body| async move { body.read_all(1 << 20).await },
        )
        .console("echo", |_ctx, text: String| async move { Ok(text) });
    let (server, mut sock) = plain_server_and_raw_peer(router);
    // Call (kind 0), flag UPLOAD, id 1, command "sink", head: unknown length, no meta.
    sock.write_all(&[10, 0, 0, 0, 0, 1, 1, 4, b's', b'i', b'n', b'k', 0, 0])
        .unwrap();
    let data = [9, 0, 0, 0, 7, 1, 1, 0, b'h', b'e', b'l', b'l', b'o'];
    sock.write_all(&data).unwrap();
    let mut end = vec![36, 0, 0, 0, 8, 1, 1, 0];
    end.extend_from_slice(blake3::hash(b"hello").as_bytes());
    sock.write_all(&end).unwrap();
    assert_eq!(read_raw_answer(&mut sock), (2, 0, 1, b"hello".to_vec()));
    // The same Data again, after the End: a Stop for upload 1 comes back.
    sock.write_all(&data).unwrap();
    assert_eq!(read_raw_frame(&mut sock), (11, 1, 1, Vec::new()));
    // An End, an Abort and a Credit for streams the server does not know: ignored.
    sock.write_all(&end).unwrap();
    sock.write_all(&[6, 0, 0, 0, 9, 1, 5, 0, b'n', b'o'])
        .unwrap();
    sock.write_all(&[12, 0, 0, 0, 10, 2, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    // The connection is still up, and the next frame is the answer to this call.
    sock.write_all(&[10, 0, 0, 0, 0, 0, 2, 4, b'e', b'c', b'h', b'o', b'h', b'i'])
        .unwrap();
    assert_eq!(read_raw_frame(&mut sock), (2, 0, 2, b"hi".to_vec()));
    assert_eq!(server.stats().totals.errors_in, 0, "no protocol error");
    drop(sock);
    zserver::block_on(server.shutdown());
}

every_backend!(a_data_frame_may_use_the_whole_credit_and_no_more);
/// docs/PROTOCOL.md §5b, "Largest `Data` payload": no stream-specific size limit. One
/// `Data` frame carrying the whole initial credit (262,144 bytes, four times what zserver
/// sends per frame) is accepted; one byte more than the credit closes the connection.
fn a_data_frame_may_use_the_whole_credit_and_no_more() {
    const CREDIT: usize = 262_144;
    let router = Router::new().upload("count", |_ctx, body| async move {
        let all = body.read_all(1 << 20).await?;
        Ok((all.len() as u64).to_le_bytes().to_vec())
    });
    let (server, mut sock) = plain_server_and_raw_peer(router);
    let upload = |id: u8, len: usize| {
        // Call (kind 0), flag UPLOAD, `id`, command "count", head: unknown length, no meta;
        // then one Data frame of `len` bytes.
        let mut bytes = vec![11, 0, 0, 0, 0, 1, id, 5, b'c', b'o', b'u', b'n', b't', 0, 0];
        bytes.extend_from_slice(&(4 + len as u32).to_le_bytes());
        bytes.extend_from_slice(&[7, 1, id, 0]);
        bytes.resize(bytes.len() + len, 0x42);
        bytes
    };
    sock.write_all(&upload(1, CREDIT)).unwrap();
    let mut end = vec![36, 0, 0, 0, 8, 1, 1, 0];
    end.extend_from_slice(blake3::hash(&[0x42; CREDIT]).as_bytes());
    sock.write_all(&end).unwrap();
    let answer = (CREDIT as u64).to_le_bytes().to_vec();
    assert_eq!(read_raw_answer(&mut sock), (2, 0, 1, answer));
    sock.write_all(&upload(2, CREDIT + 1)).unwrap();
    assert_eq!(crate::common::expect_closed(&mut sock), Ok(()));
    zserver::block_on(server.shutdown());
}

every_backend!(data_for_unknown_streams_cannot_grow_the_outbox);
/// docs/PROTOCOL.md §5b: `Data` for streams the server does not know, from a peer that
/// never reads, cannot make the server queue an answer per frame. A stream gets one `Stop`
/// however much `Data` follows, and a connection answers at most 1,024 unknown streams in
/// its life; the rest is read and dropped, and the connection is still served.
fn data_for_unknown_streams_cannot_grow_the_outbox() {
    const MAX_STOP_ANSWERS: usize = 1024;
    let router = Router::new().console("echo", |_ctx, text: String| async move { Ok(text) });
    let (server, mut sock) = plain_server_and_raw_peer(router);
    // An empty Data frame (kind 7, flag UPLOAD) for stream `id`; ids are LEB128 varints.
    let data = |out: &mut Vec<u8>, mut id: u64| {
        let mut header = vec![7, 1];
        while id >= 0x80 {
            header.push(id as u8 | 0x80);
            id >>= 7;
        }
        header.extend_from_slice(&[id as u8, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
    };
    // Call `id` to "echo" with "hi": its Reply comes after every Stop queued before it.
    let echo = |id: u8| [10, 0, 0, 0, 0, 0, id, 4, b'e', b'c', b'h', b'o', b'h', b'i'];
    // The Stops read before the Reply to call `id`.
    let stops_before_reply = |sock: &mut std::net::TcpStream, id: u8| {
        let mut stops = 0;
        loop {
            let mut len = [0u8; 4];
            sock.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            sock.read_exact(&mut body).unwrap();
            match (body[0], body[1]) {
                (11, 1) => stops += 1,
                (2, 0) if body[2] == id => return stops,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    };
    // 10,000 frames of Data for one unknown stream: one Stop.
    let mut flood = Vec::new();
    for _ in 0..10_000 {
        data(&mut flood, 1);
    }
    flood.extend_from_slice(&echo(1));
    sock.write_all(&flood).unwrap();
    assert_eq!(stops_before_reply(&mut sock, 1), 1);
    // Then 100,000 unknown streams (about 1 MB sent, nothing read meanwhile): Stops for the
    // first of them only, up to the connection's bound.
    flood.clear();
    for id in 2..100_002 {
        data(&mut flood, id);
    }
    flood.extend_from_slice(&echo(2));
    sock.write_all(&flood).unwrap();
    assert_eq!(stops_before_reply(&mut sock, 2), MAX_STOP_ANSWERS - 1);
    let totals = server.stats().totals;
    assert_eq!(totals.frames_in, 110_002, "every frame was read");
    assert!(
        totals.bytes_out < 16 * 1024,
        "{} bytes sent in answer to {} received",
        totals.bytes_out,
        totals.bytes_in
    );
    drop(sock);
    zserver::block_on(server.shutdown());
}

every_backend!(pings_from_a_peer_that_never_reads_wait_in_the_socket_not_in_memory);
/// A peer that sends `Ping`s and never reads cannot make the server queue a `Pong` per
/// `Ping` in memory: once twice `max_pending_write` of answers wait unsent, the server reads
/// that peer no further (so the peer's writes block), and it answers every `Ping` once the
/// peer reads again.
fn pings_from_a_peer_that_never_reads_wait_in_the_socket_not_in_memory() {
    const FLOOD: usize = 64 << 20;
    let mut config = zserver::Config::plain_trusted_link();
    config.max_pending_write = 64 * 1024;
    let (server, sock) = plain_server_with_config_and_raw_peer(Router::new(), config);
    // A small receive buffer, so that the kernel does not hold megabytes of Pongs for us.
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(16 * 1024)
        .unwrap();
    // Ping (kind 4), id 1, no command, no payload: 8 bytes on the wire.
    let ping = [4u8, 0, 0, 0, 4, 0, 1, 0];
    let chunk: Vec<u8> = ping.iter().copied().cycle().take(64 * 1024).collect();
    let mut writer = sock.try_clone().unwrap();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel();
    let flooder = std::thread::spawn(move || {
        writer
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let (mut sent, mut blocked) = (0usize, false);
        while sent < FLOOD {
            // From where the last write stopped: a short write may end mid-frame.
            match writer.write(&chunk[sent % chunk.len()..]) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    blocked = true;
                    break;
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        stalled_tx.send(blocked).unwrap();
        // Complete the last frame (the reader below drains the server meanwhile).
        writer.set_write_timeout(None).unwrap();
        let tail = (ping.len() - sent % ping.len()) % ping.len();
        writer.write_all(&ping[ping.len() - tail..]).unwrap();
        sent_tx.send((sent + tail) / ping.len()).unwrap();
    });
    // Nothing is read until the flood stalls (a write blocked for a second) or ends.
    let blocked = stalled_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let read_while_flooded = server.stats().totals.bytes_in;
    let mut reader = sock;
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut pongs, mut total) = (0usize, None);
    let mut buf = vec![0u8; 64 * 1024];
    let mut held = 0;
    while total != Some(pongs) {
        let n = reader
            .read(&mut buf[held..])
            .expect("every ping is answered");
        assert!(n > 0, "the server closed the connection");
        held += n;
        let whole = held / 8 * 8;
        for pong in buf[..whole].chunks(8) {
            assert_eq!(pong, [4, 0, 0, 0, 5, 0, 1, 0], "a Pong for ping 1");
        }
        pongs += whole / 8;
        buf.copy_within(whole..held, 0);
        held -= whole;
        if let Ok(n) = sent_rx.try_recv() {
            total = Some(n);
        }
    }
    flooder.join().unwrap();
    assert!(
        blocked,
        "the server read all {FLOOD} bytes of Pings ({read_while_flooded} read) while the peer read nothing"
    );
    assert!(
        read_while_flooded < FLOOD as u64 / 4,
        "{read_while_flooded} bytes read while the peer read nothing"
    );
    zserver::block_on(server.shutdown());
}

/// A plain (trusted-link) server with `router`, and a raw socket to it past the preambles.
fn plain_server_and_raw_peer(router: Router) -> (zserver::Server, std::net::TcpStream) {
    plain_server_with_config_and_raw_peer(router, zserver::Config::plain_trusted_link())
}

/// The same, with the server's `config`.
fn plain_server_with_config_and_raw_peer(
    router: Router,
    config: zserver::Config,
) -> (zserver::Server, std::net::TcpStream) {
    let server = zserver::block_on(
        zserver::server()
            .router(router)
            .config(config)
            .bind("127.0.0.1:0"),
    )
    .unwrap();
    let mut sock = std::net::TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"ZSRV\x01\x00\x00\x00").unwrap();
    let mut preamble = [0u8; 8];
    sock.read_exact(&mut preamble).unwrap();
    (server, sock)
}

every_backend!(the_python_client_of_protocol_md_makes_a_call);
/// docs/PROTOCOL.md §9: the minimal Python client, run exactly as the document prints it
/// (only its port changed), makes a call against a plain server. Skipped, saying so, where
/// there is no `python3`.
fn the_python_client_of_protocol_md_makes_a_call() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let start = doc
        .find("```python\n")
        .expect("a python block in PROTOCOL.md")
        + 10;
    let code = &doc[start..start + doc[start..].find("```").expect("its end")];
    let router = Router::new().bytes("echo", |_ctx, b| async move { Ok(b) });
    let (server, sock) = plain_server_and_raw_peer(router);
    drop(sock);
    let at = r#"("127.0.0.1", 7000)"#;
    assert!(code.contains(at), "the block connects to {at}");
    let code = code.replace(
        at,
        &format!(r#"("127.0.0.1", {})"#, server.local_addr().port()),
    );
    crate::common::bounded(move || {
        let output = match std::process::Command::new("python3")
            .arg("-c")
            .arg(&code)
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("python3 not found: the PROTOCOL.md client was not run");
                return;
            }
            other => other.expect("run python3"),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "python3 failed: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "(2, 1, '', b'hi')",
            "what the document says it prints"
        );
    });
    zserver::block_on(server.shutdown());
}
