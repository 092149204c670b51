//! Heartbeats, the idle time-out and call time-outs, on the simulated clock.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::*;

fn beating() -> Limits {
    Limits {
        heartbeat: Some(Duration::from_secs(1)),
        idle_timeout: Duration::from_secs(3),
        ..limits()
    }
}

#[test]
fn a_quiet_link_sends_heartbeats_and_the_pongs_keep_it_open() {
    let mut pair = Pair::plain(beating(), limits());
    let start = pair.now;
    assert_eq!(
        pair.a.proto.poll_timeout(),
        Some(start + Duration::from_secs(1))
    );
    pair.run_for(Duration::from_secs(10));
    // One ping a second of silence, each answered, so the idle time-out never comes.
    assert!(pair.a.failed.is_none(), "{:?}", pair.a.failed);
    let (a, b) = (pair.a.stats(), pair.b.stats());
    assert_eq!(a.frames_out, 10, "a ping per second");
    assert_eq!(b.frames_out, 10, "a pong per ping");
    assert_eq!(
        pair.a.proto.poll_timeout(),
        Some(start + Duration::from_secs(11))
    );
}

#[test]
fn a_silent_peer_is_closed_at_the_idle_time_out() {
    let mut pair = Pair::plain(beating(), limits());
    let start = pair.now;
    pair.cut = true;
    pair.run_for(Duration::from_millis(2999));
    assert!(pair.a.failed.is_none());
    assert_eq!(pair.a.stats().frames_out, 2, "pinged at 1 s and 2 s");
    pair.run_for(Duration::from_millis(1));
    assert_eq!(
        pair.a.failed,
        Some(Error::IdleTimeout(Duration::from_secs(3)))
    );
    assert_eq!(pair.now, start + Duration::from_secs(3));
    // Failed: no timer any more, and input is ignored.
    assert_eq!(pair.a.proto.poll_timeout(), None);
    assert!(pair.a.proto.is_closed());
}

#[test]
fn any_bytes_from_the_peer_reset_the_idle_clock() {
    let mut pair = Pair::plain(beating(), limits());
    for _ in 0..5 {
        pair.run_for(Duration::from_millis(2500));
        let slot = pair.b.call("echo", b"x", None);
        pair.drive();
        assert_eq!(taken(&slot), Some(bytes(b"x")));
    }
    assert!(pair.a.failed.is_none());
}

#[test]
fn a_callback_call_times_out_at_its_deadline_and_a_late_reply_is_dropped() {
    let mut pair = Pair::plain(limits(), limits());
    let deadline = pair.now + Duration::from_secs(5);
    let slot = pair.a.call("slow", b"?", Some(deadline));
    let fast = pair.a.call("echo", b"!", Some(deadline));
    pair.drive();
    assert_eq!(taken(&fast), Some(bytes(b"!")));
    assert_eq!(pair.a.proto.poll_timeout(), Some(deadline));
    pair.run_until(deadline - Duration::from_millis(1));
    assert_eq!(taken(&slot), None);
    pair.run_until(deadline);
    assert_eq!(taken(&slot), Some(Err(Error::Timeout)));
    assert_eq!(pair.a.proto.calls_in_flight(), 0);
    // The server answers at last: nothing is delivered twice, nothing breaks.
    let id = pair.b.held.pop().unwrap();
    pair.b.proto.queue(&reply(id), b"late").unwrap();
    pair.drive();
    assert_eq!(taken(&slot), Some(Err(Error::Timeout)));
    assert!(pair.a.failed.is_none());
    assert_eq!(pair.a.proto.poll_timeout(), None);
}

struct Flag(std::sync::atomic::AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn an_awaited_call_is_woken_with_its_time_out() {
    let mut pair = Pair::plain(limits(), limits());
    let flag = Arc::new(Flag(false.into()));
    let waker = Waker::from(flag.clone());
    let deadline = pair.now + Duration::from_secs(2);
    let id = pair
        .a
        .proto
        .requests()
        .start_waiting(Some(deadline), &waker)
        .unwrap();
    let header = Header {
        kind: Kind::Call,
        flags: 0,
        id,
        command: "slow",
    };
    pair.a.proto.queue(&header, b"").unwrap();
    pair.run_for(Duration::from_secs(3));
    assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
    let mut cx = Context::from_waker(&waker);
    assert_eq!(
        pair.a.proto.requests().poll(id, &mut cx),
        Poll::Ready(Err(Error::Timeout))
    );
}

#[test]
fn the_one_timer_is_the_earliest_of_calls_and_heartbeat() {
    let mut pair = Pair::plain(beating(), limits());
    let t0 = pair.now;
    let _late = pair.a.call("slow", b"", Some(t0 + Duration::from_secs(30)));
    assert_eq!(
        pair.a.proto.poll_timeout(),
        Some(t0 + Duration::from_secs(1))
    );
    let _soon = pair
        .a
        .call("slow", b"", Some(t0 + Duration::from_millis(300)));
    assert_eq!(
        pair.a.proto.poll_timeout(),
        Some(t0 + Duration::from_millis(300))
    );
}

/// A driver that waits before taking the next request (its peer is over its handler
/// limits) still fires its timer: the calls it expires are taken out of the events at
/// once, and the requests stay queued, in order, for later.
#[test]
fn calls_expire_while_the_driver_holds_back_requests() {
    let mut pair = Pair::plain(limits(), limits());
    pair.b.answers = false;
    let deadline = pair.now + Duration::from_secs(1);
    let mine = pair.b.call("slow", b"", Some(deadline));
    // Two requests from `a` reach `b`, which takes only the first.
    let mut wire = bytes::BytesMut::new();
    for n in [b"1", b"2"] {
        let header = Header {
            kind: Kind::Call,
            flags: 0,
            id: u64::from(n[0]),
            command: "req",
        };
        crate::frame::encode(&mut wire, &header, n, 1 << 20).unwrap();
    }
    pair.b.proto.handle_input(pair.now, &wire);
    let first = pair.b.proto.poll_event();
    assert!(matches!(first, Some(Event::Request(f)) if &f.payload[..] == b"1"));
    pair.now = deadline;
    pair.b.proto.handle_timeout(pair.now);
    let wakes = pair.b.proto.take_completed();
    assert_eq!(wakes.len(), 1);
    wakes.into_iter().for_each(crate::request::Wake::fire);
    assert_eq!(taken(&mine), Some(Err(Error::Timeout)));
    let second = pair.b.proto.poll_event();
    assert!(matches!(second, Some(Event::Request(f)) if &f.payload[..] == b"2"));
}
