//! `Stop` answers to `Data` for streams this side does not know (docs/PROTOCOL.md §5b),
//! bounded: a peer that sends such `Data` and never reads must not make the connection
//! queue an answer for each frame it sends.

use super::key::Key;

/// Streams remembered as stopped: more `Data` for them draws no second `Stop`. Enough for
/// the data in flight behind every stream a connection stops at once in ordinary use.
const RECENT: usize = 16;

/// Most `Stop`s one connection sends in answer to `Data` for unknown streams in its whole
/// life; past it, such `Data` is dropped unanswered. A `Stop` frame is at most 17 bytes,
/// so these answers never queue more than about 17 KiB, whatever the peer sends.
pub(crate) const MAX_STOP_ANSWERS: u32 = 1024;

/// Which `Data` for an unknown stream to answer with `Stop`: once per stream (until a
/// stream with its key opens again), and at most [`MAX_STOP_ANSWERS`] times in all.
#[derive(Debug)]
pub(crate) struct StopAnswers {
    /// Streams stopped lately, a ring of at most [`RECENT`] (allocated on the first).
    recent: Vec<Key>,
    /// The slot of `recent` to overwrite next once it is full.
    next: usize,
    /// Answers still allowed.
    left: u32,
}

impl Default for StopAnswers {
    fn default() -> Self {
        Self {
            recent: Vec::new(),
            next: 0,
            left: MAX_STOP_ANSWERS,
        }
    }
}

impl StopAnswers {
    /// `Data` arrived for `key`, which is not open: whether to answer it with `Stop`.
    pub(crate) fn answer(&mut self, key: Key) -> bool {
        if self.left == 0 || self.recent.contains(&key) {
            return false;
        }
        self.left -= 1;
        self.stopped(key);
        true
    }

    /// A `Stop` was sent for `key`: data still in flight for it draws no second one.
    pub(crate) fn stopped(&mut self, key: Key) {
        if self.recent.contains(&key) {
            return;
        }
        if self.recent.len() < RECENT {
            self.recent.push(key);
        } else {
            self.recent[self.next] = key;
            self.next = (self.next + 1) % RECENT;
        }
    }

    /// A stream opened with `key`: once it is gone, `Data` for it is answered again.
    pub(crate) fn reopened(&mut self, key: Key) {
        if let Some(i) = self.recent.iter().position(|k| *k == key) {
            self.recent.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Dir;

    #[test]
    fn one_answer_per_stream_until_it_opens_again() {
        let mut stops = StopAnswers::default();
        let key = (Dir::Upload, 9);
        assert!(stops.answer(key));
        assert!(!stops.answer(key), "a second Stop for the same stream");
        assert!(
            stops.answer((Dir::Download, 9)),
            "the other direction is another stream"
        );
        stops.reopened(key);
        assert!(stops.answer(key));
    }

    #[test]
    fn a_stream_stopped_by_this_side_is_not_answered() {
        let mut stops = StopAnswers::default();
        stops.stopped((Dir::Upload, 1));
        assert!(!stops.answer((Dir::Upload, 1)));
        assert_eq!(stops.left, MAX_STOP_ANSWERS);
    }

    #[test]
    fn answers_are_bounded_over_the_connections_life() {
        let mut stops = StopAnswers::default();
        let answered = (0..10 * u64::from(MAX_STOP_ANSWERS))
            .filter(|id| stops.answer((Dir::Upload, id % (2 * RECENT as u64))))
            .count();
        assert_eq!(answered, MAX_STOP_ANSWERS as usize);
        // Opening a stream again does not refund the budget.
        stops.reopened((Dir::Upload, 0));
        assert!(!stops.answer((Dir::Upload, 0)));
        assert!(stops.recent.len() <= RECENT);
    }
}
