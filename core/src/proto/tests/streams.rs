//! Streams through the pair: credit bounds what a sender queues and consumption refills
//! it, a hostile sender past its credit breaks the protocol, `Stop` reaches the sender,
//! data for unknown streams draws one `Stop`, and closing fails every stream.

use std::task::{Context, Poll, Waker};

use super::*;
use crate::compression::Lz4;
use crate::proto::streams::{lock, Dir, Inbound, Key, Next, INITIAL_WINDOW};
use crate::proto::{stream_header, Packed, Packer};

const UP: Key = (Dir::Upload, 1);
const CHUNK: usize = 64 * 1024;

/// `a` sends stream `UP`, `b` receives it with a window of `window` bytes.
fn streaming(pair: &mut Pair, window: u64) -> Arc<Mutex<Inbound>> {
    pair.a.proto.streams().open_outgoing(UP).unwrap();
    pair.b.proto.streams().open_incoming(UP, window).unwrap()
}

/// `data` packed as a `Data` frame of `key`, not compressed.
fn plain<'a>(key: Key, data: &'a [u8]) -> Packed<'a> {
    Packed::plain(stream_header(Kind::Data, key), data)
}

/// Queues one chunk of `UP` on `a`, as the stream's pump would.
fn send(pair: &mut Pair, data: &[u8]) -> Result<(), Error> {
    pair.a.proto.queue_stream_data(UP, &plain(UP, data))
}

/// Takes whatever the receiver has buffered; returns the bytes consumed.
fn consume(stream: &Arc<Mutex<Inbound>>) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    while let Poll::Ready(Next::Chunk(chunk)) = lock(stream).poll_next(&mut cx) {
        n += chunk.len() as u64;
    }
    n
}

#[test]
fn credit_bounds_what_a_sender_queues_and_consumption_refills_it() {
    let mut pair = Pair::plain(limits(), limits());
    let inbound = streaming(&mut pair, INITIAL_WINDOW);
    let chunk = vec![7u8; CHUNK];
    for _ in 0..INITIAL_WINDOW as usize / CHUNK {
        send(&mut pair, &chunk).unwrap();
    }
    // The initial window is spent: the next chunk is refused and nothing is queued.
    let pending = pair.a.proto.pending();
    assert!(matches!(send(&mut pair, &chunk), Err(Error::Protocol(_))));
    assert_eq!(pair.a.proto.pending(), pending);
    pair.drive();
    assert_eq!(lock(&inbound).buffered(), INITIAL_WINDOW);
    // Half a window consumed: the receiver grants exactly that, and the sender may send
    // that much more, no more.
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..2 {
        assert!(matches!(
            lock(&inbound).poll_next(&mut cx),
            Poll::Ready(Next::Chunk(_))
        ));
    }
    pair.b.proto.grant_credit(UP);
    pair.drive();
    send(&mut pair, &chunk).unwrap();
    send(&mut pair, &chunk).unwrap();
    assert!(send(&mut pair, b"x").is_err());
    pair.drive();
    assert!(pair.b.failed.is_none(), "{:?}", pair.b.failed);
    assert_eq!(consume(&inbound), 4 * CHUNK as u64);
}

#[test]
fn credit_is_granted_only_when_half_a_window_is_free() {
    let mut pair = Pair::plain(limits(), limits());
    let inbound = streaming(&mut pair, INITIAL_WINDOW);
    send(&mut pair, &vec![1u8; CHUNK]).unwrap();
    pair.drive();
    consume(&inbound);
    // A quarter of the window consumed: no `Credit` frame is worth sending yet.
    pair.b.proto.grant_credit(UP);
    assert_eq!(pair.b.proto.pending(), 0);
    send(&mut pair, &vec![1u8; CHUNK]).unwrap();
    pair.drive();
    consume(&inbound);
    pair.b.proto.grant_credit(UP);
    assert!(pair.b.proto.pending() > 0);
    pair.drive();
    // The sender has its whole window again.
    for _ in 0..INITIAL_WINDOW as usize / CHUNK {
        send(&mut pair, &vec![1u8; CHUNK]).unwrap();
    }
    assert!(send(&mut pair, b"x").is_err());
}

#[test]
fn a_hostile_sender_past_its_credit_breaks_the_protocol() {
    let mut pair = Pair::plain(limits(), limits());
    let inbound = streaming(&mut pair, INITIAL_WINDOW);
    // The sender's own state would refuse this: queue the frames around it.
    let header = stream_header(Kind::Data, UP);
    for _ in 0..INITIAL_WINDOW as usize / CHUNK {
        pair.a.proto.queue(&header, &vec![0u8; CHUNK]).unwrap();
    }
    pair.a.proto.queue(&header, b"one too many").unwrap();
    pair.drive();
    assert!(
        matches!(&pair.b.failed, Some(Error::Protocol(m)) if m.contains("window")),
        "{:?}",
        pair.b.failed
    );
    // What the receiver holds stays within the window it granted.
    assert_eq!(lock(&inbound).buffered(), INITIAL_WINDOW);
}

