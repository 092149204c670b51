"""Channels (PROTOCOL.md section 6c): subscribe with recovery from a position, publish,
presence, history, and the server's ``$ch.`` sends, delivered to :class:`Subscription`\\ s.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

from .errors import BadRequest, CallTimeoutError, ClosedError, CodecError, ZserverError
from .postcard import Reader, Writer, decode, encode_str

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "Channels",
    "Subscription",
    "Position",
    "Publication",
    "Member",
    "HistoryPage",
    "Subscribed",
    "PublicationEvent",
    "JoinEvent",
    "LeaveEvent",
    "UnsubscribedEvent",
    "ChannelEvent",
]


@dataclass(frozen=True)
class Position:
    """Where a channel's history is: ``epoch`` names the history, ``offset`` counts from 1."""

    epoch: int
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


@dataclass(frozen=True)
class Publication:
    offset: int
    #: The user the server knows the publisher as (empty: the server's own code).
    sender: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Member:
    client: int
    user: str
    info: bytes


@dataclass(frozen=True)
class HistoryPage:
    position: Position
    publications: list[Publication]


@dataclass(frozen=True)
class Subscribed:
    position: Position | None
    recovered: bool
    publications: list[Publication]


@dataclass(frozen=True)
class PublicationEvent:
    publication: Publication
    type: Literal["publication"] = "publication"


@dataclass(frozen=True)
class JoinEvent:
    member: Member
    type: Literal["join"] = "join"


@dataclass(frozen=True)
class LeaveEvent:
    member: Member
    type: Literal["leave"] = "leave"


@dataclass(frozen=True)
class UnsubscribedEvent:
    reason: str
    type: Literal["unsubscribed"] = "unsubscribed"


ChannelEvent = Union[PublicationEvent, JoinEvent, LeaveEvent, UnsubscribedEvent]

# ---- postcard, field order as PROTOCOL.md lists it ----


def _w_position(w: Writer, p: Position) -> None:
    w.u64(p.epoch).u64(p.offset)


def _r_position(r: Reader) -> Position:
    return Position(r.u64(), r.u64())


def _r_publication(r: Reader) -> Publication:
    return Publication(r.u64(), r.str(), r.bytes())


def _r_member(r: Reader) -> Member:
    return Member(r.u64(), r.str(), r.bytes())


def encode_subscribe(channel: str, since: Position | None) -> bytes:
    return Writer().str(channel).option(since, _w_position).finish()


def decode_subscribed(buf: bytes) -> Subscribed:
    return decode(
        buf, lambda r: Subscribed(r.option(_r_position), r.bool(), r.seq(_r_publication))
    )


def encode_publish(channel: str, data: bytes) -> bytes:
    return Writer().str(channel).bytes(data).finish()


def encode_history(channel: str, since: Position | None, limit: int) -> bytes:
    return Writer().str(channel).option(since, _w_position).u32(limit).finish()


def decode_history(buf: bytes) -> HistoryPage:
    return decode(buf, lambda r: HistoryPage(_r_position(r), r.seq(_r_publication)))


DEFAULT_MAX_QUEUED = 100_000


