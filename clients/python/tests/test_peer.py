"""The client against the Rust engine itself (examples/interop_peer.rs): handshake and
pinning, calls and sends both ways, rekeying both ways, streams; over TCP and WebSocket."""

from __future__ import annotations

import asyncio
import os

import pytest

from servers import Addr, Peer
from zserver_client import (
    BadRequest,
    Client,
    FrameTooLargeError,
    HandlerContext,
    HandlerFailed,
    HandshakeError,
    KeyMismatchError,
    Denied,
    Reader,
    RekeyPolicy,
    StreamStoppedError,
    UnknownCommand,
    Writer,
    connect,
    connect_ws,
    hash_of,
)

VIAS = ["tcp", "websocket"]


def enc(p: Peer, via: str) -> Addr:
    return p.encrypted if via == "tcp" else p.encrypted_ws


def plain_of(p: Peer, via: str) -> Addr:
    return p.plain if via == "tcp" else p.plain_ws


async def connect_via(via: str, addr: Addr, **kw: object) -> Client:
    if via == "tcp":
        return await asyncio.wait_for(connect(addr.host, addr.port, **kw), 10)  # type: ignore[arg-type]
    return await asyncio.wait_for(connect_ws(addr.ws_url, **kw), 10)  # type: ignore[arg-type]


def blob(start: int, end: int) -> bytes:
    """What `blob` sends: byte i is (i * 7 + i // 256) mod 256."""
    return bytes((i * 7 + i // 256) & 0xFF for i in range(start, end))


@pytest.mark.parametrize("via", VIAS)
async def test_pinned_server_accepted_other_refused(via: str, peer: Peer, rekeying_peer: Peer) -> None:
    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint) as c:
        assert c.fingerprint == peer.fingerprint
        assert await c.console("hello", "pinned") == "hello, pinned"
    assert c.is_closed and await c.wait_closed() is None
    with pytest.raises(KeyMismatchError) as e:
        await connect_via(via, enc(peer, via), pin=rekeying_peer.fingerprint)
    assert peer.fingerprint in str(e.value)


@pytest.mark.parametrize("via", VIAS)
async def test_calls(via: str, peer: Peer) -> None:
    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint) as c:
        for n in (0, 1, 1000, 100_000, 3_000_000):
            payload = os.urandom(n)
            assert await c.call("echo", payload) == payload
        assert await c.console("hello", "wörld") == "hello, wörld"
        assert Reader(await c.call("add", Writer().i64(2).i64(-3).finish())).i64() == -1
        with pytest.raises(HandlerFailed, match="always fails"):
            await c.console("fail", "")
        with pytest.raises(UnknownCommand, match="nope"):
            await c.call("nope")
        with pytest.raises(BadRequest):
            await c.call("add", b"x")
        # Larger than the frame limit: refused locally, and the connection stays up.
        with pytest.raises(FrameTooLargeError):
            await c.call("echo", bytes(4 * 1024 * 1024))
        replies = await asyncio.gather(*(c.console("hello", str(i)) for i in range(500)))
        assert replies == [f"hello, {i}" for i in range(500)]
        assert await c.ping(timeout=5) >= 0
        assert c.stats().in_flight == 0


@pytest.mark.parametrize("via", VIAS)
async def test_sends_arrive_in_order_before_a_later_call(via: str, peer: Peer) -> None:
    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint) as c:
        before = Reader(await c.call("count")).u64()
        for i in range(300):
            await c.send("sink", f"m{i}".encode())
        assert Reader(await c.call("count")).u64() - before == 300


@pytest.mark.parametrize("via", VIAS)
async def test_the_server_calls_and_pushes_to_the_client(via: str, peer: Peer) -> None:
    notes: asyncio.Queue[str] = asyncio.Queue()

    def note(payload: bytes, ctx: HandlerContext) -> None:
        assert ctx.one_way
        notes.put_nowait(payload.decode())

    async def whoami(text: str, ctx: HandlerContext) -> str:
        assert not ctx.one_way
        await asyncio.sleep(0)
        return f"a Python client ({text})"

    def refuse(_payload: bytes, _ctx: HandlerContext) -> bytes:
        raise Denied("not you")

    def crash(_payload: bytes, _ctx: HandlerContext) -> bytes:
        raise RuntimeError("handler bug")

    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint, handlers={"note": note}) as c:
        c.handle_console("whoami", whoami).handle("refuse", refuse).handle("crash", crash)
        assert await c.console("call-me-back", "whoami") == "client answered: a Python client (from the server)"
        assert "missing" in await c.console("call-me-back", "missing")
        assert "not you" in await c.console("call-me-back", "refuse")
        assert "handler bug" in await c.console("call-me-back", "crash")
        await c.console("push-me", "pushed text")
        assert await asyncio.wait_for(notes.get(), 5) == "pushed text"


