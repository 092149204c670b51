//! Sealing and opening records with each AES-256-GCM provider: one 64 KiB record (bulk),
//! and a write batch of 64 small frames sealed as one record (pipelined calls).
#![allow(missing_docs)] // criterion_group! makes an undocumented `pub fn`

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use zserver_core::internal::cipher::{CipherState, Provider};
use zserver_core::internal::record::{Opener, RekeyPolicy, Sealer, MAX_RECORD_PLAINTEXT};

fn sealer(p: Provider) -> Sealer {
    Sealer::new(
        CipherState::new(p, [1; 32]),
        RekeyPolicy::default(),
        Instant::now(),
    )
}

fn bench_records(c: &mut Criterion) {
    let sizes = [
        ("record_64KiB", MAX_RECORD_PLAINTEXT),
        ("batch_64x70B", 64 * 70),
    ];
    for (name, size) in sizes {
        let mut group = c.benchmark_group(format!("seal/{name}"));
        group.throughput(Throughput::Bytes(size as u64));
        let plain = vec![0x5a_u8; size];
        for p in Provider::all() {
            let mut s = sealer(p);
            let mut out = BytesMut::with_capacity(size + 64);
            group.bench_function(BenchmarkId::from_parameter(p.name()), |b| {
                b.iter(|| {
                    out.clear();
                    s.seal(black_box(&plain), &mut out, Instant::now());
                    black_box(out.len())
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("open/{name}"));
        group.throughput(Throughput::Bytes(size as u64));
        for p in Provider::all() {
            group.bench_function(BenchmarkId::from_parameter(p.name()), |b| {
                b.iter_custom(|iters| {
                    // Seal in bounded batches (untimed), then time opening each batch.
                    let mut s = sealer(p);
                    let mut o = Opener::new(CipherState::new(p, [1; 32]));
                    let (mut records, mut out) = (BytesMut::new(), BytesMut::new());
                    let mut timed = std::time::Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(256);
                        left -= n;
                        records.clear();
                        for _ in 0..n {
                            s.seal(&plain, &mut records, Instant::now());
                        }
                        out.clear();
                        let start = Instant::now();
                        o.open(&mut records, &mut out).expect("records open");
                        timed += start.elapsed();
                        black_box(out.len());
                    }
                    timed
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_records);
criterion_main!(benches);
