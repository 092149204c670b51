"""The small part of postcard (https://postcard.jamesmunch.com/wire-format.html) the
protocol uses: unsigned varints, zigzag signed varints, bool, strings, bytes, options,
sequences. PROTOCOL.md section 6, LOGIN.md section 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar, Union

from .errors import CodecError

__all__ = ["Writer", "Reader", "encode_varint", "decode", "encode_str", "decode_str"]

T = TypeVar("T")
#: Byte strings a writer takes (module level: the classes below have methods named `bytes`).
Buf = Union[bytes, bytearray, memoryview]
_bytes = bytes

U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


def encode_varint(n: int) -> bytes:
    """The shortest LEB128 encoding of ``n`` (0 <= n < 2**64)."""
    if n < 0 or n > U64_MAX:
        raise CodecError(f"{n} does not fit an unsigned 64-bit varint")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Writer:
    """Builds a postcard value field by field."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def varint(self, n: int) -> Writer:
        self._buf += encode_varint(n)
        return self

    def u32(self, n: int) -> Writer:
        if n < 0 or n > U32_MAX:
            raise CodecError(f"{n} is not a u32")
        return self.varint(n)

    def u64(self, n: int) -> Writer:
        return self.varint(n)

    def i64(self, n: int) -> Writer:
        if n < -(2**63) or n >= 2**63:
            raise CodecError(f"{n} is not an i64")
        return self.varint((n << 1) ^ (n >> 63) if n < 0 else n << 1)

    def bool(self, b: bool) -> Writer:
        self._buf.append(1 if b else 0)
        return self

    def bytes(self, b: Buf) -> Writer:
        self.varint(len(b))
        self._buf += b
        return self

    def str(self, s: str) -> Writer:
        return self.bytes(s.encode("utf-8"))

    def raw(self, b: Buf) -> Writer:
        """Bytes with no length prefix (a fixed-size array such as ``[u8; 32]``)."""
        self._buf += b
        return self

    def option(self, value: T | None, write: Callable[[Writer, T], object]) -> Writer:
        if value is None:
            self._buf.append(0)
        else:
            self._buf.append(1)
            write(self, value)
        return self

    def seq(self, items: Iterable[T], write: Callable[[Writer, T], object]) -> Writer:
        items = list(items)
        self.varint(len(items))
        for item in items:
            write(self, item)
        return self

    def finish(self) -> _bytes:
        return _bytes(self._buf)


class Reader:
    """Reads a postcard value field by field; raises :class:`CodecError` on bad bytes."""

    def __init__(self, buf: Buf) -> None:
        self._buf = _bytes(buf)
        self._at = 0

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._at

    def _byte(self) -> int:
        if self._at >= len(self._buf):
            raise CodecError("Hit the end of buffer, expected more data")
        b = self._buf[self._at]
        self._at += 1
        return b

    def varint(self, max_bytes: int = 10) -> int:
        n = 0
        for i in range(max_bytes):
            b = self._byte()
            n |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if max_bytes == 10 and i == 9 and b > 1:
                    raise CodecError("varint overflows 64 bits")
                if max_bytes == 5 and i == 4 and b > 0x0F:
                    raise CodecError("varint overflows 32 bits")
                return n
        raise CodecError(f"varint longer than {max_bytes} bytes")

    def u32(self) -> int:
        return self.varint(5)

    def u64(self) -> int:
        return self.varint(10)

    def i64(self) -> int:
        z = self.varint(10)
        return (z >> 1) ^ -(z & 1)

    def bool(self) -> bool:
        b = self._byte()
        if b > 1:
            raise CodecError(f"bad bool byte {b:#04x}")
        return b == 1

    def raw(self, n: int) -> _bytes:
        if self.remaining < n:
            raise CodecError("Hit the end of buffer, expected more data")
        out = self._buf[self._at : self._at + n]
        self._at += n
        return out

    def bytes(self) -> _bytes:
        return self.raw(self.varint(10))

    def str(self) -> str:
        try:
            return self.bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError(f"string is not UTF-8: {e}") from None

    def option(self, read: Callable[[Reader], T]) -> T | None:
        tag = self._byte()
        if tag == 0:
            return None
        if tag == 1:
            return read(self)
        raise CodecError(f"bad option tag {tag:#04x}")

    def seq(self, read: Callable[[Reader], T]) -> list[T]:
        n = self.varint(10)
        if n > self.remaining:
            # every element takes at least one byte
            raise CodecError(f"sequence of {n} elements in {self.remaining} bytes")
        return [read(self) for _ in range(n)]


def decode(buf: bytes, read: Callable[[Reader], T]) -> T:
    """Decodes one value from the front of ``buf`` (trailing bytes ignored, as zserver does)."""
    return read(Reader(buf))


def encode_str(s: str) -> bytes:
    """A postcard ``String``."""
    return Writer().str(s).finish()


def decode_str(buf: bytes) -> str:
    return decode(buf, Reader.str)
