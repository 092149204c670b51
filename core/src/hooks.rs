//! Hooks around every command (ZServer4D's `OnExecuteCommand` / `OnSendCommand`): observe
//! or veto by command name and connection, for authorisation, logging and metrics.
//!
//! Hooks are registered on the [`Router`](crate::Router) of either side:
//! - [`Router::on_execute`](crate::Router::on_execute) runs before a handler, for every
//!   incoming call or one-way send; an error vetoes it (a call gets that error as its
//!   reply, a send is dropped; both are counted in
//!   [`Stats::commands_vetoed`](crate::Stats::commands_vetoed));
//! - [`Router::on_send`](crate::Router::on_send) runs before this side sends a call or a
//!   send; an error is returned to the local caller and nothing is sent;
//! - [`Router::on_complete`](crate::Router::on_complete) runs once a handler has answered
//!   (or, for a send, finished), with the outcome and the time taken.
//!
//! With no hook registered nothing is allocated or called. A hook that panics is caught:
//! counted in [`Stats::hook_panics`](crate::Stats::hook_panics), it vetoes its command
//! ([`Error::Denied`]); the connection carries on.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::error::Error;
pub use crate::proto::CommandKind;

/// One command as a hook sees it: its name, kind, payload size and connection.
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo<'a> {
    pub(crate) command: &'a str,
    pub(crate) kind: CommandKind,
    pub(crate) payload_len: usize,
    pub(crate) conn: &'a Connection,
}

impl<'a> CommandInfo<'a> {
    /// The command name.
    pub fn command(&self) -> &'a str {
        self.command
    }

    /// Call, send, upload or download.
    pub fn kind(&self) -> CommandKind {
        self.kind
    }

    /// The payload's length in bytes (for a stream: the request's head, not the stream).
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// The connection the command arrived on (or, for [`Router::on_send`](crate::Router::on_send),
    /// is about to leave on).
    pub fn connection(&self) -> &'a Connection {
        self.conn
    }

    /// The connection's id, unique within this process.
    pub fn connection_id(&self) -> u64 {
        self.conn.id()
    }

    /// The peer's address: the client's, as a trusted proxy announced it when the
    /// connection came through one ([`Connection::peer_addr`]).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer_addr()
    }

    /// The trusted proxy the connection came through, if any ([`Connection::proxy_addr`]).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.conn.proxy_addr()
    }

    /// The peer's static public key, proven in the handshake (`None` on a plain link).
    pub fn peer_key(&self) -> Option<[u8; 32]> {
        self.conn.peer_key()
    }
}

/// A hook that may veto a command.
pub(crate) type CheckHook = Arc<dyn Fn(&CommandInfo<'_>) -> Result<(), Error> + Send + Sync>;

/// A hook told how a command ended.
pub(crate) type CompleteHook =
    Arc<dyn Fn(&CommandInfo<'_>, Result<(), &Error>, Duration) + Send + Sync>;

/// The hooks of one router.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub execute: Vec<CheckHook>,
    pub send: Vec<CheckHook>,
    /// Shared with every [`Completion`] under way, so that making one costs a count.
    pub complete: Arc<Vec<CompleteHook>>,
}

impl Hooks {
    pub(crate) fn merge(&mut self, other: Hooks) {
        self.execute.extend(other.execute);
        self.send.extend(other.send);
        Arc::make_mut(&mut self.complete).extend(other.complete.iter().cloned());
    }
}

/// Runs veto hooks in order; the first error (or panic) vetoes.
pub(crate) fn check(hooks: &[CheckHook], info: &CommandInfo<'_>) -> Result<(), Error> {
    for hook in hooks {
        match catch_unwind(AssertUnwindSafe(|| hook(info))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                info.conn.hook_panicked(info.command);
                return Err(Error::Denied(format!(
                    "a hook panicked on command `{}`",
                    info.command
                )));
            }
        }
    }
    Ok(())
}

/// What an incoming command needs to report its completion; only made when
/// [`Router::on_complete`](crate::Router::on_complete) hooks exist.
pub(crate) struct Completion {
    command: Box<str>,
    kind: CommandKind,
    payload_len: usize,
    conn: Connection,
    started: Instant,
    hooks: Arc<Vec<CompleteHook>>,
}

impl Completion {
    pub(crate) fn new(
        conn: &Connection,
        info: &CommandInfo<'_>,
        hooks: &Arc<Vec<CompleteHook>>,
    ) -> Box<Self> {
        Box::new(Self {
            command: info.command.into(),
            kind: info.kind,
            payload_len: info.payload_len,
            conn: conn.clone(),
            started: conn.runtime().now(),
            hooks: hooks.clone(),
        })
    }

    /// Tells every completion hook how the command ended.
    pub(crate) fn finish(&self, outcome: Result<(), &Error>) {
        let elapsed = self
            .conn
            .runtime()
            .now()
            .saturating_duration_since(self.started);
        let info = CommandInfo {
            command: &self.command,
            kind: self.kind,
            payload_len: self.payload_len,
            conn: &self.conn,
        };
        for hook in self.hooks.iter() {
            if catch_unwind(AssertUnwindSafe(|| hook(&info, outcome, elapsed))).is_err() {
                self.conn.hook_panicked(&self.command);
            }
        }
    }
}
