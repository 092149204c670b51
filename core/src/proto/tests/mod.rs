//! The pair harness: two [`Proto`] state machines wired together in memory and driven by a
//! simulated clock. No sockets, no sleeps, no runtime: every test is deterministic.

mod calls;
mod hostile;
mod link;
mod streams;
mod timers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Event, Keys, Limits, Proto, Transmit};
use crate::compression::CompressionCodec;
use crate::error::Error;
use crate::frame::{Header, Kind};
use crate::request::CallResult;
use crate::secure::cipher::{CipherState, Provider};
use crate::secure::record::{Opener, RekeyPolicy, Sealer};
use crate::stats::{Counters, Stats};

/// Default limits for a test side: heartbeat off unless a test turns it on.
fn limits() -> Limits {
    Limits {
        max_frame: 1 << 20,
        max_pending_write: 64 * 1024,
        heartbeat: None,
        idle_timeout: Duration::from_secs(60),
    }
}

/// A call's result, filled in by its callback.
type Slot = Arc<Mutex<Option<CallResult>>>;

/// One side: its state, its counters, the events the pair did not act on itself, and
/// whether it answers calls (echoing the payload; `"slow"` calls are held, not answered).
struct Side {
    proto: Proto,
    counters: Arc<Counters>,
    events: Vec<Event>,
    answers: bool,
    held: Vec<u64>,
    failed: Option<Error>,
}

impl Side {
    fn new(limits: Limits, keys: Option<Keys>, now: Instant) -> Self {
        Self::with_codec(limits, keys, None, now)
    }

    fn with_codec(
        limits: Limits,
        keys: Option<Keys>,
        codec: Option<Arc<dyn CompressionCodec>>,
        now: Instant,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        Self {
            proto: Proto::new(limits, keys, codec, counters.clone(), now),
            counters,
            events: Vec::new(),
            answers: true,
            held: Vec::new(),
            failed: None,
        }
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Acts on what came in: fires completed calls, answers requests, keeps the rest.
    fn act(&mut self) {
        while let Some(event) = self.proto.poll_event() {
            match event {
                Event::Completed(wake) => wake.fire(),
                Event::Request(frame) if frame.kind == Kind::Call && self.answers => {
                    if frame.command() == "slow" {
                        self.held.push(frame.id);
                    } else {
                        let header = reply(frame.id);
                        self.proto.queue(&header, &frame.payload).unwrap();
                    }
                }
                Event::Failed(e) => self.failed = Some(e),
                other => self.events.push(other),
            }
        }
    }

    /// Starts a call whose result lands in the returned slot.
    fn call(&mut self, command: &str, payload: &[u8], deadline: Option<Instant>) -> Slot {
        let slot: Slot = Arc::default();
        let s = slot.clone();
        let id = self
            .proto
            .requests()
            .start_callback(Box::new(move |r| *s.lock().unwrap() = Some(r)), deadline)
            .unwrap();
        let header = Header {
            kind: Kind::Call,
            flags: 0,
            id,
            command,
        };
        if let Err(e) = self.proto.queue(&header, payload) {
            self.proto.requests().cancel(id);
            *slot.lock().unwrap() = Some(Err(e));
        }
        slot
    }
}

fn reply(id: u64) -> Header<'static> {
    Header {
        kind: Kind::Reply,
        flags: 0,
        id,
        command: "",
    }
}

/// Two sides and the clock. `a` is the client, `b` the server; bytes move only when the
/// pair is driven, and not at all toward a side that is cut off.
struct Pair {
    now: Instant,
    a: Side,
    b: Side,
    /// While set, what `a` sends is lost (a silent peer, from `a`'s point of view:
    /// `b` hears nothing and so answers nothing).
    cut: bool,
    wire: Transmit,
    /// Every byte `a` wrote, in order (to replay or inspect).
    a_wrote: Vec<u8>,
}

impl Pair {
    fn plain(a: Limits, b: Limits) -> Self {
        let now = Instant::now();
        Self::with(now, Side::new(a, None, now), Side::new(b, None, now))
    }

    /// An encrypted pair with both directions rekeying by `policy`.
    fn encrypted(limits: Limits, policy: RekeyPolicy) -> Self {
        let now = Instant::now();
        let provider = Provider::all()[0];
        let keys = |send: u8, recv: u8| Keys {
            sealer: Sealer::new(CipherState::new(provider, [send; 32]), policy, now),
            opener: Opener::new(CipherState::new(provider, [recv; 32])),
        };
        let a = Side::new(limits, Some(keys(1, 2)), now);
        let b = Side::new(limits, Some(keys(2, 1)), now);
        Self::with(now, a, b)
    }

    fn with(now: Instant, a: Side, b: Side) -> Self {
        Self {
            now,
            a,
            b,
            cut: false,
            wire: Transmit::default(),
            a_wrote: Vec::new(),
        }
    }

    /// Moves bytes both ways and acts on events until nothing moves.
    fn drive(&mut self) {
        for _ in 0..1000 {
            self.a.act();
            self.b.act();
            let mut moved = false;
            let mut bytes = Vec::new();
            if self.a.proto.poll_transmit(self.now, &mut self.wire) {
                self.wire.drain_into(&mut bytes);
                self.a_wrote.extend_from_slice(&bytes);
                if !self.cut {
                    self.b.proto.handle_input(self.now, &bytes);
                }
                moved = true;
            }
            bytes.clear();
            if self.b.proto.poll_transmit(self.now, &mut self.wire) {
                self.wire.drain_into(&mut bytes);
                if !self.cut {
                    self.a.proto.handle_input(self.now, &bytes);
                }
                moved = true;
            }
            self.a.act();
            self.b.act();
            if !moved {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    /// The earlier of the two sides' next deadlines.
    fn next_timeout(&self) -> Option<Instant> {
        match (self.a.proto.poll_timeout(), self.b.proto.poll_timeout()) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// Runs the clock to `until`, stopping at every deadline on the way (as a driver's one
    /// timer would) and driving the pair after each.
    fn run_until(&mut self, until: Instant) {
        self.drive();
        while let Some(at) = self.next_timeout().filter(|&at| at <= until) {
            self.now = self.now.max(at);
            for side in [&mut self.a, &mut self.b] {
                if side.proto.poll_timeout().is_some_and(|t| t <= self.now) {
                    side.proto.handle_timeout(self.now);
                }
            }
            self.drive();
        }
        self.now = until;
        self.drive();
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }
}

fn taken(slot: &Slot) -> Option<CallResult> {
    slot.lock().unwrap().clone()
}

fn bytes(b: &[u8]) -> CallResult {
    Ok(Bytes::copy_from_slice(b))
}
