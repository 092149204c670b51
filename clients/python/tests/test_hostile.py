"""Hostile and broken servers: the client raises a clear error, in bounded time, and never
hangs. Fake servers here are written in Python on loopback; the real ones are the Rust
login server."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable

import pytest

from servers import LoginServer
from zserver_client import (
    ClosedError,
    HandshakeError,
    IdleTimeoutError,
    IntegrityError,
    KeyMismatchError,
    LoginClient,
    ProtocolError,
    StreamAbortedError,
    connect,
    connect_ws,
)
from zserver_client.frame import DOWNLOAD, Kind, encode_frame

PLAIN = b"ZSRV\x01\x00\x00\x00"
ENCRYPTED = b"ZSRV\x01\x00\x01\x00"

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeServer:
    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.port = 0
        self.server: asyncio.Server | None = None
        self.received = bytearray()

    async def __aenter__(self) -> FakeServer:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await self.serve(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def frame(kind: int, id: int = 0, command: bytes = b"", payload: bytes = b"", flags: int = 0) -> bytes:
    return encode_frame(kind, flags, id, command, payload)


async def read_frame(r: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    (n,) = struct.unpack("<I", await r.readexactly(4))
    body = await r.readexactly(n)
    return body[0], body[1], body[2], body  # small ids only: kind, flags, id


async def bounded(coro: Awaitable[object], seconds: float = 5) -> object:
    return await asyncio.wait_for(coro, seconds)


async def test_a_bad_pin_is_refused_before_anything_is_sent(login_server: LoginServer) -> None:
    other = "00" * 32
    with pytest.raises(KeyMismatchError) as e:
        await bounded(connect(login_server.addr.host, login_server.addr.port, pin=other))
    assert login_server.fingerprint in str(e.value) and e.value.expected == other
    with pytest.raises(ValueError, match="64 hex digits"):
        await connect(login_server.addr.host, login_server.addr.port, pin="not hex")
    assert login_server.ws is not None
    with pytest.raises(KeyMismatchError):
        await bounded(connect_ws(login_server.ws.ws_url, pin=other))


async def test_plain_against_encrypted_and_not_a_websocket_port(login_server: LoginServer) -> None:
    with pytest.raises(HandshakeError, match="plain .* encrypted"):
        await bounded(connect(login_server.addr.host, login_server.addr.port, encrypted=False))
    with pytest.raises(ClosedError, match="WebSocket upgrade"):
        await bounded(connect_ws(f"ws://127.0.0.1:{login_server.addr.port}/", pin=login_server.fingerprint))


async def test_refused_connect_names_the_address() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ClosedError, match=f"127.0.0.1:{port}"):
        await bounded(connect("127.0.0.1", port))


async def test_not_a_zserver_server() -> None:
    async def http(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await w.drain()
        await r.read(100)

    async with FakeServer(http) as s:
        with pytest.raises(HandshakeError, match="not a zserver server"):
            await bounded(connect("127.0.0.1", s.port))


async def test_a_silent_server_fails_the_handshake_in_time() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async with FakeServer(silent) as s:
        t0 = time.monotonic()
        with pytest.raises(HandshakeError, match="did not finish within 0.5 s"):
            await connect("127.0.0.1", s.port, handshake_timeout=0.5)
        assert time.monotonic() - t0 < 2


async def test_a_server_that_hangs_up_in_the_handshake() -> None:
    async def preamble_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(ENCRYPTED)
        await w.drain()
        await r.readexactly(8 + 2 + 32)

    async with FakeServer(preamble_then_close) as s:
        with pytest.raises(HandshakeError, match="closed the connection during the handshake"):
            await bounded(connect("127.0.0.1", s.port))

    async def garbage_message_2(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(ENCRYPTED + struct.pack("<H", 96) + bytes(range(96)))
        await w.drain()
        await r.read(1000)

    async with FakeServer(garbage_message_2) as s:
        with pytest.raises(HandshakeError):
            await bounded(connect("127.0.0.1", s.port))

    async def huge_message_2(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(ENCRYPTED + struct.pack("<H", 60000))
        await w.drain()
        await r.read(1000)

    async with FakeServer(huge_message_2) as s:
        with pytest.raises(HandshakeError, match="at most 1024"):
            await bounded(connect("127.0.0.1", s.port))

    async def other_version(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"ZSRV\x02\x00\x00\x00")
        await w.drain()
        await r.read(100)

    async with FakeServer(other_version) as s:
        with pytest.raises(HandshakeError, match="version 2"):
            await bounded(connect("127.0.0.1", s.port, encrypted=False))


async def plain_server(script: Serve) -> FakeServer:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await r.readexactly(8) == PLAIN
        w.write(PLAIN)
        await w.drain()
        await script(r, w)

    return FakeServer(serve)


async def test_a_call_in_flight_fails_when_the_server_closes() -> None:
    async def close_on_call(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_frame(r)

    async with await plain_server(close_on_call) as s:
        c = await bounded(connect("127.0.0.1", s.port, encrypted=False))
        with pytest.raises(ClosedError, match="server closed the connection"):
            await bounded(c.call("anything", b"x"))
        assert c.is_closed
        with pytest.raises(ClosedError):
            await c.call("again")
        with pytest.raises(ClosedError):
            await c.send("again")
        assert isinstance(await bounded(c.wait_closed()), ClosedError)
        await c.close()  # closing twice is fine


@pytest.mark.parametrize(
    "bad, message",
    [
        (struct.pack("<I", 5 * 1024 * 1024), "exceeds the limit"),
        (struct.pack("<I", 4) + b"\x0c\x00\x00\x00", "unknown frame kind 12"),
        (struct.pack("<I", 2) + b"\x00\x00", "truncated"),
        (struct.pack("<I", 6) + b"\x01\x00\x00\x02\xff\xfe", "not UTF-8"),
        (frame(Kind.DATA, 1, flags=3), "exactly one direction"),
        (frame(Kind.PING, 1, flags=0x80), "no codec"),
        (struct.pack("<I", 10) + b"\x00", "middle of a frame"),
    ],
)
async def test_protocol_errors_close_the_connection(bad: bytes, message: str) -> None:
    async def send_bad(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_frame(r)
        w.write(bad)
        await w.drain()
        await asyncio.sleep(0.2)

    async with await plain_server(send_bad) as s:
        c = await bounded(connect("127.0.0.1", s.port, encrypted=False))
        with pytest.raises(ClosedError) as e:
            await bounded(c.call("x"))
        why = await c.wait_closed()
        assert isinstance(why, (ProtocolError, ClosedError)), why
        assert message in str(why) or message in str(e.value.__cause__), (why, e.value)


async def test_download_beyond_credit_and_bad_hash() -> None:
    async def download_server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            kind, flags, id, body = await read_frame(r)
            if kind != Kind.CALL:
                continue
            meta = body[-1:]
            head = b"\x00\x00"  # total unknown, no meta
            w.write(frame(Kind.REPLY, id, payload=head, flags=DOWNLOAD))
            if meta == b"h":  # a wrong hash
                w.write(frame(Kind.DATA, id, payload=b"abc", flags=DOWNLOAD))
                w.write(frame(Kind.END, id, payload=bytes(32), flags=DOWNLOAD))
            elif meta == b"a":  # aborted
                w.write(frame(Kind.DATA, id, payload=b"abc", flags=DOWNLOAD))
                w.write(frame(Kind.ABORT, id, payload=b"disk on fire", flags=DOWNLOAD))
            else:  # more than the initial credit of 256 KiB
                w.write(frame(Kind.DATA, id, payload=bytes(300_000), flags=DOWNLOAD))
            await w.drain()

    async with await plain_server(download_server) as s:
        c = await bounded(connect("127.0.0.1", s.port, encrypted=False))
        d = await bounded(c.download("get", "h"))
        with pytest.raises(IntegrityError, match="hash"):
            await bounded(d.read_all())
        d = await bounded(c.download("get", "a"))
        with pytest.raises(StreamAbortedError, match="disk on fire"):
            await bounded(d.read_all())
        d = await bounded(c.download("get", "c"))
        with pytest.raises(ClosedError):
            await bounded(d.read_all())
        why = await bounded(c.wait_closed())
        assert isinstance(why, ProtocolError) and "credit" in str(why)


async def test_idle_timeout_and_heartbeat() -> None:
    pings: list[int] = []

    async def quiet(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            kind, _flags, id, _ = await read_frame(r)
            if kind == Kind.PING:
                pings.append(id)

    async with await plain_server(quiet) as s:
        c = await bounded(connect("127.0.0.1", s.port, encrypted=False, heartbeat=0.2, idle_timeout=0.8))
        why = await bounded(c.wait_closed())
        assert isinstance(why, IdleTimeoutError)
        assert pings and pings[0] == 0
        with pytest.raises(ClosedError, match="nothing heard"):
            await c.call("x")


async def test_closing_right_after_login_still_answers_the_confirming_ping(
    login_server: LoginServer, unique
) -> None:
    """LOGIN.md: stored messages stay stored until the client's Pong shows it read the reply."""
    name, sender = unique("ann"), unique("bob")
    bob = await LoginClient.connect(login_server.addr.host, login_server.addr.port, pin=login_server.fingerprint)
    await bob.register(sender, "pw")
    await bob.login(sender, "pw")
    ann = await LoginClient.connect(login_server.addr.host, login_server.addr.port, pin=login_server.fingerprint)
    await ann.register(name, "pw")
    await bob.push([name], "while you were out")
    assert [m.text for m in await ann.login(name, "pw")] == ["while you were out"]
    await asyncio.sleep(0.3)  # the server's Ping arrives and is answered
    await ann.close()
    again = await LoginClient.connect(login_server.addr.host, login_server.addr.port, pin=login_server.fingerprint)
    assert await again.login(name, "pw") == []  # confirmed: not handed over twice
    await again.close()
    await bob.close()


