//! Payload codec micro-benchmarks: the built-in LZ4 codec on compressible text and on
//! incompressible bytes (what a sender pays before it falls back to the raw payload).
//!
//! `cargo bench -p zserver-core --bench codec`
#![allow(missing_docs)] // criterion_group! makes an undocumented `pub fn`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zserver_core::compression::{CompressionCodec, Lz4};
use zserver_core::internal::frame::DEFAULT_MAX_FRAME;

fn text(len: usize) -> Vec<u8> {
    b"{\"user\":\"ann\",\"score\":1234,\"items\":[1,2,3],\"note\":\"hello zserver\"} "
        .iter()
        .cycle()
        .take(len)
        .copied()
        .collect()
}

fn noise(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(1);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn lz4(c: &mut Criterion) {
    for (name, input) in [
        ("text/4KiB", text(4 * 1024)),
        ("text/64KiB", text(64 * 1024)),
        ("random/64KiB", noise(64 * 1024)),
    ] {
        let mut g = c.benchmark_group(format!("lz4/{name}"));
        g.throughput(Throughput::Bytes(input.len() as u64));
        let mut packed = Vec::new();
        Lz4.encode(&input, &mut packed).unwrap();
        g.bench_function("encode", |b| {
            let mut out = Vec::with_capacity(packed.len() * 2);
            b.iter(|| {
                out.clear();
                Lz4.encode(black_box(&input), &mut out).unwrap();
                black_box(out.len())
            })
        });
        g.bench_function("decode", |b| {
            let mut out = Vec::with_capacity(input.len());
            b.iter(|| {
                out.clear();
                Lz4.decode(black_box(&packed), DEFAULT_MAX_FRAME, &mut out)
                    .unwrap();
                black_box(out.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, lz4);
criterion_main!(benches);
