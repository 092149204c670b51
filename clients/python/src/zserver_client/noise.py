"""Noise_XX_25519_AESGCM_SHA256 (Noise Protocol Framework, revision 34), initiator side,
as PROTOCOL.md section 2b uses it: empty payloads, a 16-byte or longer prologue, and the
``Split()`` keys handed to the record layer.

The state machine (CipherState, SymmetricState, the XX message patterns) is written here
from the Noise specification; the primitives (X25519, AES-256-GCM, SHA-256, HMAC) are the
``cryptography`` package's.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import HandshakeError

__all__ = ["PROTOCOL_NAME", "Initiator", "public_bytes"]

PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
DH_LEN = 32
HASH_LEN = 32
TAG_LEN = 16


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:
        # An all-zero result (a low-order point from the peer) is refused by `cryptography`.
        raise HandshakeError(f"bad Diffie-Hellman key from the server: {e}") from None


class _CipherState:
    """Noise's CipherState for AESGCM: nonce = 4 zero bytes + counter u64 big-endian."""

    def __init__(self) -> None:
        self.k: bytes | None = None
        self.n = 0

    def initialize_key(self, k: bytes) -> None:
        self.k = k
        self.n = 0

    def _nonce(self) -> bytes:
        return b"\x00\x00\x00\x00" + struct.pack(">Q", self.n)

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        out = AESGCM(self.k).encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return out

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        try:
            out = AESGCM(self.k).decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise HandshakeError(
                "the server's handshake message does not authenticate "
                "(a tampered preamble or a server of another protocol)"
            ) from None
        self.n += 1
        return out


class _SymmetricState:
    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = _sha256(protocol_name)
        self.ck = self.h
        self.cipher = _CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher.initialize_key(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = _hkdf2(self.ck, b"")
        return k1[:32], k2[:32]


class Initiator:
    """The client's side of XX: ``-> e``, ``<- e, ee, s, es``, ``-> s, se``."""

    def __init__(self, prologue: bytes, static: X25519PrivateKey | None = None) -> None:
        self._sym = _SymmetricState(PROTOCOL_NAME)
        self._sym.mix_hash(prologue)
        self._s = static if static is not None else X25519PrivateKey.generate()
        self._e = X25519PrivateKey.generate()
        self._re: bytes | None = None
        self.remote_static: bytes | None = None

    def write_message_1(self) -> bytes:
        e_pub = public_bytes(self._e)
        self._sym.mix_hash(e_pub)
        return e_pub + self._sym.encrypt_and_hash(b"")

    def read_message_2(self, message: bytes) -> bytes:
        """Reads ``e, ee, s, es`` and the payload; returns the server's static key."""
        if len(message) < DH_LEN + DH_LEN + TAG_LEN + TAG_LEN:
            raise HandshakeError(f"Noise message 2 of {len(message)} bytes (96 expected)")
        re = message[:DH_LEN]
        self._sym.mix_hash(re)
        self._re = re
        self._sym.mix_key(_dh(self._e, re))
        rs = self._sym.decrypt_and_hash(message[DH_LEN : DH_LEN + DH_LEN + TAG_LEN])
        self._sym.mix_key(_dh(self._e, rs))
        self._sym.decrypt_and_hash(message[DH_LEN + DH_LEN + TAG_LEN :])  # payload, ignored
        self.remote_static = rs
        return rs

    def write_message_3(self) -> bytes:
        assert self._re is not None, "message 2 first"
        out = self._sym.encrypt_and_hash(public_bytes(self._s))
        self._sym.mix_key(_dh(self._s, self._re))
        return out + self._sym.encrypt_and_hash(b"")

    @property
    def handshake_hash(self) -> bytes:
        return self._sym.h

    def split(self) -> tuple[bytes, bytes]:
        """(client -> server key, server -> client key)."""
        return self._sym.split()
