//! Statistics: counters per connection and per server, readable at run time.

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// A snapshot of one connection's counters, or a sum of several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received, framing included.
    pub bytes_in: u64,
    /// Bytes sent, framing included.
    pub bytes_out: u64,
    /// Socket reads that returned data (many frames may arrive in one read).
    pub reads: u64,
    /// Socket writes of a coalesced batch (many frames may leave in one write).
    pub writes: u64,
    /// Calls and one-way sends received.
    pub calls_in: u64,
    /// Calls and one-way sends made.
    pub calls_out: u64,
    /// Error replies received, plus protocol errors seen.
    pub errors_in: u64,
    /// Error replies sent (handler errors, unknown commands, ...).
    pub errors_out: u64,
    /// Times the peer replaced its sending key (followed by this side).
    pub rekeys_in: u64,
    /// Times this side replaced its sending key.
    pub rekeys_out: u64,
    /// Encrypted records that failed authentication (each closes its connection).
    pub auth_failures: u64,
    /// Handlers that panicked (each failed its own call; the connection lived on).
    pub handler_panics: u64,
    /// Incoming calls and sends vetoed by a [`Router::on_execute`](crate::Router::on_execute)
    /// hook (their handlers did not run).
    pub commands_vetoed: u64,
    /// Hooks that panicked (caught; a veto hook's panic vetoes its command).
    pub hook_panics: u64,
    /// Payload bytes of the frames this side sent compressed, before compression
    /// ([`crate::compression`]).
    pub uncompressed_out: u64,
    /// The same payloads after compression: `uncompressed_out - compressed_out` bytes saved.
    pub compressed_out: u64,
    /// Payload bytes of compressed frames received, as they arrived.
    pub compressed_in: u64,
    /// The same payloads once decoded.
    pub uncompressed_in: u64,
    /// Bytes of read-buffer capacity the connection holds now: a gauge, 0 once closed (in
    /// `ServerStats::totals`, the sum over open connections). A frame in progress holds
    /// about twice what arrived of it, an idle connection none.
    pub read_buffered: u64,
}

impl AddAssign for Stats {
    fn add_assign(&mut self, o: Self) {
        self.frames_in += o.frames_in;
        self.frames_out += o.frames_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.reads += o.reads;
        self.writes += o.writes;
        self.calls_in += o.calls_in;
        self.calls_out += o.calls_out;
        self.errors_in += o.errors_in;
        self.errors_out += o.errors_out;
        self.rekeys_in += o.rekeys_in;
        self.rekeys_out += o.rekeys_out;
        self.auth_failures += o.auth_failures;
        self.handler_panics += o.handler_panics;
        self.commands_vetoed += o.commands_vetoed;
        self.hook_panics += o.hook_panics;
        self.uncompressed_out += o.uncompressed_out;
        self.compressed_out += o.compressed_out;
        self.compressed_in += o.compressed_in;
        self.uncompressed_in += o.uncompressed_in;
        self.read_buffered += o.read_buffered;
    }
}

/// A server's statistics: totals over all its connections, past and present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Counters summed over every connection the server has had.
    pub totals: Stats,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections closed at once because a connection limit was reached.
    pub connections_refused: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Accepted connections whose preamble or handshake failed or timed out (wrong
    /// protocol, wrong security mode, a pinned key that did not match, a silent peer).
    pub handshakes_failed: u64,
}

/// Live counters of one connection (relaxed atomics: each is exact, a snapshot is not atomic).
#[derive(Default)]
pub(crate) struct Counters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub calls_in: AtomicU64,
    pub calls_out: AtomicU64,
    pub errors_in: AtomicU64,
    pub errors_out: AtomicU64,
    pub rekeys_in: AtomicU64,
    pub rekeys_out: AtomicU64,
    pub auth_failures: AtomicU64,
    pub handler_panics: AtomicU64,
    pub commands_vetoed: AtomicU64,
    pub hook_panics: AtomicU64,
    pub uncompressed_out: AtomicU64,
    pub compressed_out: AtomicU64,
    pub compressed_in: AtomicU64,
    pub uncompressed_in: AtomicU64,
    pub read_buffered: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            calls_in: self.calls_in.load(Relaxed),
            calls_out: self.calls_out.load(Relaxed),
            errors_in: self.errors_in.load(Relaxed),
            errors_out: self.errors_out.load(Relaxed),
            rekeys_in: self.rekeys_in.load(Relaxed),
            rekeys_out: self.rekeys_out.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            handler_panics: self.handler_panics.load(Relaxed),
            commands_vetoed: self.commands_vetoed.load(Relaxed),
            hook_panics: self.hook_panics.load(Relaxed),
            uncompressed_out: self.uncompressed_out.load(Relaxed),
            compressed_out: self.compressed_out.load(Relaxed),
            compressed_in: self.compressed_in.load(Relaxed),
            uncompressed_in: self.uncompressed_in.load(Relaxed),
            read_buffered: self.read_buffered.load(Relaxed),
        }
    }

    /// Adds a finished connection's counts to these totals.
    pub(crate) fn absorb(&self, s: Stats) {
        Self::bump(&self.frames_in, s.frames_in);
        Self::bump(&self.frames_out, s.frames_out);
        Self::bump(&self.bytes_in, s.bytes_in);
        Self::bump(&self.bytes_out, s.bytes_out);
        Self::bump(&self.reads, s.reads);
        Self::bump(&self.writes, s.writes);
        Self::bump(&self.calls_in, s.calls_in);
        Self::bump(&self.calls_out, s.calls_out);
        Self::bump(&self.errors_in, s.errors_in);
        Self::bump(&self.errors_out, s.errors_out);
        Self::bump(&self.rekeys_in, s.rekeys_in);
        Self::bump(&self.rekeys_out, s.rekeys_out);
        Self::bump(&self.auth_failures, s.auth_failures);
        Self::bump(&self.handler_panics, s.handler_panics);
        Self::bump(&self.commands_vetoed, s.commands_vetoed);
        Self::bump(&self.hook_panics, s.hook_panics);
        Self::bump(&self.uncompressed_out, s.uncompressed_out);
        Self::bump(&self.compressed_out, s.compressed_out);
        Self::bump(&self.compressed_in, s.compressed_in);
        Self::bump(&self.uncompressed_in, s.uncompressed_in);
        // `read_buffered` is a gauge: a closed connection holds nothing.
    }
}