class Subscription:
    """One channel subscription: iterate its events (``async for event in sub``), or
    :meth:`next`. ``position`` is the position of the last publication taken from it:
    keep it and subscribe again with ``since=`` to recover what was missed.
    """

    def __init__(self, owner: Channels, channel: str, since: Position | None, max_queued: int) -> None:
        self._owner = owner
        self.channel = channel
        self._max_queued = max_queued
        self._last = since
        self._taken = since
        self._queue: deque[tuple[ChannelEvent, Position | None]] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self.end_reason: str | None = None
        self.recovered = True
        #: The channel's position when the subscription took effect.
        self.start: Position | None = None

    @property
    def position(self) -> Position | None:
        return self._taken

    @property
    def ended(self) -> bool:
        return self._ended

    async def next(self, timeout: float | None = None) -> ChannelEvent | None:
        """The next event, or None once the subscription has ended and none are left."""
        async def wait() -> ChannelEvent | None:
            while not self._queue:
                if self._ended:
                    return None
                self._ready.clear()
                await self._ready.wait()
            event, position = self._queue.popleft()
            if position is not None:
                self._taken = position
            return event

        if timeout is None:
            return await wait()
        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise CallTimeoutError(f"no event on `{self.channel}` within {timeout:g} s") from None

    async def next_publication(self, timeout: float | None = None) -> Publication | None:
        """The next publication (join and leave events before it are skipped)."""
        while True:
            event = await self.next(timeout)
            if event is None or isinstance(event, UnsubscribedEvent):
                return None
            if isinstance(event, PublicationEvent):
                return event.publication

    def __aiter__(self) -> AsyncIterator[ChannelEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[ChannelEvent]:
        while (event := await self.next()) is not None:
            yield event

    async def unsubscribe(self, *, timeout: float | None = None) -> None:
        if self._ended:
            return
        self._end(None)
        await self._owner._release(self, timeout)

    # ---- internal ----

    def _settle(self, answer: Subscribed, since: Position | None, held: list[ChannelEvent]) -> None:
        self.recovered = answer.recovered
        self.start = answer.position
        if since is not None:
            for p in answer.publications:
                self._publication(p)
        self._last = answer.position
        if not self._queue:
            self._taken = self._last
        for event in held:
            self._deliver(event)

    def _deliver(self, event: ChannelEvent) -> None:
        if self._ended:
            return
        if isinstance(event, PublicationEvent):
            self._publication(event.publication)
            return
        self._push(event, None)
        if isinstance(event, UnsubscribedEvent):
            self._end(event.reason)

    def _publication(self, p: Publication) -> None:
        position = None
        if p.offset > 0 and self._last is not None:
            if p.offset <= self._last.offset:
                return  # had it already (a delivery that overtook the answer)
            self._last = Position(self._last.epoch, p.offset)
            position = self._last
        self._push(PublicationEvent(p), position)

    def _push(self, event: ChannelEvent, position: Position | None) -> None:
        if len(self._queue) >= self._max_queued and not isinstance(event, UnsubscribedEvent):
            self._queue.append((UnsubscribedEvent("too many events unread"), None))
            self._end("too many events unread")
            self._owner._release_soon(self)
            return
        self._queue.append((event, position))
        self._ready.set()

    def _end(self, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.end_reason = reason
        self._owner._forget(self)
        self._ready.set()


class _Slot:
    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.held: list[ChannelEvent] | None = []


class Channels:
    """A connection's channels; made by :attr:`Client.channels`, which registers the
    handlers of the server's ``$ch.p``, ``$ch.join``, ``$ch.leave`` and ``$ch.unsubscribed``.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._slots: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        client.handle("$ch.p", self._on_delivery)
        client.handle("$ch.join", lambda b, _c: self._on_presence(b, JoinEvent))
        client.handle("$ch.leave", lambda b, _c: self._on_presence(b, LeaveEvent))
        client.handle("$ch.unsubscribed", self._on_unsubscribed)
        client.on_close(self._on_close)

    def _on_delivery(self, payload: bytes, _ctx: object) -> None:
        channel, p = decode(payload, lambda r: (r.str(), _r_publication(r)))
        self._route(channel, PublicationEvent(p))

    def _on_presence(self, payload: bytes, cls: type[JoinEvent] | type[LeaveEvent]) -> None:
        channel, member = decode(payload, lambda r: (r.str(), _r_member(r)))
        self._route(channel, cls(member))

    def _on_unsubscribed(self, payload: bytes, _ctx: object) -> None:
        channel, reason = decode(payload, lambda r: (r.str(), r.str()))
        self._route(channel, UnsubscribedEvent(reason))

    def _on_close(self, _why: ZserverError | None) -> None:
        for slot in list(self._slots.values()):
            slot.sub._end(None)
        self._slots.clear()

    def _route(self, channel: str, event: ChannelEvent) -> None:
        slot = self._slots.get(channel)
        if slot is None:
            return  # no subscription to that channel: ignored
        if slot.held is not None:
            slot.held.append(event)
        else:
            slot.sub._deliver(event)

    @property
    def subscriptions(self) -> list[Subscription]:
        return [s.sub for s in self._slots.values()]

    async def subscribe(
        self,
        channel: str,
        *,
        since: Position | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribes; with ``since``, recovers the publications after it (``recovered``
        says whether the server still had them all)."""
        if channel in self._slots:
            raise BadRequest(f"already subscribed to `{channel}`")
        sub = Subscription(self, channel, since, max_queued)
        slot = _Slot(sub)
        self._slots[channel] = slot
        try:
            reply = await self.client.call("$ch.sub", encode_subscribe(channel, since), timeout=timeout)
            answer = decode_subscribed(reply)
        except BaseException as e:
            if self._slots.get(channel) is slot:
                del self._slots[channel]
            if isinstance(e, (CallTimeoutError, CodecError)) and not self.client.is_closed:
                # The server may hold the subscription: undo it there.
                self._spawn(self._unsub_quietly(channel))
            raise
        if self._slots.get(channel) is not slot:
            raise ClosedError(f"the connection closed while subscribing to `{channel}`")
        held = slot.held or []
        slot.held = None
        sub._settle(answer, since, held)
        return sub

    async def publish(self, channel: str, data: bytes | str, *, timeout: float | None = None) -> Position | None:
        """Publishes; returns the publication's position (None: the channel keeps no history)."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        reply = await self.client.call("$ch.pub", encode_publish(channel, raw), timeout=timeout)
        return decode(reply, lambda r: r.option(_r_position))

    async def presence(self, channel: str, *, timeout: float | None = None) -> list[Member]:
        reply = await self.client.call("$ch.presence", encode_str(channel), timeout=timeout)
        return decode(reply, lambda r: r.seq(_r_member))

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int = 100, timeout: float | None = None
    ) -> HistoryPage:
        """Publications after ``since`` (from the oldest kept without it), at most ``limit``."""
        reply = await self.client.call("$ch.history", encode_history(channel, since, limit), timeout=timeout)
        return decode_history(reply)

    # ---- internal ----

    def _forget(self, sub: Subscription) -> None:
        slot = self._slots.get(sub.channel)
        if slot is not None and slot.sub is sub:
            del self._slots[sub.channel]

    async def _release(self, sub: Subscription, timeout: float | None) -> None:
        self._forget(sub)
        if self.client.is_closed:
            return
        reply = await self.client.call("$ch.unsub", encode_str(sub.channel), timeout=timeout)
        if reply:
            raise CodecError(f"expected an empty reply, got {len(reply)} bytes")

    def _release_soon(self, sub: Subscription) -> None:
        self._spawn(self._unsub_quietly(sub.channel))

    async def _unsub_quietly(self, channel: str) -> None:
        try:
            await self.client.call("$ch.unsub", encode_str(channel))
        except ZserverError:
            pass

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
