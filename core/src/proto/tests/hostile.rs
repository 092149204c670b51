//! Hostile bytes: garbage, an oversized frame announced, a frame announced and never sent,
//! broken records. Each closes with the right error, bounded in memory, without a panic.

use bytes::BytesMut;

use super::*;
use crate::frame;

/// A side fed `input` in one go; returns it after acting on its events.
fn fed(limits: Limits, input: &[u8]) -> Side {
    let mut side = Side::new(limits, None, Instant::now());
    side.proto.handle_input(Instant::now(), input);
    side.act();
    side
}

fn frame_bytes(header: &Header<'_>, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    frame::encode(&mut out, header, payload, usize::MAX).unwrap();
    out
}

#[test]
fn an_unknown_frame_kind_closes_with_a_protocol_error() {
    let mut bytes = frame_bytes(&reply(1), b"ok");
    bytes[4] = 0xee; // the kind byte
    let side = fed(limits(), &bytes);
    assert!(
        matches!(side.failed, Some(Error::Protocol(_))),
        "{:?}",
        side.failed
    );
    assert!(side.proto.is_closed());
    assert_eq!(
        side.proto.read_buffered(),
        0,
        "a failed connection holds no input"
    );
}

#[test]
fn an_oversized_frame_is_refused_from_its_length_alone() {
    let limits = limits();
    let mut announce = BytesMut::new();
    announce.extend_from_slice(&((limits.max_frame as u32) + 1).to_le_bytes());
    let side = fed(limits, &announce);
    assert!(
        matches!(side.failed, Some(Error::Protocol(_))),
        "{:?}",
        side.failed
    );
    assert!(side.proto.read_buffered() < 1024);
}

#[test]
fn a_frame_announced_but_not_sent_costs_what_arrived_not_what_was_announced() {
    let limits = Limits {
        max_frame: 4 << 20,
        ..limits()
    };
    let header = Header {
        kind: Kind::Call,
        flags: 0,
        id: 1,
        command: "upload",
    };
    let whole = frame_bytes(&header, &vec![0u8; (4 << 20) - 64]);
    let mut side = Side::new(limits, None, Instant::now());
    for chunk in whole[..1000].chunks(100) {
        side.proto.handle_input(Instant::now(), chunk);
    }
    side.act();
    assert!(side.failed.is_none());
    assert!(side.events.is_empty());
    let held = side.proto.read_buffered();
    assert!(
        held <= 2 * 1000 + 4096,
        "{held} bytes held for 1,000 received"
    );
    side.proto.compact();
    assert!(side.proto.read_buffered() <= held);
    // The peer hangs up inside the frame: an error, not a clean close.
    side.proto.handle_eof();
    side.act();
    assert!(matches!(side.failed, Some(Error::Protocol(_))));
}

#[test]
fn a_tampered_record_closes_with_an_auth_error_after_the_good_ones() {
    let mut pair = Pair::encrypted(limits(), RekeyPolicy::default());
    let first = pair.a.call("echo", b"one", None);
    pair.drive();
    assert_eq!(taken(&first), Some(bytes(b"one")));
    let _second = pair.a.call("echo", b"two", None);
    let mut wire = Transmit::default();
    assert!(pair.a.proto.poll_transmit(pair.now, &mut wire));
    let mut sealed = Vec::new();
    wire.drain_into(&mut sealed);
    let last = sealed.len() - 1;
    sealed[last] ^= 1; // a bit of the tag
    pair.b.proto.handle_input(pair.now, &sealed);
    pair.b.act();
    assert!(
        matches!(pair.b.failed, Some(Error::Auth(_))),
        "{:?}",
        pair.b.failed
    );
    assert_eq!(pair.b.stats().auth_failures, 1);
}

#[test]
fn an_impossible_record_length_is_refused_before_buffering() {
    let mut pair = Pair::encrypted(limits(), RekeyPolicy::default());
    let mut header = Vec::from(u32::MAX.to_le_bytes());
    header.push(0);
    pair.b.proto.handle_input(pair.now, &header);
    pair.b.act();
    assert!(
        matches!(pair.b.failed, Some(Error::Protocol(_))),
        "{:?}",
        pair.b.failed
    );
    assert!(pair.b.proto.read_buffered() < 1024);
}

#[test]
fn random_garbage_never_panics_and_stays_bounded() {
    // A small deterministic generator: the same garbage on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let mut side = Side::new(limits(), None, Instant::now());
        let now = Instant::now();
        for _ in 0..(next() % 8 + 1) {
            let len = (next() % 300) as usize;
            let chunk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            side.proto.handle_input(now, &chunk);
            side.act();
            side.proto.handle_timeout(now);
        }
        assert!(
            side.proto.read_buffered() <= 2 * 8 * 300 + 4096,
            "round {round}"
        );
    }
}
