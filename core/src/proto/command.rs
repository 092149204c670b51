//! What kind of request a command is, as hooks and the call API see it.

use crate::frame::{Kind, FLAG_DOWNLOAD, FLAG_UPLOAD};

/// What kind of request a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CommandKind {
    /// A call awaiting a reply.
    Call,
    /// A one-way send.
    Send,
    /// A call carrying a stream (an upload).
    Upload,
    /// A call asking for a stream back (a download).
    Download,
}

impl CommandKind {
    /// The kind of a request frame of `kind` with `flags`.
    pub(crate) fn of(kind: Kind, flags: u8) -> Self {
        match kind {
            Kind::Send => CommandKind::Send,
            _ if flags & FLAG_UPLOAD != 0 => CommandKind::Upload,
            _ if flags & FLAG_DOWNLOAD != 0 => CommandKind::Download,
            _ => CommandKind::Call,
        }
    }

    /// Whether the caller waits for an answer (everything but a one-way send).
    pub fn expects_reply(self) -> bool {
        self != CommandKind::Send
    }
}
