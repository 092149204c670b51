"""The login server's commands (docs/LOGIN.md) against a real `zserver serve`, over TCP
and over WebSocket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from servers import LoginServer, start_login_server
from zserver_client import (
    BadRequest,
    ClosedError,
    HandlerFailed,
    KickedEvent,
    LoginClient,
    Message,
    MessageEvent,
    UnknownCommand,
    hash_of,
)


VIAS = ["tcp", "websocket"]


async def login_via(via: str, server: LoginServer) -> LoginClient:
    if via == "tcp":
        return await LoginClient.connect(server.addr.host, server.addr.port, pin=server.fingerprint)
    assert server.ws is not None
    return await LoginClient.connect_ws(server.ws.ws_url, pin=server.fingerprint)


async def new_user(via: str, server: LoginServer, name: str, password: str = "pw") -> LoginClient:
    c = await login_via(via, server)
    await c.register(name, password)
    assert await c.login(name, password) == []
    return c


@pytest.mark.parametrize("via", VIAS)
async def test_accounts_and_sessions(via: str, login_server: LoginServer, unique) -> None:
    ann_name = unique("ann")
    c = await login_via(via, login_server)
    async with c:
        assert c.client.fingerprint == login_server.fingerprint
        with pytest.raises(HandlerFailed, match="not logged in: log in first"):
            await c.who()
        await c.register(ann_name, "secret")
        with pytest.raises(HandlerFailed, match="already exists"):
            await c.register(ann_name, "other")
        with pytest.raises(HandlerFailed, match="bad user name"):
            await c.register("a/b", "x")
        with pytest.raises(HandlerFailed, match="wrong user name or password"):
            await c.login(ann_name, "wrong")
        assert await c.login(ann_name, "secret") == []
        assert ann_name in await c.who()
        await c.change_password("secret", "s3cret!")
        await c.logout()
        with pytest.raises(HandlerFailed, match="not logged in"):
            await c.ls()
        with pytest.raises(HandlerFailed, match="wrong user name or password"):
            await c.login(ann_name, "secret")
        await c.login(ann_name, "s3cret!")
        with pytest.raises(UnknownCommand, match="frobnicate"):
            await c.client.call("frobnicate")
        with pytest.raises(BadRequest, match="end of buffer"):
            await c.client.call("who", b"\x01")
        await c.delete_account("s3cret!")
        with pytest.raises(HandlerFailed, match="not logged in"):
            await c.ls()
        with pytest.raises(HandlerFailed, match="wrong user name or password"):
            await c.login(ann_name, "s3cret!")


@pytest.mark.parametrize("via", VIAS)
async def test_who_pages(via: str, login_server: LoginServer, unique) -> None:
    names = [unique("who") for _ in range(3)]
    clients = [await new_user(via, login_server, n) for n in names]
    try:
        page = await clients[0].who_page(None, 1)
        assert len(page.users) == 1 and page.more and page.online >= 3
        everyone = await clients[0].who()
        assert everyone == sorted(everyone)
        assert set(names) <= set(everyone)
        after = await clients[0].who_page(names[0], 100)
        assert names[0] not in after.users and all(u > names[0] for u in after.users)
    finally:
        for c in clients:
            await c.close()


@pytest.mark.parametrize("via", VIAS)
async def test_push_delivered_stored_and_everyone(via: str, login_server: LoginServer, unique) -> None:
    ann_name, bob_name, carol_name = unique("ann"), unique("bob"), unique("carol")
    ann = await new_user(via, login_server, ann_name)
    bob = await new_user("tcp" if via == "websocket" else "websocket", login_server, bob_name)
    carol = await login_via(via, login_server)
    await carol.register(carol_name, "carol-pw")
    try:
        seen: list[Message] = []
        ann.on_message(seen.append)
        report = await bob.push([ann_name, carol_name], "hello")
        assert report.delivered == [ann_name]
        assert report.stored == [carol_name]
        assert (report.delivered_count, report.stored_count, report.unconfirmed) == (1, 1, [])
        assert await ann.next_event(5) == MessageEvent(Message(bob_name, "hello"))
        assert seen == [Message(bob_name, "hello")]
        with pytest.raises(HandlerFailed, match="no user `zoe-nobody`"):
            await bob.push(["zoe-nobody"], "hi")
        # The stored message comes with carol's login, and is then gone.
        assert await carol.login(carol_name, "carol-pw") == [Message(bob_name, "hello")]
        report = await carol.push_all("to everyone")
        assert {ann_name, bob_name, carol_name} <= set(report.delivered)
        assert (await ann.next_message(5)) == Message(carol_name, "to everyone")
        assert (await bob.next_message(5)) == Message(carol_name, "to everyone")
        await carol.logout()
        assert await carol.login(carol_name, "carol-pw") == []
    finally:
        for c in (ann, bob, carol):
            await c.close()


@pytest.mark.parametrize("via", VIAS)
async def test_files(via: str, login_server: LoginServer, unique, tmp_path) -> None:
    c = await new_user(via, login_server, unique("files"))
    async with c:
        assert await c.put("notes.txt", b"hello") == 5
        assert [(f.name, f.size) for f in await c.ls()] == [("notes.txt", 5)]
        assert await c.get_bytes("notes.txt") == b"hello"
        d = await c.get("notes.txt", offset=2)
        assert d.total == 3 and d.prefix == hash_of(b"he")
        assert await d.read_all() == b"llo"
        # A big file from a path, a binary file object and an async generator.
        big = os.urandom(3 * 1024 * 1024 + 17)
        path = tmp_path / "big.bin"
        path.write_bytes(big)
        progress: list[int] = []
        assert await c.put("big.bin", path, on_progress=lambda n, _t: progress.append(n)) == len(big)
        assert progress[-1] == len(big)
        with open(path, "rb") as f:
            assert await c.put("big2.bin", f) == len(big)

        async def pieces():
            for i in range(0, len(big), 100_000):
                yield big[i : i + 100_000]

        assert await c.put("big3.bin", pieces()) == len(big)
        for name in ("big.bin", "big2.bin", "big3.bin"):
            assert (await c.stat(name)).size == len(big)
            out = tmp_path / f"{name}.out"
            with open(out, "wb") as f:
                assert await (await c.get(name)).write_to(f) == len(big)
            assert out.read_bytes() == big
        with pytest.raises(BadRequest, match="bad file name"):
            await c.stat(".hidden")
        with pytest.raises(BadRequest, match="past the end"):
            await c.get("notes.txt", offset=99)
        await c.rm("notes.txt")
        with pytest.raises(HandlerFailed, match="no file `notes.txt`"):
            await c.stat("notes.txt")
        with pytest.raises(HandlerFailed, match="no file `notes.txt`"):
            await c.get("notes.txt")
        # A source that yields fewer bytes than announced is aborted; nothing is stored.
        with pytest.raises(ValueError, match="announced"):
            await c.put("short.bin", pieces(), total=len(big) + 1)
        assert "short.bin" not in [f.name for f in await c.ls()]


@pytest.mark.parametrize("via", VIAS)
async def test_resumed_upload(via: str, login_server: LoginServer, unique) -> None:
    c = await new_user(via, login_server, unique("resume"))
    async with c:
        data = os.urandom(700_000)
        assert await c.partial_upload("f.bin") is None

        async def broken():
            yield data[:300_000]
            raise OSError("the disk went away")

        with pytest.raises(OSError, match="disk went away"):
            await c.put("f.bin", broken(), total=len(data))
        partial = None
        for _ in range(50):  # the server keeps the part once the stream's end reached it
            partial = await c.partial_upload("f.bin")
            if partial is not None:
                break
            await asyncio.sleep(0.05)
        assert partial is not None and 0 < partial.size <= 300_000
        assert partial.hash == hash_of(data[: partial.size])
        done = await c.put_resumable("f.bin", data)
        assert done.resumed_from == partial.size and not done.restarted
        assert done.written == len(data) - partial.size
        assert await c.get_bytes("f.bin") == data
        assert await c.partial_upload("f.bin") is None


@pytest.fixture(scope="module")
def single_session_server() -> Iterator[LoginServer]:
    s = start_login_server(ws=True, extra=["--max-sessions", "1"])
    yield s
    s.stop()


@pytest.mark.parametrize("via", VIAS)
async def test_second_login_kicks_the_first(via: str, single_session_server: LoginServer, unique) -> None:
    """One session per user (`--max-sessions 1`): a second login ends the first."""
    login_server = single_session_server
    name = unique("kick")
    first = await new_user(via, login_server, name)
    second = await login_via(via, login_server)
    try:
        assert await second.login(name, "pw") == []
        event = await first.next_event(5)
        assert isinstance(event, KickedEvent)
        assert event.reason.startswith("logged in from another connection")
        # The server closes the kicked connection; the client sees the end, not a hang.
        assert await asyncio.wait_for(first.next_event(), 5) is None
        why = await asyncio.wait_for(first.client.wait_closed(), 5)
        assert isinstance(why, ClosedError)
        with pytest.raises(ClosedError):
            await first.who()
        assert name in await second.who()
    finally:
        await first.close()
        await second.close()
