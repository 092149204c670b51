"""Channels (PROTOCOL.md section 6c, LOGIN.md section 6b) against the login server's
default `chat` namespace: durable history, presence, join and leave events."""

from __future__ import annotations

import pytest

from servers import LoginServer
from zserver_client import (
    BadRequest,
    Denied,
    JoinEvent,
    LeaveEvent,
    LoginClient,
    OverLimit,
    Position,
    PublicationEvent,
)

from test_login import VIAS, login_via


async def user(via: str, server: LoginServer, name: str) -> LoginClient:
    c = await login_via(via, server)
    await c.register(name, "pw")
    await c.login(name, "pw")
    return c


@pytest.mark.parametrize("via", VIAS)
async def test_publish_subscribe_presence_history(via: str, login_server: LoginServer, unique) -> None:
    ann_name, bob_name = unique("ann"), unique("bob")
    channel = f"chat:{unique('room')}"
    ann = await user(via, login_server, ann_name)
    bob = await user(via, login_server, bob_name)
    try:
        sub = await ann.client.channels.subscribe(channel)
        assert sub.recovered and sub.start is not None
        bob_sub = await bob.client.channels.subscribe(channel)
        joined = await sub.next(5)
        assert isinstance(joined, JoinEvent) and joined.member.user == bob_name
        members = await ann.client.channels.presence(channel)
        assert sorted(m.user for m in members) == sorted([ann_name, bob_name])
        positions = [await bob.client.channels.publish(channel, f"m{i}") for i in range(3)]
        assert all(isinstance(p, Position) for p in positions)
        assert [p.offset for p in positions] == [positions[0].offset + i for i in range(3)]
        for i in range(3):
            p = await sub.next_publication(5)
            assert p is not None and (p.sender, p.text, p.offset) == (bob_name, f"m{i}", positions[i].offset)
        # The publisher gets its own publications too.
        assert [(await bob_sub.next_publication(5)).text for _ in range(3)] == ["m0", "m1", "m2"]
        assert sub.position == positions[-1]
        page = await ann.client.channels.history(channel, limit=10)
        assert [p.text for p in page.publications] == ["m0", "m1", "m2"]
        assert page.position == positions[-1]
        page = await ann.client.channels.history(channel, since=positions[0], limit=1)
        assert [p.text for p in page.publications] == ["m1"]
        await bob_sub.unsubscribe()
        event = await sub.next(5)
        assert isinstance(event, LeaveEvent) and event.member.user == bob_name
        with pytest.raises(BadRequest, match="already subscribed"):
            await ann.client.channels.subscribe(channel)
        await sub.unsubscribe()
        assert sub.ended and await sub.next(1) is None
    finally:
        await ann.close()
        await bob.close()


@pytest.mark.parametrize("via", VIAS)
async def test_recovery_from_a_position(via: str, login_server: LoginServer, unique) -> None:
    channel = f"chat:{unique('rec')}"
    ann = await user(via, login_server, unique("ann"))
    bob = await user(via, login_server, unique("bob"))
    try:
        sub = await ann.client.channels.subscribe(channel)
        await bob.client.channels.publish(channel, "one")
        assert (await sub.next_publication(5)).text == "one"
        kept = sub.position
        await sub.unsubscribe()
        await bob.client.channels.publish(channel, "two")
        await bob.client.channels.publish(channel, "three")
        # Subscribing again from the kept position gives what was missed, in order.
        again = await ann.client.channels.subscribe(channel, since=kept)
        assert again.recovered
        assert [(await again.next_publication(5)).text for _ in range(2)] == ["two", "three"]
        await bob.client.channels.publish(channel, "four")
        assert (await again.next_publication(5)).text == "four"
        await again.unsubscribe()
        # A position of another epoch cannot be recovered from.
        lost = await ann.client.channels.subscribe(channel, since=Position(kept.epoch + 1, 1))
        assert not lost.recovered
        await lost.unsubscribe()
    finally:
        await ann.close()
        await bob.close()


@pytest.mark.parametrize("via", VIAS)
async def test_channel_refusals(via: str, login_server: LoginServer, unique) -> None:
    anon = await login_via(via, login_server)
    ann = await user(via, login_server, unique("ann"))
    try:
        with pytest.raises(Denied, match="log in"):
            await anon.client.channels.subscribe("chat:x")
        with pytest.raises(Denied, match="no namespace"):
            await ann.client.channels.publish("nowhere:x", "hi")
        with pytest.raises(OverLimit):
            await ann.client.channels.publish("chat:x", b"x" * (64 * 1024 + 1))
        with pytest.raises(BadRequest):
            await ann.client.channels.subscribe("")
        # After refusals the connection works on.
        assert await ann.client.channels.publish(f"chat:{unique('ok')}", "fine") is not None
    finally:
        await anon.close()
        await ann.close()


async def test_a_subscription_sees_each_publication_once_in_order(login_server: LoginServer, unique) -> None:
    channel = f"chat:{unique('order')}"
    ann = await user("tcp", login_server, unique("ann"))
    bob = await user("websocket", login_server, unique("bob"))
    try:
        sub = await ann.client.channels.subscribe(channel)
        sent = [f"n{i}" for i in range(200)]
        for text in sent:
            await bob.client.channels.publish(channel, text)
        got = []
        while len(got) < len(sent):
            event = await sub.next(5)
            assert isinstance(event, PublicationEvent | JoinEvent)
            if isinstance(event, PublicationEvent):
                got.append(event.publication.text)
        assert got == sent
    finally:
        await ann.close()
        await bob.close()
