//! The error type callers see, and the error codes that travel in `Error` frames.

use crate::frame::{EncodeError, FrameError};

/// Why a call, send or connection failed.
///
/// The variants a caller most often matches on are distinct: a handler's own error
/// ([`Error::Remote`]), an unknown command, a time-out and a closed connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote handler returned an error; this is its message.
    #[error("remote handler failed: {0}")]
    Remote(String),
    /// The peer has no handler registered under this command name.
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    /// The peer could not read the request payload (wrong type or bad encoding).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The handler dropped its [`Responder`](crate::Responder) without answering.
    #[error("the handler dropped its responder without answering")]
    NoResponse,
    /// A remote object id that this connection does not hold (freed, never created here,
    /// or of another class).
    #[error("no such object: {0}")]
    NoSuchObject(String),
    /// The peer is shutting down and takes no new calls.
    #[error("the peer is shutting down")]
    ShuttingDown,
    /// A hook vetoed the command ([`Router::on_execute`](crate::Router::on_execute) on the
    /// peer, or [`Router::on_send`](crate::Router::on_send) on this side); the handler did
    /// not run. Hooks return it to refuse a command (authorisation).
    #[error("denied: {0}")]
    Denied(String),
    /// The request would take the peer over one of its limits (channels per connection,
    /// subscribers per channel, publication size); nothing was done.
    #[error("over a limit: {0}")]
    Limit(String),
    /// The request came faster than the peer's rate limits allow
    /// ([`rate`](crate::rate)); it was not run. The message is
    /// `rate limited, retry after N ms`, or, when the peer is closing the connection for
    /// being refused too often, `rate limited too often (N refusals within M ms):
    /// disconnecting`. See [`retry_after`](Self::retry_after).
    #[error("{0}")]
    RateLimited(String),
    /// No reply arrived within the time-out; the call was abandoned.
    #[error("call timed out")]
    Timeout,
    /// The connection closed before the reply arrived, or was already closed. A connection
    /// that fails with an I/O error (reset, broken pipe) after its handshake also fails the
    /// calls waiting on it with `Closed`.
    #[error("connection closed")]
    Closed,
    /// A [`ReconnectingClient`](crate::ReconnectingClient) has no live connection right now
    /// (it is reconnecting, or its login hook is still running); nothing was sent.
    #[error("not connected (reconnecting)")]
    Disconnected,
    /// Nothing arrived from the peer for this long, heartbeats included; the connection
    /// was closed.
    #[error("the peer was silent for {0:?}")]
    IdleTimeout(std::time::Duration),
    /// The peer broke the protocol; the connection was closed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The secure handshake failed (mode mismatch, bad message, wrong key material).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The server's static key is not the one the client pinned; nothing was sent.
    #[error("server key mismatch: pinned {expected}, server presented {got}")]
    KeyMismatch {
        /// The pinned key, hex.
        expected: String,
        /// The key the server presented, hex.
        got: String,
    },
    /// An encrypted record failed authentication (tampered, replayed, reordered); the
    /// connection was closed.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A value could not be encoded as a payload, or a payload (a reply, a stream's head)
    /// could not be decoded as the value or text asked for, on this side.
    #[error("payload error: {0}")]
    Payload(String),
    /// A payload could not be compressed or decompressed: what a
    /// [`CompressionCodec`](crate::CompressionCodec) returns when it fails.
    #[error("compression error: {0}")]
    Compression(String),
    /// A frame could not be encoded (name too long, frame too large); nothing was sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A blocking call was made on an async runtime thread, where it could stall the runtime.
    #[error("blocking call made from an async runtime thread; use the async API there")]
    BlockingInRuntime,
    /// A stream's bytes do not match what its sender hashed or announced.
    #[error("stream integrity check failed: {0}")]
    Integrity(String),
    /// A stream was given up by its sender, or stopped by its receiver, before its end.
    #[error("stream aborted: {0}")]
    StreamAborted(String),
    /// An I/O error (connect, bind, read, write), as text so that the error stays `Clone`.
    #[error("i/o error: {0}")]
    Io(String),
}

