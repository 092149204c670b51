"""A connection to a zserver server: calls and one-way sends both ways, handlers for what
the server calls or pushes, pings and heartbeats, uploads and downloads, encrypted (Noise
XX + AES-256-GCM records, PROTOCOL.md section 2b) unless asked otherwise.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .errors import (
    ClosedError,
    CallTimeoutError,
    HandshakeError,
    IdleTimeoutError,
    KeyMismatchError,
    ProtocolError,
    RemoteError,
    ZserverError,
    remote_error,
)
from .frame import (
    DEFAULT_MAX_FRAME,
    DOWNLOAD,
    UPLOAD,
    Frame,
    FrameReader,
    Kind,
    check_size,
    command_bytes,
    encode_frame,
)
from .noise import Initiator
from .record import RECORD_TARGET, Opener, RekeyPolicy, Sealer
from .stream import (
    CHUNK,
    Download,
    Progress,
    StreamHead,
    Upload,
    UploadSource,
    chunks_of,
    encode_download_request,
    source_length,
)
from .transport import Transport, open_tcp, open_websocket

if TYPE_CHECKING:
    from .channels import Channels

__all__ = [
    "Client",
    "HandlerContext",
    "Handler",
    "ClientStats",
    "connect",
    "connect_ws",
    "parse_fingerprint",
    "PREAMBLE_MAGIC",
]

PREAMBLE_MAGIC = b"ZSRV"
_VERSION = b"\x01\x00"
#: Most bytes of one Noise handshake message.
_MAX_HANDSHAKE_MESSAGE = 1024
_EMPTY = b""


@dataclass(frozen=True)
class HandlerContext:
    """What a handler learns besides its payload."""

    client: Client
    command: str
    #: True for a one-way ``Send`` (the return value is dropped), False for a ``Call``.
    one_way: bool


#: Handles a command the server calls or sends: bytes in, bytes (or None) out, sync or async.
#: Raise a :class:`RemoteError` subclass to answer with its code; anything else answers code 1.
Handler = Callable[[bytes, HandlerContext], Union[bytes, None, Awaitable[Union[bytes, None]]]]


@dataclass
class ClientStats:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Times this side replaced its sending key.
    rekeys_sent: int = 0
    #: Times the server replaced its key (followed here).
    rekeys_received: int = 0
    #: Calls, pings and streams awaiting their answers.
    in_flight: int = 0


def parse_fingerprint(pin: str | bytes) -> bytes:
    """A server key from 64 hex digits (what ``zserver serve`` prints) or 32 raw bytes."""
    if isinstance(pin, (bytes, bytearray)):
        if len(pin) != 32:
            raise ValueError(f"a server key is 32 bytes, not {len(pin)}")
        return bytes(pin)
    text = pin.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"pin {pin!r} is not a fingerprint: 64 hex digits expected")
    return bytes.fromhex(text)


@dataclass
class _Options:
    encrypted: bool = True
    pin: bytes | None = None
    keypair: X25519PrivateKey | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    rekey: RekeyPolicy = field(default_factory=RekeyPolicy)
    handshake_timeout: float = 10.0
    heartbeat: float = 30.0
    idle_timeout: float = 90.0
    max_pending_write: int = 8 * 1024 * 1024
    max_handlers: int = 256
    stream_window: int = 1024 * 1024


class _HandshakeReader:
    """Exact reads from the transport during the preamble and handshake."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.buf = bytearray()

    async def read_exact(self, n: int, what: str) -> bytes:
        while len(self.buf) < n:
            data = await self._t.read()
            if not data:
                raise HandshakeError(
                    f"the server closed the connection during the handshake ({what}): "
                    "is this a zserver port, and is the mode (encrypted or plain) the same?"
                )
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Client:
    """One connection to a zserver server. Make one with :func:`connect` or :func:`connect_ws`.

    Use it as an async context manager (``async with await connect(...) as client``) or
    call :meth:`close`.
    """

    def __init__(self, transport: Transport, options: _Options) -> None:
        self._t = transport
        self._o = options
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._uploads: dict[int, Upload] = {}
        self._downloads: dict[int, Download] = {}
        self._stopped_unknown: set[int] = set()
        self._stops_sent = 0
        self._next_id = 1
        self._frames = FrameReader(options.max_frame)
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake_writer = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._running = 0
        self._handler_room = asyncio.Event()
        self._handler_room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_heard = time.monotonic()
        self._pinged = False
        self._close_reason: ZserverError | None = None
        self._closed_event = asyncio.Event()
        self._close_listeners: list[Callable[[ZserverError | None], None]] = []
        self._goaway_listeners: list[Callable[[], None]] = []
        self._going_away = False
        self._stats = ClientStats()
        self._server_key: bytes | None = None
        self._handshake_hash: bytes | None = None
        self._channels: Channels | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None

    # ---- opening ----

    async def _start(self) -> None:
        hs = _HandshakeReader(self._t)
        try:
            async with asyncio.timeout(self._o.handshake_timeout):
                await self._handshake(hs)
        except TimeoutError:
            await self._t.close()
            raise HandshakeError(
                f"the handshake with {self._t.peer} did not finish within "
                f"{self._o.handshake_timeout:g} s"
            ) from None
        except BaseException:
            await self._t.close()
            raise
        leftover = bytes(hs.buf)
        self._reader_task = asyncio.create_task(self._read_loop(leftover))
        self._writer_task = asyncio.create_task(self._write_loop())
        if self._o.heartbeat > 0 or self._o.idle_timeout > 0:
            self._timer_task = asyncio.create_task(self._timer_loop())

    async def _handshake(self, hs: _HandshakeReader) -> None:
        mode = b"\x01" if self._o.encrypted else b"\x00"
        ours = PREAMBLE_MAGIC + _VERSION + mode + b"\x00"
        await self._raw_write(ours)
        theirs = await hs.read_exact(8, "preamble")
        if theirs[:4] != PREAMBLE_MAGIC:
            raise HandshakeError(
                f"{self._t.peer} is not a zserver server (its first bytes are {theirs[:4]!r}, "
                "not b'ZSRV')"
            )
        if theirs[4:6] != _VERSION:
            version = struct.unpack_from("<H", theirs, 4)[0]
            raise HandshakeError(f"the server speaks protocol version {version}, this client 1")
        if theirs[6:7] != mode:
            if self._o.encrypted:
                raise HandshakeError(
                    "this side is encrypted (Noise XX) but the peer is plain (trusted link)"
                )
            raise HandshakeError(
                "this side is plain (trusted link) but the peer is encrypted (Noise XX)"
            )
        # Byte 7: flags; this client offers no codecs, so no codec lists follow.
        if not self._o.encrypted:
            return
        noise = Initiator(ours + theirs, self._o.keypair)
        m1 = noise.write_message_1()
        await self._raw_write(struct.pack("<H", len(m1)) + m1)
        (n,) = struct.unpack("<H", await hs.read_exact(2, "Noise message 2"))
        if n > _MAX_HANDSHAKE_MESSAGE:
            raise HandshakeError(f"Noise message 2 of {n} bytes (at most 1024)")
        server_key = noise.read_message_2(await hs.read_exact(n, "Noise message 2"))
        if self._o.pin is not None and server_key != self._o.pin:
            raise KeyMismatchError(
                f"the server's key {server_key.hex()} is not the pinned {self._o.pin.hex()}: "
                "another server, or someone in between (nothing was sent)",
                expected=self._o.pin.hex(),
                actual=server_key.hex(),
            )
        m3 = noise.write_message_3()
        await self._raw_write(struct.pack("<H", len(m3)) + m3)
        send_key, recv_key = noise.split()
        self._server_key = server_key
        self._handshake_hash = noise.handshake_hash
        self._sealer = Sealer(send_key, self._o.rekey)
        self._opener = Opener(recv_key, self._o.max_frame)

    # ---- what the user sees ----

    @property
    def server_key(self) -> bytes | None:
        """The server's static public key (32 bytes); None on a plain connection."""
        return self._server_key

    @property
    def fingerprint(self) -> str | None:
        """The server's key as 64 lower-case hex digits (what clients pin)."""
        return None if self._server_key is None else self._server_key.hex()

    @property
    def is_closed(self) -> bool:
        return self._close_reason is not None

    @property
    def going_away(self) -> bool:
        """Whether the server sent ``GoAway`` (shutting down; new calls get ShuttingDown)."""
        return self._going_away

    def stats(self) -> ClientStats:
        s = ClientStats(**vars(self._stats))
        s.rekeys_sent = self._sealer.rekeys if self._sealer else 0
        s.rekeys_received = self._opener.rekeys if self._opener else 0
        s.in_flight = len(self._pending)
        return s

    @property
    def channels(self) -> Channels:
        """This connection's channels (PROTOCOL.md section 6c), made on first use."""
        if self._channels is None:
            from .channels import Channels

            self._channels = Channels(self)
        return self._channels

    def handle(self, command: str, handler: Handler) -> Client:
        """Registers (or replaces) the handler of ``command`` for the server's calls and sends."""
        command_bytes(command)
        self._handlers[command] = handler
        return self

    def handle_console(
        self,
        command: str,
        handler: Callable[[str, HandlerContext], Union[str, None, Awaitable[Union[str, None]]]],
    ) -> Client:
        """A console handler: UTF-8 text in, text out."""

        async def run(payload: bytes, ctx: HandlerContext) -> bytes | None:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                from .errors import BadRequest

                raise BadRequest("console text is not UTF-8") from None
            answer = handler(text, ctx)
            if inspect.isawaitable(answer):
                answer = await answer
            return None if answer is None else answer.encode("utf-8")

        return self.handle(command, run)

    def unhandle(self, command: str) -> Client:
        self._handlers.pop(command, None)
        return self

    def on_close(self, listener: Callable[[ZserverError | None], None]) -> Client:
        """Runs once when the connection closes: None after :meth:`close`, else why."""
        if self._close_reason is not None:
            listener(self._close_error_for_listeners())
        else:
            self._close_listeners.append(listener)
        return self

    def on_go_away(self, listener: Callable[[], None]) -> Client:
        self._goaway_listeners.append(listener)
        return self

    async def call(self, command: str, payload: bytes = _EMPTY, *, timeout: float | None = None) -> bytes:
        """Calls ``command`` with ``payload``; returns the reply's payload."""
        name = command_bytes(command)
        await self._writable()
        id = self._take_id()
        frame = self._encode(Kind.CALL, 0, id, name, payload)
        fut = self._expect(id)
        self._enqueue(frame)
        return (await self._await_answer(id, fut, timeout)).payload

    async def console(self, command: str, text: str, *, timeout: float | None = None) -> str:
        """A console call: text in, text out."""
        reply = await self.call(command, text.encode("utf-8"), timeout=timeout)
        return reply.decode("utf-8", errors="replace")

    async def send(self, command: str, payload: bytes = _EMPTY) -> None:
        """A one-way send: returns once queued; the server never answers."""
        name = command_bytes(command)
        await self._writable()
        self._enqueue(self._encode(Kind.SEND, 0, 0, name, payload))

    async def send_console(self, command: str, text: str) -> None:
        await self.send(command, text.encode("utf-8"))

    async def ping(self, *, timeout: float | None = None) -> float:
        """Pings the server; returns the round trip in seconds."""
        t0 = time.monotonic()
        id = self._take_id()
        fut = self._expect(id)
        self._enqueue(self._encode(Kind.PING, 0, id, _EMPTY, _EMPTY))
        await self._await_answer(id, fut, timeout)
        return time.monotonic() - t0

    async def upload(
        self,
        command: str,
        meta: bytes | str,
        source: UploadSource,
        *,
        total: int | None = None,
        prefix_hash: bytes | None = None,
        timeout: float | None = None,
        on_progress: Progress | None = None,
    ) -> bytes:
        """Uploads ``source`` to ``command`` (a server upload handler) under the server's
        credit, ending with the BLAKE3 hash; returns the handler's reply.

        ``total`` defaults to the source's length when it is known (bytes, a path); a source
        that yields another length is aborted. ``prefix_hash`` goes in the head (a resumed
        upload, PROTOCOL.md section 5b).
        """
        name = command_bytes(command)
        meta_b = meta.encode("utf-8") if isinstance(meta, str) else bytes(meta)
        if total is None:
            total = source_length(source)
        head = StreamHead(total, meta_b, prefix_hash).encode()
        await self._writable()
        id = self._take_id()
        frame = self._encode(Kind.CALL, UPLOAD, id, name, head)
        up = Upload()
        fut = self._expect(id)
        self._uploads[id] = up
        self._enqueue(frame)
        sender = asyncio.create_task(self._send_stream(id, up, source, total, on_progress))
        try:
            reply = await self._await_answer(id, fut, timeout)
        except RemoteError as e:
            if up.error is not None:
                raise up.error from e
            raise
        finally:
            up.stop()
            self._uploads.pop(id, None)
            if not sender.done():
                sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - reported through up.error
                pass
        return reply.payload

    async def download(
        self,
        command: str,
        meta: bytes | str,
        *,
        offset: int = 0,
        timeout: float | None = None,
        on_progress: Progress | None = None,
    ) -> Download:
        """Starts a download from ``command`` (from ``offset``, to resume); read the result."""
        name = command_bytes(command)
        meta_b = meta.encode("utf-8") if isinstance(meta, str) else bytes(meta)
        await self._writable()
        id = self._take_id()
        frame = self._encode(Kind.CALL, DOWNLOAD, id, name, encode_download_request(offset, meta_b))
        down = Download(self, id, self._o.stream_window)
        down.on_progress = on_progress
        fut = self._expect(id)
        self._downloads[id] = down
        self._enqueue(frame)
        try:
            reply = await self._await_answer(id, fut, timeout)
            if not reply.flags & DOWNLOAD:
                raise ProtocolError(f"`{command}` answered a download with a reply that opens no stream")
            down.head = StreamHead.decode(reply.payload)
        except BaseException:
            if self._downloads.pop(id, None) is not None and not self.is_closed:
                self._queue(Kind.STOP, DOWNLOAD, id, _EMPTY)
            raise
        return down

    async def close(self) -> None:
        """Sends what is queued (for at most 2 s), then closes the connection."""
        if self._close_reason is not None:
            await self._closed_event.wait()
            return
        if self._out:
            try:
                await asyncio.wait_for(self._drained.wait(), 2)
            except asyncio.TimeoutError:
                pass
        await self._shut(None)

    async def wait_closed(self) -> ZserverError | None:
        """Waits until the connection has closed: None after :meth:`close`, else why."""
        await self._closed_event.wait()
        return self._close_error_for_listeners()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- internals: ids, answers ----

    def _take_id(self) -> int:
        while True:
            id = self._next_id
            self._next_id = 1 if self._next_id >= 0xFFFFFFFFFFFFFFFF else self._next_id + 1
            if id not in self._pending:
                return id

    def _expect(self, id: int) -> asyncio.Future[Frame]:
        if self._close_reason is not None:
            raise self._closed_error()
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[id] = fut
        return fut

    async def _await_answer(self, id: int, fut: asyncio.Future[Frame], timeout: float | None) -> Frame:
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError(f"no answer within {timeout:g} s") from None
        finally:
            if self._pending.get(id) is fut:
                del self._pending[id]

    def _closed_error(self) -> ClosedError:
        why = self._close_reason
        if why is not None and not isinstance(why, ClosedError):
            err = ClosedError(f"the connection is closed: {why.message}")
            err.__cause__ = why
            return err
        if why is not None:
            return ClosedError(why.message)
        return ClosedError("the connection is closed")

    def _close_error_for_listeners(self) -> ZserverError | None:
        return None if self._closed_by_us else self._close_reason

    _closed_by_us = False

    # ---- internals: writing ----

    async def _raw_write(self, data: bytes) -> None:
        self._stats.bytes_sent += len(data)
        await self._t.write(data)

    async def _writable(self) -> None:
        while True:
            if self._close_reason is not None:
                raise self._closed_error()
            if self._out_bytes < self._o.max_pending_write:
                return
            self._room.clear()
            await self._room.wait()

    def _encode(self, kind: int, flags: int, id: int, command: bytes, payload: bytes) -> bytes:
        if self._close_reason is not None:
            raise self._closed_error()
        frame = encode_frame(kind, flags, id, command, payload)
        check_size(frame, self._o.max_frame)
        return frame

    def _enqueue(self, frame: bytes) -> None:
        if self._close_reason is not None:
            raise self._closed_error()
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._stats.frames_sent += 1
        self._drained.clear()
        self._wake_writer.set()

    def _queue(self, kind: int, flags: int, id: int, command: bytes, payload: bytes = _EMPTY) -> None:
        self._enqueue(self._encode(kind, flags, id, command, payload))

    def _take_batch(self) -> list[bytes]:
        n = 0
        k = 0
        while k < len(self._out) and (k == 0 or n + len(self._out[k]) <= RECORD_TARGET):
            n += len(self._out[k])
            k += 1
        batch = self._out[:k]
        del self._out[:k]
        return batch

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer.clear()
                while self._out and self._close_reason is None:
                    batch = self._take_batch()
                    plain = b"".join(batch)
                    data = self._sealer.seal(plain) if self._sealer else plain
                    await self._raw_write(data)
                    self._out_bytes -= len(plain)
                    if self._out_bytes < self._o.max_pending_write:
                        self._room.set()
                if not self._out:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except ZserverError as e:
            await self._shut(e)
        except Exception as e:  # noqa: BLE001
            await self._shut(ClosedError(f"writing failed: {e}"))

    # ---- internals: streams ----

    async def _send_stream(
        self,
        id: int,
        up: Upload,
        source: UploadSource,
        total: int | None,
        on_progress: Progress | None,
    ) -> None:
        import blake3

        hasher = blake3.blake3()
        sent = 0
        try:
            async for piece in chunks_of(source):
                view = memoryview(piece)
                while view:
                    while up.credit <= 0 and not up.stopped:
                        up.changed.clear()
                        await up.changed.wait()
                    if up.stopped:
                        return
                    n = min(len(view), up.credit, CHUNK)
                    await self._writable()
                    if up.stopped:
                        return
                    data = view[:n].tobytes()
                    self._queue(Kind.DATA, UPLOAD, id, _EMPTY, data)
                    hasher.update(data)
                    up.credit -= n
                    sent += n
                    view = view[n:]
                    if on_progress is not None:
                        on_progress(sent, total)
            if up.stopped:
                return
            if total is not None and sent != total:
                up.error = ValueError(f"the source gave {sent} bytes, {total} were announced")
                self._queue(Kind.ABORT, UPLOAD, id, _EMPTY, str(up.error).encode())
                return
            self._queue(Kind.END, UPLOAD, id, _EMPTY, hasher.digest())
        except asyncio.CancelledError:
            raise
        except ZserverError as e:
            up.error = e
        except Exception as e:  # noqa: BLE001 - the source failed: abort the stream
            up.error = e
            if not up.stopped and not self.is_closed:
                self._queue(Kind.ABORT, UPLOAD, id, _EMPTY, f"the source failed: {e}".encode())

    def _grant(self, id: int, amount: int) -> None:
        if self._close_reason is None and id in self._downloads:
            self._queue(Kind.CREDIT, DOWNLOAD, id, _EMPTY, struct.pack("<Q", amount))

    def _stop_download(self, id: int) -> None:
        if self._downloads.pop(id, None) is not None and self._close_reason is None:
            self._remember_stopped(id)
            self._queue(Kind.STOP, DOWNLOAD, id, _EMPTY)

    def _remember_stopped(self, id: int) -> None:
        self._stopped_unknown.add(id)
        if len(self._stopped_unknown) > 16:
            self._stopped_unknown.pop()

    # ---- internals: reading ----

    async def _read_loop(self, leftover: bytes) -> None:
        try:
            data = leftover
            while True:
                if data:
                    self._stats.bytes_received += len(data)
                    self._last_heard = time.monotonic()
                    self._pinged = False
                    await self._take(data)
                data = await self._t.read()
                if not data:
                    break
            buffered = self._frames.buffered + (self._opener.buffered if self._opener else 0)
            if buffered:
                raise ProtocolError("the connection ended in the middle of a frame")
            await self._shut(ClosedError("the server closed the connection"))
        except asyncio.CancelledError:
            raise
        except ZserverError as e:
            await self._shut(e)
        except Exception as e:  # noqa: BLE001
            await self._shut(ProtocolError(f"reading failed: {e!r}"))

    async def _take(self, data: bytes) -> None:
        if self._opener is not None:
            self._opener.push(data)
            while (plain := self._opener.next()) is not None:
                self._frames.push(plain)
                await self._dispatch()
        else:
            self._frames.push(data)
            await self._dispatch()

    async def _dispatch(self) -> None:
        while (f := self._frames.next()) is not None:
            if self._close_reason is not None:
                return
            self._stats.frames_received += 1
            self._on_frame(f)
            while self._running >= self._o.max_handlers and self._close_reason is None:
                self._handler_room.clear()
                await self._handler_room.wait()

    def _on_frame(self, f: Frame) -> None:
        k = f.kind
        if k == Kind.CALL:
            self._on_call(f)
        elif k == Kind.SEND:
            if not f.flags & (UPLOAD | DOWNLOAD):
                handler = self._handlers.get(f.command)
                if handler is not None:
                    self._run(handler, f, True)
        elif k == Kind.REPLY:
            self._resolve(f)
        elif k == Kind.ERROR:
            fut = self._pending.pop(f.id, None)
            if fut is not None and not fut.done():
                fut.set_exception(remote_error(f.command, f.payload.decode("utf-8", errors="replace")))
        elif k == Kind.PING:
            self._queue(Kind.PONG, 0, f.id, _EMPTY)
        elif k == Kind.PONG:
            if f.id != 0:
                self._resolve(f)
        elif k == Kind.GO_AWAY:
            if not self._going_away:
                self._going_away = True
                for listener in list(self._goaway_listeners):
                    _safely(listener)
        else:
            self._on_stream_frame(f)

    def _resolve(self, f: Frame) -> None:
        fut = self._pending.pop(f.id, None)
        if fut is not None and not fut.done():
            fut.set_result(f)

    def _on_stream_frame(self, f: Frame) -> None:
        direction = f.flags & (UPLOAD | DOWNLOAD)
        if direction not in (UPLOAD, DOWNLOAD):
            raise ProtocolError(
                f"stream frame (kind {int(f.kind)}) with flags {f.flags:#04x}: exactly one direction expected"
            )
        if direction == UPLOAD:
            up = self._uploads.get(f.id)
            if f.kind == Kind.CREDIT:
                if len(f.payload) != 8:
                    raise ProtocolError(f"Credit payload of {len(f.payload)} bytes (8 expected)")
                if up is not None:
                    up.on_credit(struct.unpack("<Q", f.payload)[0])
            elif f.kind == Kind.STOP:
                if up is not None:
                    up.stop()
            elif f.kind == Kind.DATA:
                # The server uploading to this client: it takes no uploads.
                self._stop_unknown(UPLOAD, f.id)
            return
        down = self._downloads.get(f.id)
        if f.kind == Kind.DATA:
            if down is None:
                self._stop_unknown(DOWNLOAD, f.id)
            else:
                down._on_data(f.payload)
        elif f.kind == Kind.END:
            if down is not None:
                if len(f.payload) != 32:
                    raise ProtocolError(f"End payload of {len(f.payload)} bytes (32 expected)")
                del self._downloads[f.id]
                down._on_end(f.payload)
        elif f.kind == Kind.ABORT:
            if down is not None:
                del self._downloads[f.id]
                down._on_abort(f.payload.decode("utf-8", errors="replace"))
        elif f.kind == Kind.CREDIT:
            if down is not None and len(f.payload) != 8:
                raise ProtocolError(f"Credit payload of {len(f.payload)} bytes (8 expected)")

    def _stop_unknown(self, direction: int, id: int) -> None:
        key = id * 4 + direction
        if key in self._stopped_unknown or self._stops_sent >= 1024:
            return
        self._stops_sent += 1
        self._remember_stopped(key)
        self._queue(Kind.STOP, direction, id, _EMPTY)

    def _on_call(self, f: Frame) -> None:
        if f.flags & (UPLOAD | DOWNLOAD):
            self._answer_error(f.id, 3, f"`{f.command}` takes no stream on this client")
            if f.flags & UPLOAD:
                self._queue(Kind.STOP, UPLOAD, f.id, _EMPTY)
            return
        handler = self._handlers.get(f.command)
        if handler is None:
            self._answer_error(f.id, 2, f.command)
            return
        self._run(handler, f, False)

    def _run(self, handler: Handler, f: Frame, one_way: bool) -> None:
        self._running += 1
        ctx = HandlerContext(self, f.command, one_way)
        task = asyncio.create_task(self._run_handler(handler, f, ctx))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: Handler, f: Frame, ctx: HandlerContext) -> None:
        try:
            try:
                result = handler(f.payload, ctx)
                if inspect.isawaitable(result):
                    result = await result
            except asyncio.CancelledError:
                raise
            except RemoteError as e:
                if not ctx.one_way:
                    self._answer_error(f.id, e.code, e.message)
                return
            except Exception as e:  # noqa: BLE001 - the handler's failure is answered
                if not ctx.one_way:
                    self._answer_error(f.id, 1, str(e) or type(e).__name__)
                return
            if ctx.one_way or self._close_reason is not None:
                return
            body = b"" if result is None else bytes(result)
            try:
                self._queue(Kind.REPLY, 0, f.id, _EMPTY, body)
            except ZserverError as e:
                self._answer_error(f.id, 1, e.message)
        finally:
            self._running -= 1
            self._handler_room.set()

    def _answer_error(self, id: int, code: int, message: str) -> None:
        if self._close_reason is not None:
            return
        msg = message.encode("utf-8")
        limit = self._o.max_frame - 64
        if len(msg) > limit:
            msg = msg[:limit].decode("utf-8", errors="ignore").encode("utf-8")
        self._queue(Kind.ERROR, 0, id, str(code).encode(), msg)

    # ---- internals: liveness, closing ----

    async def _timer_loop(self) -> None:
        periods = [p for p in (self._o.heartbeat, self._o.idle_timeout) if p > 0]
        step = max(min(periods) / 4, 0.01)
        while self._close_reason is None:
            await asyncio.sleep(step)
            silent = time.monotonic() - self._last_heard
            if self._o.idle_timeout > 0 and silent >= self._o.idle_timeout:
                await self._shut(IdleTimeoutError(f"nothing heard from the server for {silent:.1f} s"))
                return
            if self._o.heartbeat > 0 and silent >= self._o.heartbeat and not self._pinged:
                self._pinged = True
                self._queue(Kind.PING, 0, 0, _EMPTY)

    async def _shut(self, why: ZserverError | None) -> None:
        if self._close_reason is not None:
            return
        self._closed_by_us = why is None
        self._close_reason = why if why is not None else ClosedError("closed by this client")
        current = asyncio.current_task()
        for task in (self._reader_task, self._writer_task, self._timer_task):
            if task is not None and task is not current:
                task.cancel()
        err = self._closed_error()
        for fut in list(self._pending.values()):
            if not fut.done():
                e = self._closed_error()
                fut.set_exception(e)
        self._pending.clear()
        for down in list(self._downloads.values()):
            down._on_close(err)
        self._downloads.clear()
        for up in list(self._uploads.values()):
            up.stop()
        self._out.clear()
        self._out_bytes = 0
        self._room.set()
        self._drained.set()
        self._handler_room.set()
        await self._t.close()
        self._closed_event.set()
        reason = None if why is None else why
        for listener in list(self._close_listeners):
            _safely(listener, reason)


