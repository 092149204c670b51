//! Call metrics: incoming commands counted by kind, their errors by kind and error code,
//! and their durations in a fixed-bucket histogram, fed by a
//! [`Router::on_complete`](crate::Router::on_complete) hook.
//!
//! Nothing here costs anything until the hook is installed; with it, each completed command
//! costs a few relaxed atomic additions (no lock, no allocation). A monitoring exporter reads
//! [`CallMetrics::snapshot`] when scraped.
//!
//! ```
//! use std::sync::Arc;
//! use zserver_core::{metrics::CallMetrics, Router};
//! let metrics = Arc::new(CallMetrics::default());
//! let router = Router::new().on_complete(metrics.hook());
//! assert_eq!(metrics.snapshot().count, 0);
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorCode};
use crate::hooks::{CommandInfo, CommandKind};

/// Upper bounds of the duration histogram's buckets, in seconds (100 µs to 10 s; a last
/// `+Inf` bucket catches the rest).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The command kinds, in the order [`CallMetrics`] keeps them.
const KINDS: [CommandKind; 4] = [
    CommandKind::Call,
    CommandKind::Send,
    CommandKind::Upload,
    CommandKind::Download,
];

/// The error codes, in the order [`CallMetrics`] keeps them.
const CODES: [ErrorCode; 7] = [
    ErrorCode::Handler,
    ErrorCode::UnknownCommand,
    ErrorCode::BadRequest,
    ErrorCode::NoResponse,
    ErrorCode::ShuttingDown,
    ErrorCode::NoSuchObject,
    ErrorCode::Denied,
];

/// Live call metrics (relaxed atomics: each figure is exact, a snapshot is not atomic).
#[derive(Debug, Default)]
pub struct CallMetrics {
    calls: [AtomicU64; KINDS.len()],
    errors: [[AtomicU64; CODES.len()]; KINDS.len()],
    /// Per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A snapshot of [`CallMetrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSnapshot {
    /// Completed commands per kind (`call`, `send`, `upload`, `download`).
    pub calls: Vec<(&'static str, u64)>,
    /// Failed commands per kind and error code name (such as `handler`, `bad_request`,
    /// `denied`); only pairs that occurred.
    pub errors: Vec<(&'static str, &'static str, u64)>,
    /// Per bucket of [`DURATION_BUCKETS`] then `+Inf` (`f64::INFINITY`): the upper bound
    /// in seconds and the commands in that bucket alone (not cumulative).
    pub buckets: Vec<(f64, u64)>,
    /// Total of all durations, in seconds.
    pub sum_secs: f64,
    /// Commands measured (the sum of the buckets).
    pub count: u64,
}

/// A command kind's name in metrics: `call`, `send`, `upload` or `download`.
pub fn kind_name(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Call => "call",
        CommandKind::Send => "send",
        CommandKind::Upload => "upload",
        CommandKind::Download => "download",
    }
}

impl CallMetrics {
    /// Counts one completed command of `kind` that took `elapsed`.
    pub fn record(&self, kind: CommandKind, outcome: Result<(), &Error>, elapsed: Duration) {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        self.calls[k].fetch_add(1, Relaxed);
        if let Err(e) = outcome {
            let code = e.code();
            let c = CODES.iter().position(|x| *x == code).unwrap_or(0);
            self.errors[k][c].fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        let b = DURATION_BUCKETS.partition_point(|bound| *bound < secs);
        self.buckets[b].fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// A hook for [`Router::on_complete`](crate::Router::on_complete) that records every
    /// command the router's handlers complete.
    pub fn hook(
        self: &Arc<Self>,
    ) -> impl Fn(&CommandInfo<'_>, Result<(), &Error>, Duration) + Send + Sync + 'static {
        let metrics = self.clone();
        move |info, outcome, elapsed| metrics.record(info.kind(), outcome, elapsed)
    }

    /// The figures now.
    pub fn snapshot(&self) -> CallSnapshot {
        let calls = KINDS
            .iter()
            .zip(&self.calls)
            .map(|(k, n)| (kind_name(*k), n.load(Relaxed)))
            .collect();
        let mut errors = Vec::new();
        for (k, row) in KINDS.iter().zip(&self.errors) {
            for (c, n) in CODES.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    errors.push((kind_name(*k), c.name(), n));
                }
            }
        }
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Relaxed)))
            .collect();
        CallSnapshot {
            calls,
            errors,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_secs: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_kinds_errors_and_durations() {
        let m = CallMetrics::default();
        m.record(CommandKind::Call, Ok(()), Duration::from_micros(50));
        m.record(CommandKind::Call, Ok(()), Duration::from_millis(3));
        let denied = Error::Denied("no".into());
        m.record(CommandKind::Upload, Err(&denied), Duration::from_secs(60));
        let s = m.snapshot();
        assert_eq!(
            s.calls,
            vec![("call", 2), ("send", 0), ("upload", 1), ("download", 0)]
        );
        assert_eq!(s.errors, vec![("upload", "denied", 1)]);
        assert_eq!(s.count, 3);
        // 50 µs in the first bucket, 3 ms in the 5 ms one, a minute in +Inf.
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[5], (0.005, 1));
        assert_eq!(s.buckets[16], (f64::INFINITY, 1));
        assert!((s.sum_secs - 60.00305).abs() < 1e-9, "{}", s.sum_secs);
    }

    #[test]
    fn a_duration_on_a_bound_falls_in_that_bucket() {
        let m = CallMetrics::default();
        m.record(CommandKind::Send, Ok(()), Duration::from_millis(1));
        assert_eq!(m.snapshot().buckets[3], (0.001, 1));
    }
}
