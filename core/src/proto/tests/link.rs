//! Rekeying on an encrypted pair, by time, bytes and records: both sides keep talking.

use std::time::Duration;

use super::*;

fn policy() -> RekeyPolicy {
    RekeyPolicy {
        bytes: u64::MAX,
        records: u64::MAX,
        interval: Duration::from_secs(3600),
    }
}

/// Ten echo calls each way, `between` apart; returns (a's rekeys out, b's rekeys in).
fn talk(pair: &mut Pair, between: Duration) -> (u64, u64) {
    for n in 0..10u8 {
        let payload = vec![n; 500];
        let from_a = pair.a.call("echo", &payload, None);
        let from_b = pair.b.call("echo", &payload, None);
        pair.drive();
        assert_eq!(taken(&from_a), Some(bytes(&payload)), "call {n} from a");
        assert_eq!(taken(&from_b), Some(bytes(&payload)), "call {n} from b");
        pair.run_for(between);
    }
    assert!(pair.a.failed.is_none() && pair.b.failed.is_none());
    (pair.a.stats().rekeys_out, pair.b.stats().rekeys_in)
}

#[test]
fn rekeys_by_time() {
    let limits = limits();
    let mut pair = Pair::encrypted(
        limits,
        RekeyPolicy {
            interval: Duration::from_secs(10),
            ..policy()
        },
    );
    let (out, seen) = talk(&mut pair, Duration::from_secs(4));
    // 40 s of talk under a 10 s key: a new key about every third call.
    assert!((3..=4).contains(&out), "{out} rekeys");
    assert_eq!(out, seen, "the peer follows every rekey");
}

#[test]
fn rekeys_by_bytes() {
    let mut pair = Pair::encrypted(
        limits(),
        RekeyPolicy {
            bytes: 2000,
            ..policy()
        },
    );
    let (out, seen) = talk(&mut pair, Duration::ZERO);
    // About 10 KB sent each way (calls and replies), 2,000 bytes per key.
    assert!((4..=5).contains(&out), "{out} rekeys");
    assert_eq!(out, seen);
}

#[test]
fn rekeys_by_records() {
    let mut pair = Pair::encrypted(
        limits(),
        RekeyPolicy {
            records: 3,
            ..policy()
        },
    );
    let (out, seen) = talk(&mut pair, Duration::ZERO);
    // 20 records from a (10 calls, 10 replies): a new key every 3.
    assert!((6..=7).contains(&out), "{out} rekeys");
    assert_eq!(out, seen);
    assert_eq!(pair.b.stats().rekeys_out, pair.a.stats().rekeys_in);
}

#[test]
fn without_rekeying_no_key_changes() {
    let mut pair = Pair::encrypted(limits(), policy());
    assert_eq!(talk(&mut pair, Duration::from_secs(1)), (0, 0));
}