#[test]
fn stop_from_the_receiver_refuses_further_data_and_draws_no_second_stop() {
    let mut pair = Pair::plain(limits(), limits());
    let _inbound = streaming(&mut pair, INITIAL_WINDOW);
    send(&mut pair, b"first").unwrap();
    // Both in flight at once: the receiver stops while more data is on its way.
    pair.b.proto.finish_incoming(UP, true);
    send(&mut pair, b"second").unwrap();
    pair.drive();
    assert!(matches!(
        send(&mut pair, b"third"),
        Err(Error::StreamAborted(_))
    ));
    assert_eq!(
        pair.a.stats().frames_in,
        1,
        "one Stop, none for the data in flight"
    );
    assert!(pair.a.failed.is_none() && pair.b.failed.is_none());
    // The sender forgets it without an `Abort` (it was stopped, not cancelled: the
    // `Abort` goes out, and the receiver, which forgot the stream, ignores it).
    pair.a.proto.finish_outgoing(UP, Some("cancelled"));
    pair.drive();
    assert!(pair.b.failed.is_none());
    assert!(pair.a.proto.streams().outgoing(UP).is_none());
}

#[test]
fn data_for_an_unknown_stream_draws_one_stop_and_the_link_stays_up() {
    let mut pair = Pair::plain(limits(), limits());
    pair.a.proto.streams().open_outgoing(UP).unwrap();
    send(&mut pair, b"nobody").unwrap();
    send(&mut pair, b"listens").unwrap();
    pair.drive();
    assert!(matches!(
        send(&mut pair, b"more"),
        Err(Error::StreamAborted(_))
    ));
    assert_eq!(pair.a.stats().frames_in, 1, "one Stop for both frames");
    assert!(pair.a.failed.is_none() && pair.b.failed.is_none());
    let call = pair.a.call("echo", b"still up", None);
    pair.drive();
    assert_eq!(taken(&call), Some(bytes(b"still up")));
}

#[test]
fn the_end_delivers_the_hash_after_the_data_and_forgets_the_stream() {
    let mut pair = Pair::plain(limits(), limits());
    let inbound = streaming(&mut pair, INITIAL_WINDOW);
    send(&mut pair, b"all of it").unwrap();
    pair.a.proto.end_outgoing(UP, &[9; 32]);
    pair.drive();
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = lock(&inbound);
    assert!(
        matches!(got.poll_next(&mut cx), Poll::Ready(Next::Chunk(c)) if &c[..] == b"all of it")
    );
    assert!(matches!(got.poll_next(&mut cx), Poll::Ready(Next::End(h, 9)) if h == [9; 32]));
    drop(got);
    assert!(pair.b.proto.streams().incoming(UP).is_none());
    assert!(pair.a.proto.streams().outgoing(UP).is_none());
}

/// `shut` reaches the streams (what closing does to them is `Streams`' own test).
#[test]
fn shutting_fails_every_open_stream() {
    let mut pair = Pair::plain(limits(), limits());
    let inbound = streaming(&mut pair, INITIAL_WINDOW);
    drop(pair.b.proto.shut(Error::Closed));
    let mut cx = Context::from_waker(Waker::noop());
    let next = lock(&inbound).poll_next(&mut cx);
    assert!(matches!(next, Poll::Ready(Next::Failed(Error::Closed))));
    assert_eq!(pair.b.proto.streams().len(), 0);
}

#[test]
fn compressed_data_spends_and_is_granted_its_uncompressed_length() {
    let now = Instant::now();
    let lz4 = || Some(Arc::new(Lz4) as Arc<dyn CompressionCodec>);
    let a = Side::with_codec(limits(), None, lz4(), now);
    let b = Side::with_codec(limits(), None, lz4(), now);
    let mut pair = Pair::with(now, a, b);
    let inbound = streaming(&mut pair, INITIAL_WINDOW);
    let packer = Packer::new(lz4(), 0, limits().max_frame);
    let chunk = vec![b'z'; CHUNK];
    let mut scratch = Vec::new();
    let packed = packer
        .pack(&stream_header(Kind::Data, UP), &chunk, &mut scratch)
        .unwrap();
    assert!(packed.raw_len == Some(CHUNK) && packed.payload.len() < CHUNK / 10);
    for _ in 0..INITIAL_WINDOW as usize / CHUNK {
        pair.a.proto.queue_stream_data(UP, &packed).unwrap();
    }
    assert!(pair.a.proto.queue_stream_data(UP, &packed).is_err());
    pair.drive();
    assert!(pair.b.failed.is_none(), "{:?}", pair.b.failed);
    assert_eq!(lock(&inbound).buffered(), INITIAL_WINDOW);
    assert_eq!(consume(&inbound), INITIAL_WINDOW);
    assert_eq!(
        pair.b.stats().compressed_in,
        4 * packed.payload.len() as u64
    );
}
