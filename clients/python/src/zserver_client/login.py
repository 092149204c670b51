"""The login server's commands (``zserver serve``, docs/LOGIN.md): accounts, sessions, push
to users or everyone, who is online, per-user files, and the server's two events
(``message``, ``kicked``).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Union

from .client import Client, HandlerContext, _safely, connect, connect_ws
from .errors import CallTimeoutError, CodecError, HandlerFailed
from .postcard import Reader, Writer, decode, decode_str, encode_str
from .stream import Download, Progress, UploadSource, hash_of

__all__ = [
    "LoginClient",
    "Message",
    "MessageEvent",
    "KickedEvent",
    "LoginEvent",
    "PushReport",
    "WhoPage",
    "FileInfo",
    "PartialUpload",
    "Uploaded",
    "MAX_WHO_PAGE",
]

#: Most names one ``who`` page may ask for.
MAX_WHO_PAGE = 65_536


@dataclass(frozen=True)
class Message:
    """A message as its recipient sees it."""

    sender: str
    text: str


@dataclass(frozen=True)
class MessageEvent:
    message: Message
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class KickedEvent:
    reason: str
    type: Literal["kicked"] = "kicked"


LoginEvent = Union[MessageEvent, KickedEvent]


@dataclass(frozen=True)
class PushReport:
    delivered: list[str]
    stored: list[str]
    delivered_count: int
    stored_count: int
    #: Users whose node (in a cluster) took the push without confirming in time.
    unconfirmed: list[str]


@dataclass(frozen=True)
class WhoPage:
    users: list[str]
    online: int
    more: bool


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int


@dataclass(frozen=True)
class PartialUpload:
    """What the server kept of an upload that broke off: ``size`` bytes hashing to ``hash``."""

    size: int
    hash: bytes


@dataclass(frozen=True)
class Uploaded:
    """What :meth:`LoginClient.put_resumable` did."""

    written: int
    resumed_from: int
    restarted: bool


def _message(r: Reader) -> Message:
    return Message(r.str(), r.str())


def _strings(r: Reader) -> list[str]:
    return r.seq(Reader.str)


def _credentials(user: str, password: str) -> bytes:
    return Writer().str(user).str(password).finish()


def _unit(reply: bytes) -> None:
    if reply:
        raise CodecError(f"expected an empty reply, got {len(reply)} bytes")


def _file_info(r: Reader) -> FileInfo:
    return FileInfo(r.str(), r.u64())


class LoginClient:
    """A client of the login server, wrapping a connected :class:`Client`.

    Its ``message`` and ``kicked`` handlers are registered at once. Events are queued for
    :meth:`next_event` (and ``async for event in login.events()``) and given to the
    listeners of :meth:`on_message` / :meth:`on_kicked`.
    """

    def __init__(self, client: Client, *, max_queued_events: int = 10_000) -> None:
        self.client = client
        self._max_queued = max_queued_events
        self._queue: deque[LoginEvent] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._message_listeners: list[Callable[[Message], None]] = []
        self._kicked_listeners: list[Callable[[str], None]] = []
        client.handle("message", self._on_message)
        client.handle("kicked", self._on_kicked)
        client.on_close(self._on_close)

    @classmethod
    async def connect(cls, host: str, port: int, *, pin: str | bytes | None, **options: object) -> LoginClient:
        """Connects over TCP (pin the key ``zserver serve`` printed) and wraps the client."""
        return cls(await connect(host, port, pin=pin, **options))  # type: ignore[arg-type]

    @classmethod
    async def connect_ws(cls, url: str, *, pin: str | bytes | None, **options: object) -> LoginClient:
        """Connects over WebSocket (``ws://host:port/``) and wraps the client."""
        return cls(await connect_ws(url, pin=pin, **options))  # type: ignore[arg-type]

    # ---- events ----

    def _on_message(self, payload: bytes, _ctx: HandlerContext) -> None:
        message = decode(payload, _message)
        for listener in list(self._message_listeners):
            _safely(listener, message)
        self._enqueue(MessageEvent(message))

    def _on_kicked(self, payload: bytes, _ctx: HandlerContext) -> None:
        reason = decode_str(payload)
        for listener in list(self._kicked_listeners):
            _safely(listener, reason)
        self._enqueue(KickedEvent(reason))

    def _on_close(self, _why: object) -> None:
        self._ended = True
        self._ready.set()

    def _enqueue(self, event: LoginEvent) -> None:
        self._queue.append(event)
        if len(self._queue) > self._max_queued:
            self._queue.popleft()
        self._ready.set()

    def on_message(self, listener: Callable[[Message], None]) -> LoginClient:
        self._message_listeners.append(listener)
        return self

    def on_kicked(self, listener: Callable[[str], None]) -> LoginClient:
        self._kicked_listeners.append(listener)
        return self

    async def next_event(self, timeout: float | None = None) -> LoginEvent | None:
        """The next event in arrival order, or None once the connection has closed and
        none are left."""

        async def wait() -> LoginEvent | None:
            while not self._queue:
                if self._ended:
                    return None
                self._ready.clear()
                await self._ready.wait()
            return self._queue.popleft()

        if timeout is None:
            return await wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError(f"no event within {timeout:g} s") from None

    async def next_message(self, timeout: float | None = None) -> Message | None:
        """The next ``message`` event (None if the session was kicked or the connection closed)."""
        event = await self.next_event(timeout)
        return event.message if isinstance(event, MessageEvent) else None

    async def events(self) -> AsyncIterator[LoginEvent]:
        while (event := await self.next_event()) is not None:
            yield event

    # ---- accounts and sessions ----

    async def register(self, user: str, password: str, *, timeout: float | None = None) -> None:
        """Creates an account (does not log in)."""
        _unit(await self.client.call("register", _credentials(user, password), timeout=timeout))

    async def login(self, user: str, password: str, *, timeout: float | None = None) -> list[Message]:
        """Logs in; returns the messages stored while the user was offline, oldest first."""
        reply = await self.client.call("login", _credentials(user, password), timeout=timeout)
        return decode(reply, lambda r: r.seq(_message))

    async def logout(self, *, timeout: float | None = None) -> None:
        _unit(await self.client.call("logout", timeout=timeout))

    async def change_password(self, old: str, new: str, *, timeout: float | None = None) -> None:
        _unit(await self.client.call("passwd", Writer().str(old).str(new).finish(), timeout=timeout))

    async def delete_account(self, password: str, *, timeout: float | None = None) -> None:
        """Deletes the account with its stored messages and files."""
        _unit(await self.client.call("delete", encode_str(password), timeout=timeout))

    # ---- who and push ----

    async def who_page(
        self, after: str | None = None, limit: int = MAX_WHO_PAGE, *, timeout: float | None = None
    ) -> WhoPage:
        """One page: at most ``limit`` names sorting after ``after``."""
        request = Writer().option(after, Writer.str).u32(limit).finish()
        reply = await self.client.call("who", request, timeout=timeout)
        return decode(reply, lambda r: WhoPage(_strings(r), r.u64(), r.bool()))

    async def who(self, *, timeout: float | None = None) -> list[str]:
        """Everyone online, sorted, page after page."""
        users: list[str] = []
        after: str | None = None
        while True:
            page = await self.who_page(after, timeout=timeout)
            users += page.users
            if not page.more or not page.users:
                return users
            after = users[-1]

    async def push(self, users: list[str], text: str, *, timeout: float | None = None) -> PushReport:
        """Sends ``text`` to ``users`` (stored for those offline)."""
        payload = Writer().varint(0).seq(users, Writer.str).str(text).finish()
        return await self._push(payload, timeout)

    async def push_all(self, text: str, *, timeout: float | None = None) -> PushReport:
        """Sends ``text`` to everyone online."""
        return await self._push(Writer().varint(1).str(text).finish(), timeout)

    async def _push(self, payload: bytes, timeout: float | None) -> PushReport:
        reply = await self.client.call("push", payload, timeout=timeout)
        return decode(
            reply,
            lambda r: PushReport(_strings(r), _strings(r), r.u64(), r.u64(), _strings(r)),
        )

    # ---- files ----

    async def put(
        self,
        name: str,
        data: UploadSource,
        *,
        total: int | None = None,
        prefix_hash: bytes | None = None,
        timeout: float | None = None,
        on_progress: Progress | None = None,
    ) -> int:
        """Uploads ``data`` (bytes, a path, a binary file, (async) iterables of bytes) as
        the file ``name``; returns the size stored."""
        reply = await self.client.upload(
            "put", name, data, total=total, prefix_hash=prefix_hash, timeout=timeout, on_progress=on_progress
        )
        if len(reply) != 8:
            raise CodecError(f"bad put reply of {len(reply)} bytes (8 expected)")
        return int(struct.unpack("<Q", reply)[0])

    async def partial_upload(self, name: str, *, timeout: float | None = None) -> PartialUpload | None:
        """What the server kept of an upload of ``name`` that broke off, if anything."""
        reply = await self.client.call("put_partial", encode_str(name), timeout=timeout)
        return decode(reply, lambda r: r.option(lambda r: PartialUpload(r.u64(), r.raw(32))))

    async def put_resumable(
        self, name: str, data: bytes | os.PathLike[str], *, timeout: float | None = None
    ) -> Uploaded:
        """Uploads ``data`` as ``name``, going on from what the server kept of a broken
        upload when those bytes are ``data``'s start (checked by hash here and by the
        server); otherwise from the start (``restarted`` says so)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            with open(data, "rb") as f:
                data = f.read()
        data = bytes(data)
        partial = await self.partial_upload(name, timeout=timeout)
        start = 0
        if partial is not None and 0 < partial.size <= len(data):
            if hash_of(data[: partial.size]) == partial.hash:
                start = partial.size
        if start > 0 and partial is not None:
            try:
                stored = await self.put(name, data[start:], prefix_hash=partial.hash, timeout=timeout)
                return Uploaded(stored - start, start, False)
            except HandlerFailed as e:
                if "no partial upload" not in e.message:
                    raise
        stored = await self.put(name, data, timeout=timeout)
        return Uploaded(stored, 0, partial is not None)

    async def get(
        self, name: str, *, offset: int = 0, timeout: float | None = None, on_progress: Progress | None = None
    ) -> Download:
        """Starts downloading the file ``name`` from ``offset``; read the result."""
        return await self.client.download("get", name, offset=offset, timeout=timeout, on_progress=on_progress)

    async def get_bytes(self, name: str, *, timeout: float | None = None) -> bytes:
        """The whole file ``name``, verified."""
        return await (await self.get(name, timeout=timeout)).read_all()

    async def ls(self, *, timeout: float | None = None) -> list[FileInfo]:
        reply = await self.client.call("ls", timeout=timeout)
        return decode(reply, lambda r: r.seq(_file_info))

    async def stat(self, name: str, *, timeout: float | None = None) -> FileInfo:
        reply = await self.client.call("stat", encode_str(name), timeout=timeout)
        return decode(reply, _file_info)

    async def rm(self, name: str, *, timeout: float | None = None) -> None:
        _unit(await self.client.call("rm", encode_str(name), timeout=timeout))

    # ---- closing ----

    async def close(self) -> None:
        """Sends what is queued (answers to the server's pings too), then closes."""
        await self.client.close()

    async def __aenter__(self) -> LoginClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
