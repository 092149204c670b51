//! Memory a peer can make the server hold, seen from outside with real sockets: a frame or
//! record announced but not sent costs about what arrived, records are capped by
//! `max_frame`, a reconnect storm fits in the listen queue, and clients can choose their
//! source address. Hostile peers are written from docs/PROTOCOL.md (Noise via `snow`).
//! Runs unchanged on every back end.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zserver::{Config, Error, Server};

/// Peers in the partial-frame tests.
const PEERS: usize = 40;
/// Bytes each sends after its header.
const SENT: usize = 1000;
/// A whole default-sized frame, announced.
const ANNOUNCED: u32 = 4 * 1024 * 1024;

fn bind(config: Config) -> Server {
    zserver::block_on(zserver::server().config(config).bind("127.0.0.1:0")).unwrap()
}

/// A raw connection that has exchanged preambles (and, if `encrypted`, done the Noise XX
/// handshake as the initiator).
fn raw_peer(addr: SocketAddr, encrypted: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ours = [b'Z', b'S', b'R', b'V', 1, 0, u8::from(encrypted), 0];
    s.write_all(&ours).unwrap();
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs).unwrap();
    if encrypted {
        noise_initiator(&mut s, &[ours, theirs].concat());
    }
    s
}

/// Noise XX as the client: three messages, each a u16-le length and the message; the
/// prologue is both preambles, the client's first.
fn noise_initiator(s: &mut TcpStream, prologue: &[u8]) {
    const PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";
    let keys = snow::Builder::new(PARAMS.parse().unwrap())
        .generate_keypair()
        .unwrap();
    let mut hs = snow::Builder::new(PARAMS.parse().unwrap())
        .local_private_key(&keys.private)
        .and_then(|b| b.prologue(prologue))
        .and_then(|b| b.build_initiator())
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut out = [0u8; 1024];
    for step in 0..3 {
        if step == 1 {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let len = usize::from(u16::from_le_bytes(len));
            s.read_exact(&mut buf[..len]).unwrap();
            hs.read_message(&buf[..len], &mut out).unwrap();
        } else {
            let n = hs.write_message(&[], &mut buf[2..]).unwrap();
            buf[..2].copy_from_slice(&(n as u16).to_le_bytes());
            s.write_all(&buf[..2 + n]).unwrap();
        }
    }
    assert!(hs.is_handshake_finished());
}

/// Waits until the server has read `bytes` from its peers, in total.
fn until_read(server: &Server, bytes: u64) {
    let start = Instant::now();
    while server.stats().totals.bytes_in < bytes {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server read {} of {bytes} bytes",
            server.stats().totals.bytes_in
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `PEERS` peers each announce a 4 MiB frame (or record) and send 1,000 bytes of it: each
/// connection's read buffers stay within twice that plus a few KiB, where reserving for
/// what was announced would hold megabytes each.
fn partial_frames_hold_what_arrived(encrypted: bool) {
    let config = if encrypted {
        Config::default()
    } else {
        Config::plain_trusted_link()
    };
    let server = bind(config);
    let mut header = Vec::new();
    if encrypted {
        header.extend_from_slice(&(ANNOUNCED + 16).to_le_bytes());
        header.push(0); // a data record
    } else {
        header.extend_from_slice(&ANNOUNCED.to_le_bytes());
    }
    let peers: Vec<TcpStream> = (0..PEERS)
        .map(|_| {
            let mut s = raw_peer(server.local_addr(), encrypted);
            s.write_all(&header).unwrap();
            s.write_all(&[0x5A; SENT]).unwrap();
            s
        })
        .collect();
    until_read(&server, (PEERS * (header.len() + SENT)) as u64);
    std::thread::sleep(Duration::from_millis(50)); // let each reader reach its wait
    let conns = server.connections();
    assert_eq!(conns.len(), PEERS);
    for conn in &conns {
        let held = conn.stats().read_buffered;
        assert!(
            held > 0 && held <= 2 * (header.len() + SENT) as u64 + 4096,
            "a peer that sent {} bytes makes the server hold {held} bytes of read buffer",
            header.len() + SENT
        );
    }
    assert!(peers.iter().all(|p| p.peer_addr().is_ok()));
    drop(peers);
    zserver::block_on(server.shutdown());
}

#[test]
fn a_partial_frame_holds_what_arrived_not_what_was_announced() {
    partial_frames_hold_what_arrived(false);
}

#[test]
fn a_partial_record_holds_what_arrived_not_what_was_announced() {
    partial_frames_hold_what_arrived(true);
}

/// With `max_frame` at 64 KiB, a record header announcing more plaintext than the record
/// limit (`max(max_frame, 1 MiB) + 64 KiB`) closes the connection from its 5 bytes alone;
/// one at the limit is waited for.
#[test]
fn a_record_longer_than_max_frame_allows_is_refused_from_its_header() {
    let mut config = Config::default();
    config.max_frame = 64 * 1024;
    let server = bind(config);
    let limit = (1024 + 64) * 1024u32;
    let header = |plaintext: u32| {
        let mut h = (plaintext + 16).to_le_bytes().to_vec();
        h.push(0);
        h
    };
    let mut at_limit = raw_peer(server.local_addr(), true);
    at_limit.write_all(&header(limit)).unwrap();
    let mut over = raw_peer(server.local_addr(), true);
    over.write_all(&header(limit + 1)).unwrap();
    let mut rest = Vec::new();
    // The server closes (EOF or reset) without sending anything more.
    match over.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:02x?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    at_limit
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let waited = at_limit.read(&mut [0u8; 64]).unwrap_err();
    assert!(
        matches!(waited.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{waited}"
    );
    zserver::block_on(server.shutdown());
}

/// The listener's backlog takes a storm of connections the server has not accepted yet
/// (every client reconnecting at once): with the standard library's backlog of 128 (or
/// tokio's 1,024) the later SYNs would be dropped and those connects would stall.
#[test]
fn a_connect_storm_fits_in_the_listen_queue() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < 1_600 {
        eprintln!("net.core.somaxconn is {somaxconn}: too small to show the backlog; skipped");
        return;
    }
    let n = 1_500;
    zserver::block_on(async {
        let listener = zserver::default_transport()
            .listen("127.0.0.1:0".parse().unwrap())
            .await?;
        let addr = listener.local_addr()?;
        // Nothing accepts: every connection waits in the listen queue.
        let socks = std::thread::spawn(move || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
                .collect::<Result<Vec<_>, _>>()
        })
        .join()
        .unwrap()?;
        assert_eq!(socks.len(), n);
        drop(listener);
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// A client can choose its source address; the server sees it as the peer's.
#[test]
fn a_client_connects_from_the_address_it_binds() {
    zserver::block_on(async {
        let server = zserver::server().bind("127.0.0.1:0").await?;
        let local: SocketAddr = "127.0.0.3:0".parse().unwrap();
        let client = zserver::client()
            .bind(local)
            .connect(server.local_addr())
            .await?;
        let start = Instant::now();
        while server.connections().is_empty() && start.elapsed() < Duration::from_secs(10) {
            zserver::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.connections()[0].peer_addr().ip(), local.ip());
        client.connection().close().await;
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap();
}
