"""Uploads and downloads (PROTOCOL.md section 5b): ``Data`` frames under the receiver's
``Credit``, closed by ``End`` with the BLAKE3 hash of everything sent.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Union

import blake3

from .errors import (
    ClosedError,
    IntegrityError,
    ProtocolError,
    StreamAbortedError,
    StreamStoppedError,
    ZserverError,
)
from .postcard import Reader, Writer

if TYPE_CHECKING:
    from .client import Client

__all__ = ["StreamHead", "Download", "UploadSource", "INITIAL_CREDIT", "CHUNK", "hash_of"]

#: Credit every stream starts with.
INITIAL_CREDIT = 256 * 1024
#: Largest ``Data`` payload this client sends.
CHUNK = 64 * 1024

#: What an upload reads from: bytes, a binary file, a path, or (async) iterables of bytes.
UploadSource = Union[
    bytes,
    bytearray,
    memoryview,
    "os.PathLike[str]",
    IO[bytes],
    Iterable[bytes],
    AsyncIterable[bytes],
]

#: Called with the bytes moved so far (and the total when known).
Progress = Callable[[int, Union[int, None]], None]


def hash_of(data: bytes | bytearray | memoryview) -> bytes:
    """The BLAKE3 hash (32 bytes) of ``data``, as ``End`` and ``prefix`` carry it."""
    return blake3.blake3(bytes(data)).digest()


@dataclass(frozen=True)
class StreamHead:
    """``{total: Option<u64>, meta: bytes}`` and, optionally, ``prefix: Option<[u8; 32]>``."""

    total: int | None
    meta: bytes
    prefix: bytes | None = None

    def encode(self) -> bytes:
        w = Writer().option(self.total, Writer.u64).bytes(self.meta)
        if self.prefix is not None:
            if len(self.prefix) != 32:
                raise ValueError("a prefix hash is 32 bytes")
            w.option(self.prefix, Writer.raw)
        return w.finish()

    @staticmethod
    def decode(buf: bytes) -> StreamHead:
        r = Reader(buf)
        total = r.option(Reader.u64)
        meta = r.bytes()
        prefix = r.option(lambda r: r.raw(32)) if r.remaining > 0 else None
        return StreamHead(total, meta, prefix)


def encode_download_request(offset: int, meta: bytes) -> bytes:
    return Writer().u64(offset).bytes(meta).finish()


async def chunks_of(source: UploadSource) -> AsyncIterator[bytes]:
    """The source's bytes in pieces of at most :data:`CHUNK`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for at in range(0, len(view), CHUNK):
            yield view[at : at + CHUNK].tobytes()
        return
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            async for piece in chunks_of(f):
                yield piece
        return
    if hasattr(source, "read"):
        file: IO[bytes] = source  # type: ignore[assignment]
        while True:
            piece = await asyncio.to_thread(file.read, CHUNK)
            if not piece:
                return
            yield piece
        return
    if hasattr(source, "__aiter__"):
        async for piece in source:
            for at in range(0, len(piece), CHUNK):
                yield bytes(piece[at : at + CHUNK])
        return
    for piece in source:
        for at in range(0, len(piece), CHUNK):
            yield bytes(piece[at : at + CHUNK])


def source_length(source: UploadSource) -> int | None:
    """The length of a source when it is known without reading it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).nbytes
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source)
    return None


class Upload:
    """The sending side of one upload (internal)."""

    def __init__(self) -> None:
        self.credit = INITIAL_CREDIT
        self.stopped = False
        self.changed = asyncio.Event()
        self.error: BaseException | None = None

    def on_credit(self, amount: int) -> None:
        self.credit += amount
        self.changed.set()

    def stop(self) -> None:
        self.stopped = True
        self.changed.set()


class Download:
    """An incoming stream: iterate it (``async for chunk in download``) or ``read_all()``.

    Credit is granted only as chunks are taken, so a download nobody reads holds at most
    the initial 256 KiB. The last read raises :class:`IntegrityError` when the hash or the
    byte count does not match, :class:`StreamAbortedError` when the server aborted.
    """

    def __init__(self, client: Client, id: int, window: int) -> None:
        self._client = client
        self.id = id
        self._window = max(window, INITIAL_CREDIT)
        self._granted = INITIAL_CREDIT
        self._received = 0
        self._consumed = 0
        self._queue: deque[bytes] = deque()
        self._hasher = blake3.blake3()
        self._ready = asyncio.Event()
        self._ended = False
        self._error: ZserverError | None = None
        self._stopped = False
        self.head = StreamHead(None, b"")
        self.on_progress: Progress | None = None

    # ---- what the caller sees ----

    @property
    def total(self) -> int | None:
        """Bytes the server announced (from the offset on), if it did."""
        return self.head.total

    @property
    def meta(self) -> bytes:
        return self.head.meta

    @property
    def prefix(self) -> bytes | None:
        """For a resumed download: the server's BLAKE3 hash of the bytes before the offset."""
        return self.head.prefix

    @property
    def received(self) -> int:
        return self._received

    async def read(self) -> bytes | None:
        """The next chunk, or None at the (verified) end."""
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._ended or self._stopped:
                return None
            self._ready.clear()
            await self._ready.wait()
        chunk = self._queue.popleft()
        self._consumed += len(chunk)
        self._grant()
        if self.on_progress is not None:
            self.on_progress(self._consumed, self.total)
        return chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.read()
            if chunk is None:
                return
            yield chunk

    async def read_all(self) -> bytes:
        """Everything, verified."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    async def write_to(self, file: IO[bytes]) -> int:
        """Writes everything to a binary file; returns the byte count."""
        n = 0
        async for chunk in self:
            await asyncio.to_thread(file.write, chunk)
            n += len(chunk)
        return n

    def cancel(self) -> None:
        """Stops the download (``Stop``); reading then ends with :class:`StreamStoppedError`."""
        if self._ended or self._stopped or self._error is not None:
            return
        self._stopped = True
        self._error = StreamStoppedError("the download was cancelled")
        self._queue.clear()
        self._client._stop_download(self.id)
        self._ready.set()

    # ---- what the client calls ----

    def _grant(self) -> None:
        if self._ended or self._stopped or self._error is not None:
            return
        allowed = self._consumed + self._window
        if allowed - self._granted >= self._window // 2:
            self._client._grant(self.id, allowed - self._granted)
            self._granted = allowed

    def _on_data(self, payload: bytes) -> None:
        if self._received + len(payload) > self._granted:
            raise ProtocolError(
                f"the server sent {self._received + len(payload)} bytes of download {self.id} "
                f"with credit for {self._granted}"
            )
        if not payload:
            return
        self._received += len(payload)
        self._hasher.update(payload)
        self._queue.append(payload)
        self._ready.set()

    def _on_end(self, digest: bytes) -> None:
        if self._hasher.digest() != digest:
            self._fail(IntegrityError("the stream's hash does not match the sender's"))
        elif self.head.total is not None and self._received != self.head.total:
            self._fail(
                IntegrityError(f"{self._received} bytes arrived, {self.head.total} announced")
            )
        else:
            self._ended = True
            self._ready.set()

    def _fail(self, error: ZserverError) -> None:
        if self._ended or self._error is not None:
            return
        self._error = error
        self._ready.set()

    def _on_abort(self, reason: str) -> None:
        self._fail(StreamAbortedError(f"the server aborted the stream: {reason}"))

    def _on_close(self, error: ClosedError) -> None:
        self._fail(error)
