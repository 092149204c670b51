//! Fuzz targets, shared by the `cargo fuzz` harness in `fuzz/` and by the test that replays
//! the committed corpus on stable Rust (`core/tests/fuzz_corpus.rs`). Built only with the
//! `fuzzing` feature. Each target takes arbitrary bytes and must never panic, hang or
//! allocate without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::io::Cursor;

use crate::compression::{Compression, Lz4};
use crate::config::Config;
use crate::connection::driver::{Handshaken, Setup};
use crate::connection::{next_connection_id, Connection};
use crate::frame::{self, FrameDecoder, Header, PREAMBLE_LEN};
use crate::handler::{InFlight, Router};
use crate::runtime::{BoxFuture, Runtime};
use crate::secure::{Keypair, Negotiation, MAX_HANDSHAKE_MESSAGE};
use crate::stream::Outgoing;

/// Frames up to this size in the fuzz targets (small, so inputs reach the limit).
const FUZZ_MAX_FRAME: usize = 64 * 1024;

/// The frame decoder: whatever it accepts re-encodes to a frame that decodes the same.
pub fn frame_decoder(data: &[u8]) {
    let decoder = FrameDecoder::new(FUZZ_MAX_FRAME);
    let mut buf = BytesMut::from(data);
    let _ = decoder.bytes_wanted(&buf);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let header = Header {
            kind: frame.kind,
            flags: frame.flags,
            id: frame.id,
            command: frame.command(),
        };
        let mut again = BytesMut::new();
        if frame::encode(&mut again, &header, &frame.payload, FUZZ_MAX_FRAME).is_ok() {
            let back = decoder.decode(&mut again).ok().flatten();
            assert_eq!(
                back.as_ref(),
                Some(&frame),
                "re-encoded frame decodes the same"
            );
        }
    }
}

/// The header decoder (postcard), against the hand-written encoder.
pub fn header(data: &[u8]) {
    if let Ok((header, _rest)) = postcard::take_from_bytes::<Header<'_>>(data) {
        let mut out = BytesMut::new();
        if frame::encode(&mut out, &header, &[], usize::MAX).is_ok() {
            let encoded = &out[frame::LENGTH_PREFIX..];
            let back: Header<'_> = postcard::from_bytes(encoded).expect("own encoding decodes");
            assert_eq!(back, header);
        }
    }
}

fn server_keypair() -> &'static Keypair {
    static KEY: OnceLock<Keypair> = OnceLock::new();
    KEY.get_or_init(Keypair::generate)
}

/// A writer that accepts everything.
struct Sink;

impl futures_io::AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The negotiation settings a fuzz input asks for in its first byte: bit 0 plain (else
/// encrypted), bit 1 no codecs (else LZ4 and an application id offered); bits 2..8 the
/// size of the pieces the rest is fed in (0: all at once). Returns them and the rest.
fn negotiation_input(data: &[u8]) -> Option<(Config, usize, &[u8])> {
    let (&first, rest) = data.split_first()?;
    let mut config = if first & 1 != 0 {
        Config::plain_trusted_link()
    } else {
        Config::default()
    };
    if first & 2 == 0 {
        config.compression = Compression::lz4().with_arc(Arc::new(AppCodec));
    }
    let chunk = match usize::from(first >> 2) {
        0 => usize::MAX,
        n => n,
    };
    Some((config, chunk, rest))
}

/// An application codec id (never run: only its id is negotiated).
struct AppCodec;

impl crate::compression::CompressionCodec for AppCodec {
    fn id(&self) -> u8 {
        200
    }
    fn name(&self) -> &'static str {
        "app"
    }
    fn encode(&self, _: &[u8], _: &mut Vec<u8>) -> Result<(), crate::Error> {
        Err(crate::Error::Compression("not used".into()))
    }
    fn decode(&self, _: &[u8], _: usize, _: &mut Vec<u8>) -> Result<(), crate::Error> {
        Err(crate::Error::Compression("not used".into()))
    }
}

