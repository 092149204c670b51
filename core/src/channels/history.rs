//! One channel's history: the last publications, by count and age, each with its offset
//! (sans-IO: time is passed in, so tests drive it on a simulated clock).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{Position, Publication};

/// A publication kept in history.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) at: Instant,
    pub(crate) from: Arc<str>,
    pub(crate) data: Bytes,
}

impl Entry {
    /// Bytes this entry holds on the heap (its data; the name is shared).
    pub(crate) fn cost(&self) -> usize {
        self.data.len() + std::mem::size_of::<Entry>()
    }

    pub(crate) fn publication(&self) -> Publication {
        Publication {
            offset: self.offset,
            from: self.from.to_string(),
            data: self.data.to_vec(),
        }
    }
}

/// What a resubscription from a position gets back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Whether every publication after the position is in `entries`.
    pub(crate) recovered: bool,
    /// The publications after the position (empty unless recovered).
    pub(crate) entries: Vec<Entry>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset && self.data == other.data && self.from == other.from
    }
}

impl Eq for Entry {}

/// The history of one channel: offsets grow by one per publication, from 1, for as long as
/// the channel exists; `epoch` is drawn when it is created.
#[derive(Debug)]
pub(crate) struct History {
    epoch: u64,
    /// The offset of the last publication (0 before the first).
    top: u64,
    entries: VecDeque<Entry>,
    /// Bytes held by `entries` ([`Entry::cost`]).
    bytes: usize,
    size: usize,
    ttl: Option<Duration>,
}

impl History {
    /// An empty history keeping at most `size` publications, each for at most `ttl`.
    pub(crate) fn new(epoch: u64, size: usize, ttl: Option<Duration>) -> Self {
        Self {
            epoch,
            top: 0,
            entries: VecDeque::new(),
            bytes: 0,
            size,
            ttl,
        }
    }

    /// A history as a store gave it back: its epoch, last offset and newest `entries`.
    pub(crate) fn restore(
        epoch: u64,
        top: u64,
        entries: Vec<Entry>,
        size: usize,
        ttl: Option<Duration>,
    ) -> Self {
        let mut history = Self::new(epoch, size, ttl);
        history.top = top;
        for entry in entries.into_iter().filter(|e| e.offset <= top) {
            history.bytes += entry.cost();
            history.entries.push_back(entry);
        }
        while history.entries.len() > size {
            history.pop_oldest();
        }
        history
    }

    /// The offset the next publication will get.
    pub(crate) fn next_offset(&self) -> u64 {
        self.top + 1
    }

    /// The position of the last publication.
    pub(crate) fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.top,
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is kept (after `expire`).
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a publication at `now`, dropping what is over the size; returns its offset.
    pub(crate) fn push(&mut self, now: Instant, from: Arc<str>, data: Bytes) -> u64 {
        self.top += 1;
        let entry = Entry {
            offset: self.top,
            at: now,
            from,
            data,
        };
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.entries.len() > self.size {
            self.pop_oldest();
        }
        self.top
    }

    /// Drops the oldest publication; returns the bytes freed.
    pub(crate) fn pop_oldest(&mut self) -> usize {
        match self.entries.pop_front() {
            Some(entry) => {
                self.bytes -= entry.cost();
                entry.cost()
            }
            None => 0,
        }
    }