impl Error {
    /// A handler error with this message (what a handler returns to fail a call).
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Remote(message.into())
    }

    /// For [`Error::RateLimited`] with `retry after N ms`: how long to wait before trying
    /// again (`None` for any other error, and when the peer is disconnecting).
    ///
    /// ```
    /// use std::time::Duration;
    /// use zserver_core::Error;
    /// let e = Error::RateLimited("rate limited, retry after 120 ms".into());
    /// assert_eq!(e.retry_after(), Some(Duration::from_millis(120)));
    /// assert_eq!(Error::Timeout.retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let Error::RateLimited(message) = self else {
            return None;
        };
        let (_, after) = message.split_once("retry after ")?;
        let ms = after.strip_suffix(" ms")?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms))
    }

    /// The code this error travels under in an `Error` frame.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Error::UnknownCommand(_) => ErrorCode::UnknownCommand,
            Error::BadRequest(_) | Error::Payload(_) | Error::Compression(_) => {
                ErrorCode::BadRequest
            }
            Error::NoResponse => ErrorCode::NoResponse,
            Error::ShuttingDown => ErrorCode::ShuttingDown,
            Error::NoSuchObject(_) => ErrorCode::NoSuchObject,
            Error::Denied(_) => ErrorCode::Denied,
            Error::Limit(_) => ErrorCode::Limit,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            _ => ErrorCode::Handler,
        }
    }

    /// The message an `Error` frame carries for this error.
    pub(crate) fn wire_message(&self) -> String {
        match self {
            Error::Remote(m)
            | Error::BadRequest(m)
            | Error::Payload(m)
            | Error::Compression(m)
            | Error::UnknownCommand(m)
            | Error::NoSuchObject(m)
            | Error::Denied(m)
            | Error::Limit(m)
            | Error::RateLimited(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// Rebuilds the caller-side error from an `Error` frame's code and message.
    pub(crate) fn from_wire(code: &str, message: String) -> Self {
        match ErrorCode::parse(code) {
            Some(ErrorCode::UnknownCommand) => Error::UnknownCommand(message),
            Some(ErrorCode::BadRequest) => Error::BadRequest(message),
            Some(ErrorCode::NoResponse) => Error::NoResponse,
            Some(ErrorCode::ShuttingDown) => Error::ShuttingDown,
            Some(ErrorCode::NoSuchObject) => Error::NoSuchObject(message),
            Some(ErrorCode::Denied) => Error::Denied(message),
            Some(ErrorCode::Limit) => Error::Limit(message),
            Some(ErrorCode::RateLimited) => Error::RateLimited(message),
            Some(ErrorCode::Handler) | None => Error::Remote(message),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Payload(e.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Remote(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Remote(message.to_owned())
    }
}

/// Error codes carried in the command field of an `Error` frame, as decimal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// "1": the handler failed; the payload is its message.
    Handler,
    /// "2": no handler is registered under that name.
    UnknownCommand,
    /// "3": the request payload could not be decoded.
    BadRequest,
    /// "4": the handler dropped its responder.
    NoResponse,
    /// "5": the peer is shutting down.
    ShuttingDown,
    /// "6": no such remote object on this connection.
    NoSuchObject,
    /// "7": a hook on the peer vetoed the command; the handler did not run.
    Denied,
    /// "8": the request would take the peer over a limit; nothing was done.
    Limit,
    /// "9": the request came faster than the peer's rate limits allow; not run.
    RateLimited,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Handler => "1",
            ErrorCode::UnknownCommand => "2",
            ErrorCode::BadRequest => "3",
            ErrorCode::NoResponse => "4",
            ErrorCode::ShuttingDown => "5",
            ErrorCode::NoSuchObject => "6",
            ErrorCode::Denied => "7",
            ErrorCode::Limit => "8",
            ErrorCode::RateLimited => "9",
        }
    }

    /// A short name for metrics and logs, such as `handler` or `bad_request`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorCode::Handler => "handler",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NoResponse => "no_response",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NoSuchObject => "no_such_object",
            ErrorCode::Denied => "denied",
            ErrorCode::Limit => "limit",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "1" => ErrorCode::Handler,
            "2" => ErrorCode::UnknownCommand,
            "3" => ErrorCode::BadRequest,
            "4" => ErrorCode::NoResponse,
            "5" => ErrorCode::ShuttingDown,
            "6" => ErrorCode::NoSuchObject,
            "7" => ErrorCode::Denied,
            "8" => ErrorCode::Limit,
            "9" => ErrorCode::RateLimited,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        for err in [
            Error::Remote("boom".into()),
            Error::UnknownCommand("nope".into()),
            Error::BadRequest("bad".into()),
            Error::Limit("too many".into()),
            Error::RateLimited("rate limited, retry after 5 ms".into()),
            Error::NoResponse,
            Error::ShuttingDown,
            Error::Denied("no".into()),
        ] {
            let back = Error::from_wire(err.code().as_str(), err.wire_message());
            assert_eq!(back, err);
        }
        assert_eq!(
            Error::from_wire("99", "x".into()),
            Error::Remote("x".into())
        );
    }
}
