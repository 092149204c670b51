//! The framing hot path allocates nothing per frame.
//!
//! A counting global allocator (counting only on the thread that asks, so the test
//! harness's own threads do not disturb it) checks that:
//!
//! - encoding frames into a `BytesMut` with enough capacity allocates nothing at all;
//! - decoding frames off a `BytesMut` allocates once per read buffer, not per frame:
//!   the first `split_to` turns the buffer's plain `Vec` storage into shared storage (one
//!   small allocation for the reference count); every later frame, with its command and
//!   payload `Bytes`, only bumps that reference count. Dropping the frames allocates nothing.

#![allow(unsafe_code)] // a counting global allocator needs it, and nothing else here

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use zserver_core::internal::frame::{encode, FrameDecoder, Header, Kind, DEFAULT_MAX_FRAME};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while running `f`.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCS.with(Cell::get);
    let out = f();
    (ALLOCS.with(Cell::get) - before, out)
}

const PAYLOAD: [u8; 64] = [0xA5; 64];

fn encode_n(out: &mut BytesMut, n: usize) {
    for i in 0..n {
        let header = Header {
            kind: Kind::Call,
            flags: 0,
            id: i as u64 + 1,
            command: "echo",
        };
        encode(out, &header, &PAYLOAD, DEFAULT_MAX_FRAME).unwrap();
    }
}

/// Encodes `n` frames, then counts the allocations made decoding them all and dropping them.
fn decode_allocations(n: usize) -> usize {
    let mut buf = BytesMut::with_capacity(n * 128);
    encode_n(&mut buf, n);
    let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let (count, frames) = allocations(|| {
        let mut frames = Vec::with_capacity(n);
        while let Some(frame) = dec.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
        frames
    });
    assert_eq!(frames.len(), n);
    assert!(frames
        .iter()
        .all(|f| f.command() == "echo" && f.payload[..] == PAYLOAD));
    let (dropping, ()) = allocations(|| drop(frames));
    assert_eq!(dropping, 0, "dropping decoded frames allocated");
    // `frames` was allocated (with_capacity) inside the closure: not the decoder's doing.
    count - 1
}

#[test]
fn encode_into_reserved_buffer_allocates_nothing() {
    let mut out = BytesMut::with_capacity(1000 * 128);
    let (count, ()) = allocations(|| encode_n(&mut out, 1000));
    assert_eq!(count, 0, "encoding 1000 frames allocated {count} times");
    assert!(out.len() > 1000 * 64);
    // A reused buffer (cleared between batches, as the connection's writer does) too.
    let (count, ()) = allocations(|| {
        for _ in 0..10 {
            out.clear();
            encode_n(&mut out, 1000);
        }
    });
    assert_eq!(
        count, 0,
        "re-encoding into a cleared buffer allocated {count} times"
    );
}

#[test]
fn decode_allocates_once_per_buffer_not_per_frame() {
    let one = decode_allocations(1);
    let thousand = decode_allocations(1000);
    eprintln!("decode allocations: 1 frame -> {one}, 1000 frames -> {thousand}");
    // What bytes does today: `split_to` promotes the Vec-backed buffer to shared storage
    // once (a single small allocation); later frames share it.
    assert!(one <= 1, "decoding 1 frame allocated {one} times");
    assert_eq!(
        thousand, one,
        "decoding 1000 frames allocated {thousand} times, 1 frame {one} times"
    );
}
