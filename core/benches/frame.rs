//! Framing micro-benchmarks: encoding and decoding call frames, small and large.
//!
//! `cargo bench -p zserver-core --bench frame`
#![allow(missing_docs)] // criterion_group! makes an undocumented `pub fn`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use zserver_core::internal::frame::{encode, FrameDecoder, Header, Kind, DEFAULT_MAX_FRAME};

fn call(id: u64) -> Header<'static> {
    Header {
        kind: Kind::Call,
        flags: 0,
        id,
        command: "echo",
    }
}

/// `count` call frames of `payload_len` bytes each, back to back, as they arrive on the wire.
fn wire(count: usize, payload_len: usize) -> Bytes {
    let payload = vec![0xA5u8; payload_len];
    let mut out = BytesMut::new();
    for i in 0..count {
        encode(
            &mut out,
            &call(1000 + i as u64),
            &payload,
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
    }
    out.freeze()
}

fn small(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/64B");
    let payload = [0xA5u8; 64];

    g.throughput(Throughput::Elements(1));
    let mut out = BytesMut::with_capacity(4096);
    let mut id = 1u64;
    g.bench_function("encode_call_reused_buf", |b| {
        b.iter(|| {
            out.clear();
            id = id.wrapping_add(1);
            encode(&mut out, &call(id), black_box(&payload), DEFAULT_MAX_FRAME).unwrap();
            black_box(out.len());
        })
    });

    // 64 frames into one buffer, as the connection's outbox coalesces them.
    g.throughput(Throughput::Elements(64));
    let mut out = BytesMut::with_capacity(64 * 128);
    g.bench_function("encode_64_calls_batched", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..64u64 {
                encode(
                    &mut out,
                    &call(i + 1),
                    black_box(&payload),
                    DEFAULT_MAX_FRAME,
                )
                .unwrap();
            }
            black_box(out.len());
        })
    });

    let bytes = wire(64, 64);
    let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    g.bench_function("decode_64_calls", |b| {
        b.iter_batched(
            || BytesMut::from(&bytes[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    n += f.payload.len();
                    black_box(&f);
                }
                assert_eq!(n, 64 * 64);
                buf
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn large(c: &mut Criterion) {
    const LEN: usize = 64 * 1024;
    let mut g = c.benchmark_group("frame/64KiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    let payload = vec![0xA5u8; LEN];
    let mut out = BytesMut::with_capacity(LEN + 64);
    g.bench_function("encode_reused_buf", |b| {
        b.iter(|| {
            out.clear();
            encode(&mut out, &call(7), black_box(&payload), DEFAULT_MAX_FRAME).unwrap();
            black_box(out.len());
        })
    });

    let bytes = wire(1, LEN);
    let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    g.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&bytes[..]),
            |mut buf| {
                let f = dec.decode(&mut buf).unwrap().unwrap();
                assert_eq!(f.payload.len(), LEN);
                f
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, small, large);
criterion_main!(benches);