class FlippingProxy:
    """Forwards to a real server, flipping one bit of the server's byte number `at`."""

    def __init__(self, target_port: int, at: int) -> None:
        self.target_port = target_port
        self.at = at

    async def __aenter__(self) -> FlippingProxy:
        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, flip: bool) -> None:
            seen = 0
            try:
                while data := await r.read(65536):
                    if flip and seen <= self.at < seen + len(data):
                        b = bytearray(data)
                        b[self.at - seen] ^= 0x01
                        data = bytes(b)
                    seen += len(data)
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(pipe(cr, sw, False), pipe(sr, cw, True))

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def test_tampering_on_the_path_is_detected(login_server: LoginServer) -> None:
    port, pin = login_server.addr.port, login_server.fingerprint
    # A flipped flags bit in the server's preamble: the prologues differ, the handshake fails.
    async with FlippingProxy(port, 7) as p:
        with pytest.raises(HandshakeError):
            await bounded(connect("127.0.0.1", p.port, pin=pin))
    # A flipped bit inside Noise message 2 (the server's encrypted static key).
    async with FlippingProxy(port, 8 + 2 + 40) as p:
        with pytest.raises(HandshakeError):
            await bounded(connect("127.0.0.1", p.port, pin=pin))
    # A flipped bit in the first record after the handshake (8 + 2 + 96 bytes before it).
    async with FlippingProxy(port, 8 + 2 + 96 + 10) as p:
        c = await bounded(connect("127.0.0.1", p.port, pin=pin))
        with pytest.raises(ClosedError):
            await bounded(c.call("who", b"\x00\x01"))
        why = await bounded(c.wait_closed())
        assert isinstance(why, ProtocolError) and "authentication" in str(why)


async def test_a_server_shutting_down_says_go_away_then_closes(unique) -> None:
    from servers import start_login_server

    server = start_login_server(ws=False)
    try:
        c = await bounded(LoginClient.connect(server.addr.host, server.addr.port, pin=server.fingerprint))
        await c.register(unique("ann"), "pw")
        went: list[bool] = []
        c.client.on_go_away(lambda: went.append(True))
        await asyncio.to_thread(server.child.stop, "sigint")
        why = await bounded(c.client.wait_closed(), 15)
        assert isinstance(why, ClosedError)
        assert c.client.going_away and went == [True]
        with pytest.raises(ClosedError):
            await c.who()
    finally:
        server.stop()
