//! Calls, sends and replies across the pair; `GoAway` and graceful close.

use super::*;

#[test]
fn calls_are_answered_in_any_order_and_sends_arrive_in_order() {
    let mut pair = Pair::plain(limits(), limits());
    let slow = pair.a.call("slow", b"1", None);
    let quick = pair.a.call("echo", b"2", None);
    for n in 0..3u8 {
        let header = Header {
            kind: Kind::Send,
            flags: 0,
            id: 0,
            command: "note",
        };
        pair.a.proto.queue(&header, &[n]).unwrap();
    }
    pair.drive();
    assert_eq!(taken(&quick), Some(bytes(b"2")));
    assert_eq!(taken(&slow), None);
    let sends: Vec<u8> = pair
        .b
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Request(f) if f.kind == Kind::Send => Some(f.payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(sends, [0, 1, 2]);
    let id = pair.b.held.pop().unwrap();
    pair.b.proto.queue(&reply(id), b"one").unwrap();
    pair.drive();
    assert_eq!(taken(&slow), Some(bytes(b"one")));
}

#[test]
fn go_away_lets_calls_in_flight_finish_and_refuses_new_ones() {
    let mut pair = Pair::plain(limits(), limits());
    let in_flight = pair.a.call("slow", b"", None);
    pair.drive();
    pair.b.proto.go_away();
    pair.drive();
    assert!(pair.a.proto.peer_going_away());
    assert!(pair
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::PeerGoingAway)));
    let refused = pair.a.call("echo", b"new", None);
    pair.drive();
    assert_eq!(taken(&refused), Some(Err(Error::ShuttingDown)));
    // The call taken before GoAway is still answered.
    let id = pair.b.held.pop().unwrap();
    pair.b.proto.queue(&reply(id), b"done").unwrap();
    pair.drive();
    assert_eq!(taken(&in_flight), Some(bytes(b"done")));
}

#[test]
fn a_graceful_close_sends_what_is_queued_and_then_nothing() {
    let mut pair = Pair::plain(limits(), limits());
    let queued = pair.a.call("echo", b"last", None);
    pair.a.proto.close();
    assert!(pair.a.proto.is_closing());
    let after = pair.a.call("echo", b"too late", None);
    assert_eq!(taken(&after), Some(Err(Error::Closed)));
    pair.drive();
    // The queued call went out and its reply still comes in while closing.
    assert_eq!(taken(&queued), Some(bytes(b"last")));
    // Shut: waiting calls fail with the reason.
    let waiting = pair.b.call("slow", b"", None);
    let wakes = pair.b.proto.shut(Error::Closed);
    wakes.into_iter().for_each(crate::request::Wake::fire);
    assert_eq!(taken(&waiting), Some(Err(Error::Closed)));
}

#[test]
fn back_pressure_reports_a_full_queue_until_it_is_written() {
    let small = Limits {
        max_pending_write: 4096,
        ..limits()
    };
    let mut pair = Pair::plain(small, limits());
    let header = Header {
        kind: Kind::Send,
        flags: 0,
        id: 0,
        command: "bulk",
    };
    let mut sent = 0;
    while pair.a.proto.pending() < 4096 {
        pair.a.proto.queue(&header, &[7; 1000]).unwrap();
        sent += 1;
    }
    assert_eq!(sent, 5, "full past 4096 bytes: five frames of 1,011");
    assert!(!pair.a.proto.is_congested());
    while !pair.a.proto.is_congested() {
        pair.a.proto.queue(&header, &[7; 1000]).unwrap();
        sent += 1;
    }
    assert_eq!(sent, 9, "congested past twice the limit");
    pair.drive();
    assert_eq!(pair.a.proto.pending(), 0);
    assert!(!pair.a.proto.is_congested());
    assert_eq!(pair.b.events.len(), 9);
}

#[test]
fn frames_are_decoded_as_events_are_taken_and_the_end_comes_after_them() {
    let mut b = Side::new(limits(), None, Instant::now());
    let mut wire = bytes::BytesMut::new();
    for n in 0..3u8 {
        let header = Header {
            kind: Kind::Send,
            flags: 0,
            id: 0,
            command: "note",
        };
        crate::frame::encode(&mut wire, &header, &[n], 1 << 20).unwrap();
    }
    b.proto.handle_input(Instant::now(), &wire);
    b.proto.handle_eof();
    // A reader that stops taking events has decoded only what it took.
    assert!(matches!(b.proto.poll_event(), Some(Event::Request(f)) if f.payload[..] == [0]));
    assert_eq!(b.stats().frames_in, 1);
    b.act();
    assert_eq!(b.stats().frames_in, 3);
    assert_eq!(b.events.len(), 2, "the other two sends, then the end");
    assert_eq!(b.failed, Some(Error::Closed), "a clean end between frames");
}

#[test]
fn input_read_in_place_is_the_same_as_input_handed_in() {
    let mut pair = Pair::encrypted(limits(), RekeyPolicy::default());
    let slot = pair.a.call("echo", &[5; 3000], None);
    let mut wire = Transmit::default();
    assert!(pair.a.proto.poll_transmit(pair.now, &mut wire));
    let mut sealed = Vec::new();
    wire.drain_into(&mut sealed);
    // The server reads the record in two pieces straight into its lent buffer.
    let (first, rest) = sealed.split_at(1000);
    for (piece, room) in [(first, 4096), (rest, rest.len())] {
        let (mut buf, start) = pair.b.proto.lend_input(room);
        buf[start..start + piece.len()].copy_from_slice(piece);
        pair.b.proto.handle_read(pair.now, buf, start, piece.len());
        assert!(pair.b.proto.read_buffered() < 3 * 4096 + 3000);
    }
    pair.drive();
    assert!(pair.b.failed.is_none(), "{:?}", pair.b.failed);
    assert_eq!(pair.b.stats().frames_in, 1);
    assert_eq!(taken(&slot).map(|r| r.map(|b| b.len())), Some(Ok(3000)));
}
