"""The README's examples really run: each ```python block, with its address and pin lines
pointed at a real server, exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import LoginServer, Peer, start_login_server

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def fresh_login_server() -> Iterator[LoginServer]:
    s = start_login_server(ws=True)
    yield s
    s.stop()


def run(code: str, host: str, port: int, ws_port: int, pin: str) -> str:
    code, n = re.subn(r"^HOST, PORT, WS_PORT = .*$", f"HOST, PORT, WS_PORT = {host!r}, {port}, {ws_port}", code, flags=re.M)
    assert n == 1, "the example sets HOST, PORT, WS_PORT"
    code, n = re.subn(r"^PIN = .*$", f"PIN = {pin!r}", code, flags=re.M)
    assert n == 1, "the example sets PIN"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_readme_has_three_examples() -> None:
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("index", [0, 1])
def test_login_and_channel_examples(index: int, fresh_login_server: LoginServer) -> None:
    s = fresh_login_server
    assert s.ws is not None
    out = run(EXAMPLES[index], s.addr.host, s.addr.port, s.ws.port, s.fingerprint)
    if index == 0:
        assert "bob says 'hello ann'" in out
    else:
        assert "recovered: True while carol was away" in out
    # A second run finds the accounts made by the first.
    run(EXAMPLES[index], s.addr.host, s.addr.port, s.ws.port, s.fingerprint)


def test_calls_example(peer: Peer) -> None:
    out = run(EXAMPLES[2], peer.encrypted.host, peer.encrypted.port, peer.encrypted_ws.port, peer.fingerprint)
    assert "hello, world" in out
    assert "2 + -3 = -1" in out
    assert "client answered: a Python client (from the server)" in out
    assert "the server pushed a one-way send" in out
    assert "the server hashed 5000000 bytes" in out
    assert "downloaded 1000000 bytes" in out