/// Feeds `peer` to `negotiation` in pieces of `chunk` bytes, taking what it sends after
/// each, and checks the machine's promises: it never uses more than it was given, uses
/// less only once finished (and then nothing more), gives its result once, keeps its
/// buffers within the protocol's limits, and once failed stays failed.
fn drive(mut negotiation: Negotiation<'_>, peer: &[u8], chunk: usize) {
    let now = std::time::Instant::now();
    let mut out = Vec::new();
    let mut finished = false;
    let mut failed = None;
    for piece in peer.chunks(chunk) {
        negotiation.poll_transmit(&mut out);
        assert!(out.len() <= 2 * PREAMBLE_LEN + 2 * 256 + 2 * MAX_HANDSHAKE_MESSAGE);
        out.clear();
        match negotiation.handle_input(now, piece) {
            Ok(used) => {
                assert!(failed.is_none(), "a failed negotiation took more input");
                assert!(used <= piece.len());
                if finished {
                    assert_eq!(used, 0, "input used after the end");
                } else if used < piece.len() {
                    negotiation.poll_transmit(&mut out);
                    assert!(
                        negotiation.poll_established().is_some(),
                        "input left over before the end"
                    );
                    finished = true;
                }
            }
            Err(e) => {
                if let Some(before) = &failed {
                    assert_eq!(before, &e, "a failure sticks");
                }
                failed = Some(e);
            }
        }
        if !finished && failed.is_none() {
            negotiation.poll_transmit(&mut out);
            if negotiation.poll_established().is_some() {
                finished = true;
            }
        }
        assert!(negotiation.wants() <= MAX_HANDSHAKE_MESSAGE);
    }
}

/// The server's side of the negotiation (preamble, codec lists, Noise XX as responder),
/// driven directly: the first byte picks the settings and the piece size
/// (`negotiation_input`), the rest is what the client sends.
pub fn negotiate_server(data: &[u8]) {
    if let Some((config, chunk, peer)) = negotiation_input(data) {
        drive(Negotiation::server(&config, server_keypair()), peer, chunk);
    }
}

/// The client's side of the negotiation (Noise XX as initiator), against a server that
/// sends the rest of `data` (settings and piece size as for [`negotiate_server`]).
pub fn negotiate_client(data: &[u8]) {
    if let Some((config, chunk, peer)) = negotiation_input(data) {
        drive(
            Negotiation::client(&config, client_keypair(), None),
            peer,
            chunk,
        );
    }
}

fn client_keypair() -> &'static Keypair {
    static KEY: OnceLock<Keypair> = OnceLock::new();
    KEY.get_or_init(Keypair::generate)
}

/// A single-threaded runtime for the dispatcher target: tasks run on one executor, timers
/// never fire (time-outs and heartbeats stay out of the way).
struct LocalRuntime(Arc<async_executor::Executor<'static>>);

impl Runtime for LocalRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.0.spawn(task).detach();
    }
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
    fn on_worker_thread(&self) -> bool {
        false
    }
}

fn fuzz_router() -> Router {
    Router::new()
        .bytes("echo", |_ctx, b| async move { Ok(b) })
        .console(
            "upper",
            |_ctx, t: String| async move { Ok(t.to_uppercase()) },
        )
        .call("add", |_ctx, (a, b): (i64, i64)| async move {
            Ok::<_, crate::Error>(a.wrapping_add(b))
        })
        .delayed("later", |_ctx, b, responder| responder.reply(b))
        .upload(
            "sink",
            |_ctx, body| async move { body.read_all(1 << 20).await },
        )
        .download("source", |_ctx, req| async move {
            Ok(Outgoing::bytes(vec![7u8; (req.offset % 300_000) as usize]))
        })
}

