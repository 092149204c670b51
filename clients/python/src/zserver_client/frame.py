"""Frames (PROTOCOL.md sections 3 and 4): ``length: u32 LE | header | payload`` where the
header is postcard ``{kind: varint, flags: u8, id: varint u64, command: string}``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import FrameTooLargeError, ProtocolError
from .postcard import encode_varint

__all__ = [
    "Kind",
    "Frame",
    "FrameReader",
    "encode_frame",
    "command_bytes",
    "UPLOAD",
    "DOWNLOAD",
    "COMPRESSED",
    "DEFAULT_MAX_FRAME",
    "MAX_COMMAND",
]

#: Flag bit 0: the frame belongs to (or opens) the upload of its call.
UPLOAD = 0x01
#: Flag bit 1: the frame belongs to (or opens) the download of its call.
DOWNLOAD = 0x02
#: Flag bit 7: the payload is encoded with the negotiated codec (this client offers none).
COMPRESSED = 0x80
#: zserver's default ``max_frame``.
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
#: Longest command name.
MAX_COMMAND = 255


class Kind(IntEnum):
    CALL = 0
    SEND = 1
    REPLY = 2
    ERROR = 3
    PING = 4
    PONG = 5
    GO_AWAY = 6
    DATA = 7
    END = 8
    ABORT = 9
    CREDIT = 10
    STOP = 11


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    flags: int
    id: int
    command: str
    payload: bytes


def command_bytes(command: str) -> bytes:
    """The UTF-8 bytes of a command name, checked against 1..=255 bytes."""
    b = command.encode("utf-8")
    if not 1 <= len(b) <= MAX_COMMAND:
        raise ValueError(f"command name of {len(b)} bytes (1 to {MAX_COMMAND} allowed)")
    return b


def encode_frame(
    kind: int, flags: int, id: int, command: bytes, payload: bytes | bytearray | memoryview
) -> bytes:
    """One frame's bytes, length prefix included."""
    header = encode_varint(kind) + bytes((flags,)) + encode_varint(id) + encode_varint(len(command))
    length = len(header) + len(command) + len(payload)
    return b"".join((struct.pack("<I", length), header, command, payload))


def check_size(frame: bytes, max_frame: int) -> None:
    if len(frame) - 4 > max_frame:
        raise FrameTooLargeError(
            f"frame of {len(frame) - 4} bytes exceeds the limit of {max_frame} bytes"
        )


def _varint(body: memoryview, at: int, max_bytes: int) -> tuple[int, int]:
    n = 0
    for i in range(max_bytes):
        if at >= len(body):
            raise ProtocolError("truncated frame header")
        b = body[at]
        at += 1
        n |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i == max_bytes - 1 and b > (0x01 if max_bytes == 10 else 0x0F):
                raise ProtocolError("overflowing varint in a frame header")
            return n, at
    raise ProtocolError("varint too long in a frame header")


def decode_body(body: bytes) -> Frame:
    """Decodes a frame's body (everything after the length prefix)."""
    view = memoryview(body)
    kind, at = _varint(view, 0, 5)
    if kind > Kind.STOP:
        raise ProtocolError(f"unknown frame kind {kind}")
    if at >= len(view):
        raise ProtocolError("truncated frame header")
    flags = view[at]
    at += 1
    if flags & COMPRESSED:
        raise ProtocolError("a compressed frame, but no codec was negotiated")
    id, at = _varint(view, at, 10)
    n, at = _varint(view, at, 10)
    if at + n > len(view):
        raise ProtocolError("command runs past the end of the frame")
    try:
        command = bytes(view[at : at + n]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("command name is not UTF-8") from None
    return Frame(Kind(kind), flags, id, command, bytes(view[at + n :]))


class FrameReader:
    """Cuts a byte stream into frames, checking each length before buffering its body."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def push(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next(self) -> Frame | None:
        """The next whole frame, or None until more bytes come."""
        if len(self._buf) < 4:
            return None
        (length,) = struct.unpack_from("<I", self._buf)
        if length > self.max_frame:
            raise ProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.max_frame} bytes"
            )
        if len(self._buf) < 4 + length:
            return None
        body = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        return decode_body(body)
