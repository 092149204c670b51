//! Storing one push for many offline users: one transaction for all of them
//! (`Store::queue_for_many`) against one transaction each (`Store::queue_message`), on the
//! embedded SQLite store (WAL, `synchronous=FULL`: each commit waits for the disk).
//!
//! `cargo bench -p zserver-login --bench store`
#![allow(missing_docs)] // criterion_group! makes an undocumented `pub fn`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zserver_login::Store;

fn offline_push(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let users: Vec<String> = (0..100).map(|i| format!("user{i}")).collect();
    for user in &users {
        store.add_user(user, "pw").unwrap();
    }
    let mut g = c.benchmark_group("store a push for 100 offline users");
    g.throughput(Throughput::Elements(users.len() as u64));
    g.sample_size(20);
    g.bench_function("one transaction", |b| {
        b.iter(|| store.queue_for_many(&users, "ann", "hello").unwrap())
    });
    g.bench_function("a transaction each", |b| {
        b.iter(|| {
            for user in &users {
                store.queue_message(user, "ann", "hello").unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, offline_push);
criterion_main!(benches);
