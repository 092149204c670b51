"""The encodings, checked against the documents themselves: every ```postcard and ```frame
block of docs/LOGIN.md is decoded (and re-encoded) with this package's codecs, and the
varint table and worked examples of docs/PROTOCOL.md are reproduced byte for byte."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from zserver_client import ProtocolError, Reader, StreamHead, Writer, hash_of
from zserver_client.channels import decode_subscribed, encode_subscribe, Position
from zserver_client.errors import CodecError, remote_error, UnknownCommand, HandlerFailed, RateLimited, ShuttingDown
from zserver_client.frame import FrameReader, Kind, decode_body, encode_frame
from zserver_client.postcard import encode_varint
from zserver_client.record import Opener, RekeyPolicy, Sealer

DOCS = Path(__file__).resolve().parents[3] / "docs"


def hex_bytes(lines: list[str]) -> bytes:
    out = bytearray()
    for line in lines:
        line = line.split("#", 1)[0].replace("|", " ")
        out += bytes.fromhex("".join(line.split()))
    return bytes(out)


def blocks(doc: str, kind: str) -> list[tuple[str, Any, bytes]]:
    text = (DOCS / doc).read_text()
    found = []
    for m in re.finditer(rf"```{kind}([^\n]*)\n(.*?)```", text, re.S):
        lines = m.group(2).strip("\n").split("\n")
        found.append((m.group(1).strip(), json.loads(lines[0]), hex_bytes(lines[1:])))
    return found


def _msg(r: Reader) -> dict[str, str]:
    return {"from": r.str(), "text": r.str()}


def _recipients(r: Reader) -> Any:
    v = r.varint()
    if v == 0:
        return {"Users": r.seq(Reader.str)}
    assert v == 1
    return "Everyone"


DECODERS: dict[str, Callable[[Reader], Any]] = {
    "Credentials": lambda r: {"user": r.str(), "password": r.str()},
    "Welcome": lambda r: {"offline": r.seq(_msg)},
    "Incoming": _msg,
    "NewPassword": lambda r: {"old": r.str(), "new": r.str()},
    "String": Reader.str,
    "WhoRequest": lambda r: {"after": r.option(Reader.str), "limit": r.u32()},
    "WhoPage": lambda r: {"users": r.seq(Reader.str), "online": r.u64(), "more": r.bool()},
    "Push": lambda r: {"to": _recipients(r), "text": r.str()},
    "PushReport": lambda r: {
        "delivered": r.seq(Reader.str),
        "stored": r.seq(Reader.str),
        "delivered_count": r.u64(),
        "stored_count": r.u64(),
        "unconfirmed": r.seq(Reader.str),
    },
    "StreamHead": lambda r: {"total": r.option(Reader.u64), "meta": r.bytes().decode()},
    "DownloadRequest": lambda r: {"offset": r.u64(), "meta": r.bytes().decode()},
    "Option<PartialUpload>": lambda r: r.option(lambda r: {"size": r.u64(), "hash": list(r.raw(32))}),
    "Vec<FileInfo>": lambda r: r.seq(lambda r: {"name": r.str(), "size": r.u64()}),
}

POSTCARD = blocks("LOGIN.md", "postcard")


def test_login_md_has_the_blocks() -> None:
    assert len(POSTCARD) >= 15
    assert {t for t, _, _ in POSTCARD} <= set(DECODERS), "a type this test does not know"


@pytest.mark.parametrize("type_name, value, data", POSTCARD, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(POSTCARD)])
def test_login_md_postcard_blocks_decode(type_name: str, value: Any, data: bytes) -> None:
    r = Reader(data)
    assert DECODERS[type_name](r) == value
    assert r.remaining == 0, "a payload is exactly one value"


def test_login_md_encodings_this_client_makes() -> None:
    by_type = {(t, json.dumps(v, sort_keys=True)): d for t, v, d in POSTCARD}

    def doc(t: str, v: Any) -> bytes:
        return by_type[(t, json.dumps(v, sort_keys=True))]

    assert Writer().str("ann").str("secret").finish() == doc("Credentials", {"user": "ann", "password": "secret"})
    push = Writer().varint(0).seq(["ann", "carol"], Writer.str).str("hi ann").finish()
    assert push == doc("Push", {"to": {"Users": ["ann", "carol"]}, "text": "hi ann"})
    assert Writer().varint(1).str("hello all").finish() == doc("Push", {"to": "Everyone", "text": "hello all"})
    assert Writer().option("bob", Writer.str).u32(1000).finish() == doc("WhoRequest", {"after": "bob", "limit": 1000})
    assert StreamHead(5, b"notes.txt").encode() == doc("StreamHead", {"total": 5, "meta": "notes.txt"})
    assert Writer().u64(0).bytes(b"notes.txt").finish() == doc("DownloadRequest", {"offset": 0, "meta": "notes.txt"})


FRAMES = blocks("LOGIN.md", "frame")


@pytest.mark.parametrize("_type, header, data", FRAMES)
def test_login_md_frame_blocks(_type: str, header: dict[str, Any], data: bytes) -> None:
    reader = FrameReader()
    reader.push(data)
    f = reader.next()
    assert f is not None and reader.buffered == 0
    assert (f.kind.name, f.flags, f.id, f.command) == (
        {"Call": "CALL", "Send": "SEND", "Reply": "REPLY", "Error": "ERROR"}[header["kind"]],
        header["flags"], header["id"], header["command"],
    )
    assert encode_frame(f.kind, f.flags, f.id, f.command.encode(), f.payload) == data


def test_protocol_md_varints_and_signed() -> None:
    table = {0: "00", 1: "01", 127: "7f", 128: "80 01", 255: "ff 01", 300: "ac 02",
             2**64 - 1: "ff ff ff ff ff ff ff ff ff 01"}
    for n, h in table.items():
        assert encode_varint(n) == bytes.fromhex(h)
        assert Reader(bytes.fromhex(h)).u64() == n
    assert Writer().i64(2).i64(-3).finish() == b"\x04\x05"
    assert Writer().i64(-1).finish() == b"\x01"
    assert Reader(b"\x05\xff\xff").i64() == -3  # trailing bytes ignored
    with pytest.raises(CodecError):
        Reader(bytes.fromhex("ff ff ff ff ff ff ff ff ff 02")).u64()
    with pytest.raises(CodecError):
        Reader(b"\x80").u64()


def test_protocol_md_worked_frames() -> None:
    assert encode_frame(Kind.CALL, 0, 1, b"echo", b"hi") == bytes.fromhex("0a000000 00 00 01 04 6563686f 6869")
    assert encode_frame(Kind.REPLY, 0, 1, b"", b"hi") == bytes.fromhex("06000000 02 00 01 00 6869")
    assert encode_frame(Kind.CALL, 0, 300, b"a", b"") == bytes.fromhex("06000000 00 00 ac02 01 61")
    assert encode_frame(Kind.GO_AWAY, 0, 0, b"", b"") == bytes.fromhex("04000000 06 00 00 00")
    err = decode_body(bytes.fromhex("03 00 02 01 32 6e6f7065"))
    assert (err.kind, err.id, err.command, err.payload) == (Kind.ERROR, 2, "2", b"nope")
    e = remote_error(err.command, err.payload.decode())
    assert isinstance(e, UnknownCommand) and e.code == 2 and "nope" in str(e)
    assert isinstance(remote_error("5", "x"), ShuttingDown)
    assert type(remote_error("42", "x")) is HandlerFailed  # unknown codes are 1
    limited = remote_error("9", "rate limited, retry after 250 ms")
    assert isinstance(limited, RateLimited) and limited.code == 9
    assert limited.retry_after_ms == 250
    assert remote_error("9", "rate limited too often (20 refusals within 10000 ms): disconnecting").retry_after_ms is None
    # The upload example of section 5b: End carries BLAKE3("hello").
    assert hash_of(b"hello").hex().startswith("ea8f163db38682925e4491c5e58d4bb3")


def test_protocol_md_channel_example() -> None:
    call = bytes.fromhex("15000000 00 00 01 07 2463682e737562 06 636861743a61 01 07 02")
    assert call == encode_frame(Kind.CALL, 0, 1, b"$ch.sub", encode_subscribe("chat:a", Position(7, 2)))
    answer = decode_subscribed(bytes.fromhex("01 07 03 01 01 03 03 616e6e 01 78"))
    assert answer.position == Position(7, 3) and answer.recovered
    assert [(p.offset, p.sender, p.data) for p in answer.publications] == [(3, "ann", b"x")]


def test_malformed_frames() -> None:
    for body, what in [
        (b"\x0c\x00\x00\x00", "kind"),
        (b"\x00\x00", "truncated"),
        (b"\x00\x00\x01\x05ab", "past the end"),
        (b"\xff\xff\xff\xff\xff\x01\x00\x00\x00", "varint"),
    ]:
        with pytest.raises(ProtocolError, match=what):
            decode_body(body)
    r = FrameReader(max_frame=100)
    r.push(struct.pack("<I", 101))
    with pytest.raises(ProtocolError, match="exceeds"):
        r.next()


def test_records_rekey_and_refuse_tampering() -> None:
    key = bytes(range(32))
    sealer = Sealer(key, RekeyPolicy(records=3))
    opener = Opener(key, 4 * 1024 * 1024)
    records = [sealer.seal(f"record {i}".encode()) for i in range(10)]
    assert sealer.rekeys == 3 and [r[4] for r in records[:3]] == [0, 0, 1]
    for i, rec in enumerate(records):
        opener.push(rec[:3])
        assert opener.next() is None
        opener.push(rec[3:])
        assert opener.next() == f"record {i}".encode()
    assert opener.rekeys == 3
    # The nonce is little-endian: the second record under a key uses 00000000 01000000 00000000.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fresh = Sealer(key)
    fresh.seal(b"a")
    second = fresh.seal(b"b")
    nonce = bytes.fromhex("00000000 0100000000000000")
    assert AESGCM(key).decrypt(nonce, second[5:], second[:5]) == b"b"
    # A replayed record fails authentication.
    opener = Opener(key, 4 * 1024 * 1024)
    first = Sealer(key).seal(b"x")
    opener.push(first + first)
    assert opener.next() == b"x"
    with pytest.raises(ProtocolError, match="authentication"):
        opener.next()
    # Bad lengths and kinds are refused from the header.
    for header in (struct.pack("<IB", 15, 0), struct.pack("<IB", 5 * 1024 * 1024, 0), struct.pack("<IB", 16, 2)):
        o = Opener(key, 4 * 1024 * 1024)
        o.push(header)
        with pytest.raises(ProtocolError):
            o.next()