    /// Drops what is older than the age limit at `now`; returns the bytes freed.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let Some(ttl) = self.ttl else { return 0 };
        let mut freed = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > ttl)
        {
            freed += self.pop_oldest();
        }
        freed
    }

    /// Every publication after `since`, if the history still holds them all.
    pub(crate) fn recover(&self, since: Position) -> Recovery {
        let lost = Recovery {
            recovered: false,
            entries: Vec::new(),
        };
        if since.epoch != self.epoch || since.offset > self.top {
            return lost;
        }
        if since.offset == self.top {
            return Recovery {
                recovered: true,
                entries: Vec::new(),
            };
        }
        match self.entries.front() {
            Some(first) if first.offset <= since.offset + 1 => Recovery {
                recovered: true,
                entries: self.after(since.offset, usize::MAX),
            },
            _ => lost,
        }
    }

    /// Up to `limit` publications with offsets above `offset`, oldest first.
    pub(crate) fn after(&self, offset: u64, limit: usize) -> Vec<Entry> {
        let start = self.entries.partition_point(|e| e.offset <= offset);
        self.entries.range(start..).take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(h: &mut History, at: Instant, text: &'static str) -> u64 {
        h.push(at, Arc::from("ann"), Bytes::from_static(text.as_bytes()))
    }

    fn offsets(r: &Recovery) -> Vec<u64> {
        r.entries.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn offsets_count_from_one_and_recovery_returns_what_was_missed() {
        let t0 = Instant::now();
        let mut h = History::new(9, 3, None);
        assert_eq!(
            h.position(),
            Position {
                epoch: 9,
                offset: 0
            }
        );
        for (i, text) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(push(&mut h, t0, text), i as u64 + 1);
        }
        // Size 3: 2, 3 and 4 kept.
        let from_one = h.recover(Position {
            epoch: 9,
            offset: 1,
        });
        assert!(from_one.recovered);
        assert_eq!(offsets(&from_one), [2, 3, 4]);
        assert_eq!(
            offsets(&h.recover(Position {
                epoch: 9,
                offset: 3
            })),
            [4]
        );
        let now = h.recover(Position {
            epoch: 9,
            offset: 4,
        });
        assert!(now.recovered && now.entries.is_empty());
        // The gap is older than what is kept: publication 1 is gone.
        assert!(
            !h.recover(Position {
                epoch: 9,
                offset: 0
            })
            .recovered
        );
        // Another epoch, or a position from the future: not recovered.
        assert!(
            !h.recover(Position {
                epoch: 8,
                offset: 4
            })
            .recovered
        );
        assert!(
            !h.recover(Position {
                epoch: 9,
                offset: 5
            })
            .recovered
        );
    }

    #[test]
    fn publications_expire_by_age_on_the_clock_passed_in() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut h = History::new(1, 100, Some(ttl));
        push(&mut h, t0, "old");
        push(&mut h, t0 + Duration::from_secs(30), "newer");
        let held = h.bytes();
        assert_eq!(h.expire(t0 + ttl), 0, "exactly at the limit is still kept");
        let freed = h.expire(t0 + ttl + Duration::from_millis(1));
        assert!(freed > 0 && h.bytes() == held - freed);
        assert_eq!(
            offsets(&h.recover(Position {
                epoch: 1,
                offset: 1
            })),
            [2]
        );
        assert!(
            !h.recover(Position {
                epoch: 1,
                offset: 0
            })
            .recovered
        );
        h.expire(t0 + Duration::from_secs(91));
        assert!(h.is_empty() && h.bytes() == 0);
        // Offsets go on after everything expired.
        assert_eq!(push(&mut h, t0 + Duration::from_secs(100), "x"), 3);
    }

    #[test]
    fn a_restored_history_goes_on_from_its_top() {
        let t0 = Instant::now();
        let entry = |offset| Entry {
            offset,
            at: t0,
            from: Arc::from(""),
            data: Bytes::from_static(b"x"),
        };
        let mut h = History::restore(5, 9, vec![entry(7), entry(8), entry(9)], 2, None);
        assert_eq!(
            h.position(),
            Position {
                epoch: 5,
                offset: 9
            }
        );
        assert_eq!(
            offsets(&h.recover(Position {
                epoch: 5,
                offset: 7
            })),
            [8, 9]
        );
        assert!(
            !h.recover(Position {
                epoch: 5,
                offset: 6
            })
            .recovered,
            "7 was cut by the size"
        );
        assert_eq!(h.next_offset(), 10);
        assert_eq!(push(&mut h, t0, "y"), 10);
    }

    #[test]
    fn a_page_after_an_offset_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::new(1, 10, None);
        for _ in 0..6 {
            push(&mut h, t0, "x");
        }
        let page: Vec<u64> = h.after(2, 2).iter().map(|e| e.offset).collect();
        assert_eq!(page, [3, 4]);
        assert_eq!(h.after(0, 100).len(), 6);
        assert!(h.after(6, 100).is_empty());
    }
}