/// The command dispatcher: a plain connection whose peer sends `data` after a valid
/// preamble, with LZ4 negotiated (so compressed frames are decoded too). Every frame is
/// decoded and dispatched (calls, sends, replies, stream frames);
/// the connection must end cleanly when the input does.
pub fn dispatcher(data: &[u8]) {
    let mut config = Config::plain_trusted_link();
    config.max_frame = FUZZ_MAX_FRAME;
    config.heartbeat = None;
    config.compression = Compression::lz4();
    let mut input = frame::preamble(0).to_vec();
    input.extend_from_slice(data);
    let ex = Arc::new(async_executor::Executor::new());
    let runtime: Arc<dyn Runtime> = Arc::new(LocalRuntime(ex.clone()));
    let setup = Setup {
        id: next_connection_id(),
        runtime,
        router: Arc::new(fuzz_router()),
        config: Arc::new(config),
        in_flight: Arc::new(InFlight::default()),
        proxy: None,
        on_close: None,
    };
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("valid address");
    let mut read: crate::transport::BoxRead = Box::new(Cursor::new(input));
    let write: crate::transport::BoxWrite = Box::new(Sink);
    futures_lite::future::block_on(ex.run(async {
        let mut preamble = [0u8; PREAMBLE_LEN];
        futures_lite::io::AsyncReadExt::read_exact(&mut read, &mut preamble)
            .await
            .expect("the preamble is there");
        // LZ4 as if negotiated, so that compressed frames (flag 0x80) are decoded too.
        let shaken = Handshaken {
            secure: None,
            codec: Some(Arc::new(Lz4)),
        };
        let conn = Connection::start(setup, peer, read, write, shaken);
        // The input ends, so the connection closes; bound the run in polls, not time.
        let closed = conn.closed();
        let bounded = Bounded {
            inner: Box::pin(closed),
            polls: 0,
        };
        bounded.await;
    }));
    // Let every task the close woke run to its end: a task still pending after this is
    // stuck (and the sanitizer reports it as a leak, through the runtime it holds).
    let mut ticks = 0u32;
    while ex.try_tick() {
        ticks += 1;
        assert!(
            ticks < 1_000_000,
            "tasks keep running after the connection closed"
        );
    }
}

/// Completes when `inner` does, or after a large number of polls (a stuck target is a bug
/// the harness reports as a time-out; here it must not hang the replay test).
struct Bounded<F> {
    inner: Pin<Box<F>>,
    polls: u32,
}

impl<F: Future<Output = ()>> Future for Bounded<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls += 1;
        assert!(self.polls < 1_000_000, "the connection did not close");
        self.inner.as_mut().poll(cx)
    }
}

/// The stable-session hello and record decoders, and the replay buffer under whatever
/// acknowledgements and resume points a peer's records ask for.
pub fn stable_link(data: &[u8]) {
    use crate::stable::wire::{self, Answer, Open, Record};
    use crate::stable::Replay;

    if let Some(open) = data.get(..wire::OPEN_LEN) {
        let _ = Open::decode(open.try_into().expect("length checked"));
    }
    if let Some(answer) = data.get(..wire::ANSWER_LEN) {
        let _ = Answer::decode(answer.try_into().expect("length checked"));
    }
    let mut replay = Replay::default();
    replay.push(&[7u8; 1000]);
    replay.mark_sent(600);
    let mut at = 0;
    while let Ok(Some((record, used))) = wire::decode(&data[at..]) {
        assert!(
            used > 0 && at + used <= data.len(),
            "a record within the input"
        );
        match record {
            Record::Data(bytes) => assert!((1..=wire::MAX_CHUNK).contains(&bytes.len())),
            Record::Ack(n) => {
                let before = replay.acked();
                if replay.ack(n).is_ok() {
                    assert!(replay.acked() >= before && replay.acked() <= replay.written());
                } else {
                    assert_eq!(replay.acked(), before, "a refused ack changes nothing");
                }
            }
            Record::Fin => {
                // Use the next byte as a resume point: held bytes stay consistent.
                let point = u64::from(data.get(at + 1).copied().unwrap_or(0)) * 8;
                if replay.rewind(point).is_ok() {
                    assert_eq!(replay.acked(), point.min(1000));
                    replay.mark_sent(replay.unsent(usize::MAX).map_or(0, <[u8]>::len));
                }
            }
        }
        at += used;
    }
}

