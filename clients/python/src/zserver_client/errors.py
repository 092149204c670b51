"""The errors this client raises.

Every failure is a :class:`ZserverError`; its subclass (and its ``kind``) says what went
wrong. Errors the server answered with (``Error`` frames, PROTOCOL.md section 5) are
:class:`RemoteError` subclasses carrying the wire ``code``.
"""

from __future__ import annotations

__all__ = [
    "ZserverError",
    "HandshakeError",
    "KeyMismatchError",
    "ClosedError",
    "ProtocolError",
    "CallTimeoutError",
    "IdleTimeoutError",
    "FrameTooLargeError",
    "CodecError",
    "IntegrityError",
    "StreamAbortedError",
    "StreamStoppedError",
    "RemoteError",
    "HandlerFailed",
    "UnknownCommand",
    "BadRequest",
    "NoResponse",
    "ShuttingDown",
    "NoSuchObject",
    "Denied",
    "OverLimit",
    "RateLimited",
    "remote_error",
]


class ZserverError(Exception):
    """Base of every error of this package. ``kind`` is a short stable name."""

    kind: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HandshakeError(ZserverError):
    """The preamble or the Noise handshake failed (wrong mode, bad bytes, closed, too slow)."""

    kind = "handshake"


class KeyMismatchError(HandshakeError):
    """The server's static key is not the pinned one; nothing was sent after Noise message 2."""

    kind = "keyMismatch"

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class ClosedError(ZserverError):
    """The connection is closed (by either side, or because it failed: see ``__cause__``)."""

    kind = "closed"


class ProtocolError(ZserverError):
    """The server broke the protocol (bad frame, bad record, failed authentication)."""

    kind = "protocol"


class CallTimeoutError(ZserverError, TimeoutError):
    """No answer within the time given; the server may still run the call."""

    kind = "timeout"


class IdleTimeoutError(ZserverError):
    """Nothing was heard from the server for the idle time-out."""

    kind = "idleTimeout"


class FrameTooLargeError(ZserverError):
    """A frame would exceed ``max_frame``: refused locally, nothing was sent."""

    kind = "frameTooLarge"


class CodecError(ZserverError):
    """A payload did not decode as the expected postcard value."""

    kind = "codec"


class IntegrityError(ZserverError):
    """A download's BLAKE3 hash or byte count did not match what the sender announced."""

    kind = "integrity"


class StreamAbortedError(ZserverError):
    """The sender aborted the stream (``Abort``), with its reason."""

    kind = "streamAborted"


class StreamStoppedError(ZserverError):
    """The receiver stopped the stream (``Stop``) before it ended."""

    kind = "streamStopped"


class RemoteError(ZserverError):
    """The server answered a call with an ``Error`` frame: ``code`` as on the wire."""

    kind = "remote"
    code: int = 1

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class HandlerFailed(RemoteError):
    """Code 1: the handler ran and failed (its own message)."""

    kind = "remote"
    code = 1


class UnknownCommand(RemoteError):
    """Code 2: no handler under that name; the call did not run."""

    kind = "unknownCommand"
    code = 2


class BadRequest(RemoteError):
    """Code 3: the payload could not be decoded (or was refused as malformed)."""

    kind = "badRequest"
    code = 3


class NoResponse(RemoteError):
    """Code 4: the handler dropped its responder without answering."""

    kind = "noResponse"
    code = 4


class ShuttingDown(RemoteError):
    """Code 5: the server is shutting down; the call did not run (safe to retry elsewhere)."""

    kind = "shuttingDown"
    code = 5


class NoSuchObject(RemoteError):
    """Code 6: a remote-object id this connection does not hold."""

    kind = "noSuchObject"
    code = 6


class Denied(RemoteError):
    """Code 7: a hook or a channel's permission refused the command; it did not run."""

    kind = "denied"
    code = 7


class OverLimit(RemoteError):
    """Code 8: the request would take the server over one of its limits; nothing was done."""

    kind = "overLimit"
    code = 8


class RateLimited(RemoteError):
    """Code 9: over a rate limit (``rate limited, retry after N ms``); the request did not run.

    A client that keeps going is disconnected (PROTOCOL.md, the error codes)."""

    kind = "rateLimited"
    code = 9

    @property
    def retry_after_ms(self) -> int | None:
        """The ``N`` of ``retry after N ms``, if the message has one."""
        text = str(self)
        marker = "retry after "
        at = text.find(marker)
        if at < 0:
            return None
        digits = text[at + len(marker) :].split(" ", 1)[0]
        return int(digits) if digits.isdigit() else None


_BY_CODE: dict[int, type[RemoteError]] = {
    cls.code: cls
    for cls in (
        HandlerFailed,
        UnknownCommand,
        BadRequest,
        NoResponse,
        ShuttingDown,
        NoSuchObject,
        Denied,
        OverLimit,
        RateLimited,
    )
}


def remote_error(code_text: str, message: str) -> RemoteError:
    """The error an ``Error`` frame stands for; unknown codes are treated as 1 (section 10)."""
    try:
        code = int(code_text, 10) if code_text.isascii() and code_text.isdigit() else 1
    except ValueError:
        code = 1
    cls = _BY_CODE.get(code, HandlerFailed)
    if cls is UnknownCommand:
        return UnknownCommand(f"unknown command `{message}`")
    return cls(message)