def _safely(f: Callable[..., object], *args: object) -> None:
    try:
        f(*args)
    except Exception:  # noqa: BLE001 - a listener's failure is its own
        pass


def _options(**kw: object) -> _Options:
    pin = kw.pop("pin", None)
    o = _Options(**{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]
    if pin is not None:
        o.pin = parse_fingerprint(pin)  # type: ignore[arg-type]
    if o.max_frame < 1024:
        raise ValueError("max_frame must be at least 1024")
    return o


async def _open(
    transport: Transport, options: _Options, handlers: dict[str, Handler] | None
) -> Client:
    client = Client(transport, options)
    for name, handler in (handlers or {}).items():
        client.handle(name, handler)
    await client._start()
    return client


async def connect(
    host: str,
    port: int,
    *,
    pin: str | bytes | None = None,
    encrypted: bool = True,
    keypair: X25519PrivateKey | None = None,
    handlers: dict[str, Handler] | None = None,
    max_frame: int | None = None,
    rekey: RekeyPolicy | None = None,
    handshake_timeout: float | None = None,
    heartbeat: float | None = None,
    idle_timeout: float | None = None,
    max_pending_write: int | None = None,
    max_handlers: int | None = None,
    stream_window: int | None = None,
) -> Client:
    """Connects over TCP and runs the preamble and (unless ``encrypted=False``) the Noise XX
    handshake, refusing any server whose key is not ``pin`` (64 hex digits or 32 bytes).

    ``handlers`` are registered before any frame is read, so no early push is missed.
    The TCP connect and the whole handshake share ``handshake_timeout`` (10 s).
    """
    o = _options(
        pin=pin, encrypted=encrypted, keypair=keypair, max_frame=max_frame, rekey=rekey,
        handshake_timeout=handshake_timeout, heartbeat=heartbeat, idle_timeout=idle_timeout,
        max_pending_write=max_pending_write, max_handlers=max_handlers, stream_window=stream_window,
    )
    try:
        async with asyncio.timeout(o.handshake_timeout):
            transport = await open_tcp(host, port)
    except TimeoutError:
        raise ClosedError(f"could not connect to {host}:{port} within {o.handshake_timeout:g} s") from None
    return await _open(transport, o, handlers)


async def connect_ws(
    url: str,
    *,
    pin: str | bytes | None = None,
    encrypted: bool = True,
    keypair: X25519PrivateKey | None = None,
    handlers: dict[str, Handler] | None = None,
    max_frame: int | None = None,
    rekey: RekeyPolicy | None = None,
    handshake_timeout: float | None = None,
    heartbeat: float | None = None,
    idle_timeout: float | None = None,
    max_pending_write: int | None = None,
    max_handlers: int | None = None,
    stream_window: int | None = None,
) -> Client:
    """Like :func:`connect`, over a WebSocket (``ws://host:port/``, PROTOCOL.md section 2d)."""
    o = _options(
        pin=pin, encrypted=encrypted, keypair=keypair, max_frame=max_frame, rekey=rekey,
        handshake_timeout=handshake_timeout, heartbeat=heartbeat, idle_timeout=idle_timeout,
        max_pending_write=max_pending_write, max_handlers=max_handlers, stream_window=stream_window,
    )
    max_message = max(o.max_frame, 4 * 1024 * 1024 + 64 * 1024) + 1024
    transport = await open_websocket(url, max_message, o.handshake_timeout)
    return await _open(transport, o, handlers)
