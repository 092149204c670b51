"""Real Rust servers for the tests, as child processes on loopback ports the OS picks:
the login server (``zserver serve``) and the interop peer (``examples/interop_peer.rs``).
Binaries: $ZSERVER_BIN / $INTEROP_PEER, else the workspace's target/debug.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

WORKSPACE = Path(__file__).resolve().parents[3]

#: Login-server flags that keep tests fast and free of per-address limits (every test
#: connects from 127.0.0.1).
FAST_LOGIN = [
    "--argon2-memory-kib", "1024",
    "--argon2-iterations", "1",
    "--max-failed-logins", "100000",
    "--max-registrations", "100000",
    "--hash-per-address", "1000",
    "--hash-queue", "10000",
]


def binary(env: str, rel: str, build_hint: str) -> str:
    path = os.environ.get(env) or str(WORKSPACE / "target" / "debug" / rel)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: build it first ({build_hint}), or set {env}")
    return path


@dataclass
class Addr:
    host: str
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/"


def parse_addr(s: str) -> Addr:
    host, _, port = s.rpartition(":")
    return Addr(host.strip("[]"), int(port))


class _Child:
    """A child process whose stdout lines are read on a thread, with a deadline."""

    def __init__(self, args: list[str], stdin: bool) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(line)

    def line(self, what: str, timeout: float = 20.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"{what} did not start within {timeout:g} s") from None
        if line is None:
            code = self.proc.wait()
            raise RuntimeError(f"{what} exited ({code}) before it was ready: {''.join(self.stderr)}")
        return line

    def stop(self, how: str) -> None:
        if self.proc.poll() is not None:
            return
        if how == "stdin" and self.proc.stdin is not None:
            self.proc.stdin.close()
        else:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Peer:
    """``interop_peer serve``: every test command, encrypted and plain, TCP and WebSocket."""

    encrypted: Addr
    plain: Addr
    encrypted_ws: Addr
    plain_ws: Addr
    fingerprint: str
    child: _Child = field(repr=False)

    def stop(self) -> None:
        self.child.stop("stdin")


def start_peer(rekey_records: int | None = None) -> Peer:
    args = [
        binary("INTEROP_PEER", "examples/interop_peer", "cargo build -p zserver --example interop_peer"),
        "serve",
    ]
    if rekey_records:
        args += ["--rekey-records", str(rekey_records)]
    child = _Child(args, stdin=True)
    while not (line := child.line("interop_peer")).startswith("{"):
        pass
    info = json.loads(line)
    if "encrypted_ws" not in info:
        child.stop("stdin")
        raise RuntimeError("interop_peer was built without WebSocket")
    return Peer(
        parse_addr(info["encrypted"]),
        parse_addr(info["plain"]),
        parse_addr(info["encrypted_ws"]),
        parse_addr(info["plain_ws"]),
        info["fingerprint"],
        child,
    )


@dataclass
class LoginServer:
    """``zserver serve`` on a fresh data directory."""

    addr: Addr
    ws: Addr | None
    fingerprint: str
    data: str
    child: _Child = field(repr=False)

    def stop(self) -> None:
        self.child.stop("sigint")
        shutil.rmtree(self.data, ignore_errors=True)


def start_login_server(ws: bool = True, extra: list[str] | None = None) -> LoginServer:
    data = tempfile.mkdtemp(prefix="zserver-py-")
    args = [
        binary("ZSERVER_BIN", "zserver", "cargo build -p zserver-cli"),
        "serve", "--listen", "127.0.0.1:0", "--data", data, *FAST_LOGIN, *(extra or []),
    ]
    if ws:
        args += ["--listen-ws", "127.0.0.1:0"]
    child = _Child(args, stdin=False)
    addr = ws_addr = fingerprint = None
    while addr is None or fingerprint is None or (ws and ws_addr is None):
        line = child.line("zserver serve")
        if m := re.match(r"^zserver listening on (\S+)", line):
            addr = parse_addr(m.group(1))
        elif m := re.match(r"^WebSocket on ws://([^\s/]+)", line):
            ws_addr = parse_addr(m.group(1))
        elif m := re.match(r"^server key fingerprint: ([0-9a-f]{64})", line):
            fingerprint = m.group(1)
    return LoginServer(addr, ws_addr, fingerprint, data, child)
