"""Encrypted records (PROTOCOL.md section 2b): ``length: u32 LE | kind: u8 | ciphertext |
tag``, AES-256-GCM with the 5 header bytes as associated data and the nonce 4 zero bytes +
the per-key record counter as u64 **little-endian**. Kind ``01`` means the sender switches
to its next key after this record (Noise's REKEY).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ProtocolError

__all__ = ["RekeyPolicy", "Sealer", "Opener", "record_limit", "RECORD_TARGET"]

HEADER = 5
TAG = 16
#: A sender groups frames into records of about this much plaintext.
RECORD_TARGET = 1024 * 1024
_REKEY_NONCE = b"\x00\x00\x00\x00" + b"\xff" * 8
_ZEROS32 = bytes(32)


def record_limit(max_frame: int) -> int:
    """The most plaintext a receiver with this ``max_frame`` takes in one record."""
    return min(4 * 1024 * 1024 + 64 * 1024, max(max_frame, 1024 * 1024) + 64 * 1024)


@dataclass(frozen=True)
class RekeyPolicy:
    """When this side replaces its sending key: whichever limit comes first (zserver's defaults)."""

    bytes: int = 1 << 30
    records: int = 1 << 24
    seconds: float = 120.0


def _next_key(aead: AESGCM) -> bytes:
    return aead.encrypt(_REKEY_NONCE, _ZEROS32, b"")[:32]


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


class Sealer:
    """Seals outgoing plaintext into records, rekeying by policy."""

    def __init__(self, key: bytes, policy: RekeyPolicy | None = None) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self._bytes = 0
        self._since = time.monotonic()
        self.policy = policy or RekeyPolicy()
        #: Keys replaced so far.
        self.rekeys = 0

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        now = time.monotonic()
        self._bytes += len(plaintext)
        last = (
            self._bytes >= self.policy.bytes
            or self._counter + 1 >= self.policy.records
            or now - self._since >= self.policy.seconds
        )
        header = struct.pack("<IB", len(plaintext) + TAG, 1 if last else 0)
        sealed = self._aead.encrypt(_nonce(self._counter), bytes(plaintext), header)
        self._counter += 1
        if last:
            self._aead = AESGCM(_next_key(self._aead))
            self._counter = 0
            self._bytes = 0
            self._since = now
            self.rekeys += 1
        return header + sealed


class Opener:
    """Opens incoming records in order, following the sender's rekeys."""

    def __init__(self, key: bytes, max_frame: int) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self._buf = bytearray()
        self._limit = record_limit(max_frame)
        #: Keys replaced so far, following the server.
        self.rekeys = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def push(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next(self) -> bytes | None:
        """The next record's plaintext, or None until it has arrived whole."""
        if len(self._buf) < HEADER:
            return None
        length, kind = struct.unpack_from("<IB", self._buf)
        if length < TAG or length > self._limit + TAG:
            raise ProtocolError(f"record length {length} outside 16..={self._limit + TAG}")
        if kind > 1:
            raise ProtocolError(f"unknown record kind {kind}")
        if len(self._buf) < HEADER + length:
            return None
        header = bytes(self._buf[:HEADER])
        body = bytes(self._buf[HEADER : HEADER + length])
        del self._buf[: HEADER + length]
        try:
            plaintext = self._aead.decrypt(_nonce(self._counter), body, header)
        except InvalidTag:
            raise ProtocolError(
                "a record failed authentication (tampered, replayed or reordered)"
            ) from None
        self._counter += 1
        if kind == 1:
            self._aead = AESGCM(_next_key(self._aead))
            self._counter = 0
            self.rekeys += 1
        return plaintext