/// The protocol state machine itself, with no runtime: the input is a script of steps,
/// each a peer's bytes (`Proto::handle_input`), time
/// passing (`Proto::handle_timeout`), this side calling,
/// going away or closing, or acting on a stream (uploads 1 to 3 are open for the peer to
/// send, downloads 1 to 3 for this side to send: data, consuming and granting credit,
/// stopping, ending, aborting). The first byte picks the link: bit 0 encrypted (the peer's
/// bytes are sealed as it would, so frames get past authentication; bit 1 sends them raw
/// instead), bit 2 a heartbeat. Checks: no panic; input held stays bounded by what
/// arrived; no stream holds more than its window; the next deadline never lies in the
/// past after it was handled; after a failure nothing more comes out.
pub fn proto(data: &[u8]) {
    use crate::proto::streams::{Dir, INITIAL_WINDOW};
    use crate::proto::{Event, Keys, Limits, Proto, Transmit};
    use crate::secure::cipher::{CipherState, Provider};
    use crate::secure::record::{Opener, RekeyPolicy, Sealer};
    use crate::stats::Counters;
    use std::time::Instant;

    let Some((&mode, mut script)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let limits = Limits {
        max_frame: FUZZ_MAX_FRAME,
        max_pending_write: 16 * 1024,
        heartbeat: (mode & 4 != 0).then(|| Duration::from_secs(1)),
        idle_timeout: Duration::from_secs(5),
    };
    let policy = RekeyPolicy {
        bytes: 4096,
        records: 8,
        interval: Duration::from_secs(3),
    };
    let provider = Provider::all()[0];
    let encrypted = mode & 1 != 0;
    let keys = encrypted.then(|| Keys {
        sealer: Sealer::new(CipherState::new(provider, [1; 32]), policy, now),
        opener: Opener::new(CipherState::new(provider, [2; 32])),
    });
    // The peer's sealer, matching this side's opener.
    let mut peer = Sealer::new(CipherState::new(provider, [2; 32]), policy, now);
    let counters = Arc::new(Counters::default());
    let mut proto = Proto::new(limits, keys, Some(Arc::new(Lz4)), counters, now);
    let mut incoming = Vec::new();
    for id in 1..=3 {
        let key = (Dir::Upload, id);
        incoming.push(
            proto
                .streams()
                .open_incoming(key, 0)
                .expect("a fresh state"),
        );
        proto
            .streams()
            .open_outgoing((Dir::Download, id))
            .expect("a fresh state");
    }
    let mut wire = Transmit::default();
    let mut arrived = 0usize;
    let mut failed = false;
    while let [op, len, rest @ ..] = script {
        let len = usize::from(*len).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        script = tail;
        match op % 8 {
            0 | 4 => {
                if encrypted && mode & 2 == 0 && !chunk.is_empty() {
                    let mut sealed = BytesMut::new();
                    peer.seal(chunk, &mut sealed, now);
                    arrived += sealed.len();
                    proto.handle_input(now, &sealed);
                } else {
                    arrived += chunk.len();
                    proto.handle_input(now, chunk);
                }
            }
            1 | 5 => {
                now += Duration::from_millis(len as u64 * 50);
                proto.handle_timeout(now);
                if let Some(at) = proto.poll_timeout() {
                    assert!(at > now || failed, "a handled deadline is still due");
                }
            }
            2 | 6 => {
                let deadline = Some(now + Duration::from_millis(len as u64 * 20));
                if let Ok(id) = proto.requests().start_callback(Box::new(|_| {}), deadline) {
                    let header = Header {
                        kind: frame::Kind::Call,
                        flags: 0,
                        id,
                        command: "c",
                    };
                    if proto.queue(&header, chunk).is_err() {
                        proto.requests().cancel(id);
                    }
                }
            }
            3 if len % 2 == 0 => proto.go_away(),
            3 => proto.close(),
            _ => proto_stream_step(&mut proto, &incoming, len, chunk),
        }
        for stream in &incoming {
            let held = crate::proto::streams::lock(stream).buffered();
            assert!(held <= INITIAL_WINDOW, "a stream holds {held} bytes");
        }
        while let Some(event) = proto.poll_event() {
            assert!(!failed, "an event after the failure");
            match event {
                Event::Completed(wake) => wake.fire(),
                Event::Request(frame) if frame.kind == frame::Kind::Call => {
                    let header = Header {
                        kind: frame::Kind::Reply,
                        flags: 0,
                        id: frame.id,
                        command: "",
                    };
                    let _ = proto.queue(&header, &frame.payload);
                }
                Event::Failed(_) => failed = true,
                _ => {}
            }
        }
        if proto.poll_transmit(now, &mut wire) {
            assert!(!wire.is_empty());
            wire.clear(false);
        }
        // Between reads the input held is cut down to at most twice what it holds (and it
        // holds no more than arrived), whatever lengths the peer announced.
        proto.compact();
        assert!(
            proto.read_buffered() <= 2 * arrived + 8192,
            "{} bytes held for {arrived} received",
            proto.read_buffered()
        );
    }
    proto.handle_eof();
    while proto.poll_event().is_some() {}
}

/// One stream step of the [`proto`] target: `len` picks the action and the stream
/// (uploads 1 to 3 received, downloads 1 to 3 sent), `chunk` is the data sent.
fn proto_stream_step(
    proto: &mut crate::proto::Proto,
    incoming: &[Arc<std::sync::Mutex<crate::proto::streams::Inbound>>],
    len: usize,
    chunk: &[u8],
) {
    use crate::proto::streams::{lock, Dir, Next};
    use crate::proto::{stream_header, Packed};
    use std::task::Waker;

    let id = (len / 8 % 3) as u64 + 1;
    let (up, down) = ((Dir::Upload, id), (Dir::Download, id));
    match len % 8 {
        0 | 1 => {
            let packed = Packed::plain(stream_header(frame::Kind::Data, down), chunk);
            let _ = proto.queue_stream_data(down, &packed);
        }
        2 | 3 => {
            // The consumer takes what arrived, then the receiver grants credit.
            let mut cx = Context::from_waker(Waker::noop());
            let stream = &incoming[id as usize - 1];
            while let Poll::Ready(Next::Chunk(_)) = lock(stream).poll_next(&mut cx) {}
            proto.grant_credit(up);
        }
        4 => proto.finish_incoming(up, true),
        5 => proto.end_outgoing(down, &[0; crate::proto::streams::HASH_LEN]),
        6 => proto.finish_outgoing(down, Some("aborted")),
        _ => proto.finish_outgoing(down, None),
    }
}

/// The PROXY protocol header parser, and the server's reader over it: bytes as a trusted
/// proxy's connection starts.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy::{parse, Parsed, MAX_V1, MAX_V2_BODY};
    let whole = parse(data);
    if let Ok(Parsed::Complete { len, source }) = whole {
        assert!(len <= data.len() && len <= (16 + MAX_V2_BODY).max(MAX_V1));
        // The header alone parses the same; any shorter prefix of it is incomplete.
        assert_eq!(parse(&data[..len]), whole);
        for cut in [0, len / 2, len.saturating_sub(1)] {
            if cut < len {
                assert_eq!(parse(&data[..cut]), Ok(Parsed::Incomplete), "{cut}");
            }
        }
        // The reader hands on exactly the bytes after the header.
        let read: crate::transport::BoxRead = Box::new(Cursor::new(data.to_vec()));
        let (got, mut rest) =
            futures_lite::future::block_on(crate::proxy::read_header(read)).expect("a header");
        assert_eq!(got.map(|a| a.port()), source.map(|a| a.port()));
        let mut after = Vec::new();
        futures_lite::future::block_on(futures_lite::AsyncReadExt::read_to_end(
            &mut rest, &mut after,
        ))
        .expect("the rest");
        assert_eq!(after, &data[len..]);
    }
}