@pytest.mark.parametrize("via", VIAS)
async def test_plain_mode_and_mode_mismatch(via: str, peer: Peer) -> None:
    async with await connect_via(via, plain_of(peer, via), encrypted=False) as c:
        assert c.fingerprint is None
        assert await c.console("hello", "plain") == "hello, plain"
    with pytest.raises(HandshakeError):
        await connect_via(via, plain_of(peer, via))
    with pytest.raises(HandshakeError):
        await connect_via(via, enc(peer, via), encrypted=False)


def read_pair(b: bytes) -> tuple[int, int]:
    r = Reader(b)
    return r.u64(), r.u64()


@pytest.mark.parametrize("via", VIAS)
async def test_the_client_rekeys_and_the_server_follows(via: str, peer: Peer) -> None:
    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint, rekey=RekeyPolicy(records=3)) as c:
        for i in range(40):
            assert await c.console("hello", str(i)) == f"hello, {i}"
        sent = c.stats().rekeys_sent
        assert sent >= 12
        followed, _ = read_pair(await c.call("rekeys"))
        assert followed >= sent - 1


@pytest.mark.parametrize("via", VIAS)
async def test_the_client_follows_the_servers_rekeys(via: str, rekeying_peer: Peer) -> None:
    async with await connect_via(via, enc(rekeying_peer, via), pin=rekeying_peer.fingerprint) as c:
        for i in range(40):
            assert await c.console("hello", str(i)) == f"hello, {i}"
        _, server_rekeys = read_pair(await c.call("rekeys"))
        assert server_rekeys >= 12
        assert c.stats().rekeys_received >= server_rekeys


@pytest.mark.parametrize("via", VIAS)
async def test_uploads(via: str, peer: Peer) -> None:
    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint) as c:
        for n in (0, 5, 262_144, 5 * 1024 * 1024 + 3):
            data = os.urandom(n)
            reply = await c.upload("store", b"meta", data)
            assert reply[:32] == hash_of(data) and int.from_bytes(reply[32:], "little") == n

        async def gen():
            for _ in range(40):
                yield bytes(100_000)

        assert int.from_bytes(await c.upload("bulk", "", gen()), "little") == 4_000_000
        # Two uploads at once share the connection.
        a, b = await asyncio.gather(c.upload("store", "", bytes(2_000_000)), c.upload("store", "", b"x" * 1_500_000))
        assert a[:32] == hash_of(bytes(2_000_000)) and b[:32] == hash_of(b"x" * 1_500_000)
        # An upload to a command that takes none is refused, and the connection stays up.
        with pytest.raises(BadRequest):
            await c.upload("echo", "", b"abc")
        assert await c.console("hello", "still up") == "hello, still up"


@pytest.mark.parametrize("via", VIAS)
async def test_downloads(via: str, peer: Peer) -> None:
    async with await connect_via(via, enc(peer, via), pin=peer.fingerprint) as c:
        for n in (0, 10, 3_000_000):
            d = await c.download("blob", str(n))
            assert d.total == n
            assert await d.read_all() == blob(0, n)
        d = await c.download("blob", "100000", offset=300)
        # `blob` sends from memory (Outgoing::bytes), which may leave `prefix` out (PROTOCOL.md 5b).
        assert d.total == 100_000 - 300 and d.prefix in (None, hash_of(blob(0, 300)))
        assert await d.read_all() == blob(300, 100_000)
        # Cancelling stops the stream; the connection stays up.
        d = await c.download("blob", "50000000")
        first = await d.read()
        assert first is not None and len(first) > 0
        d.cancel()
        with pytest.raises(StreamStoppedError):
            await d.read()
        assert await c.console("hello", "after stop") == "hello, after stop"
        # A download nobody reads holds the connection's other calls up no more than credit allows.
        idle = await c.download("blob", "10000000")
        assert await c.console("hello", "beside") == "hello, beside"
        await asyncio.sleep(0.2)
        assert idle.received <= 256 * 1024
        idle.cancel()
        with pytest.raises(BadRequest):
            await c.download("hello", "x")
        with pytest.raises(BadRequest):
            await c.download("blob", "not a number")
