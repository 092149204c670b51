from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from servers import LoginServer, Peer, start_login_server, start_peer  # noqa: E402


@pytest.fixture(scope="session")
def peer() -> Iterator[Peer]:
    p = start_peer()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def rekeying_peer() -> Iterator[Peer]:
    p = start_peer(rekey_records=3)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def login_server() -> Iterator[LoginServer]:
    s = start_login_server(ws=True)
    yield s
    s.stop()


_names = itertools.count(1)


@pytest.fixture
def unique() -> object:
    """A function giving user names no other test uses: unique('ann') -> 'ann-17'."""

    def make(base: str) -> str:
        return f"{base}-{os.getpid() % 1000}-{next(_names)}"

    return make
