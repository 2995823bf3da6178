"""Authenticated encryption for the L2 path (cryptography's AESGCM / ChaCha20Poly1305).

Keys: every engine has a static X25519 key pair; peers learn public keys from
the control plane. Each sender starts a *session* with a fresh random 8-byte
id; the session key is HKDF-SHA256(X25519(own, peer) || psk, salt=session id,
info=label || sender public || receiver public), so it is unique per peer, per
direction and per session. Nonces are a 64-bit counter that only increases
within a session (a new session is started long before it could wrap), so a
nonce never repeats under one key. Receivers keep a sliding replay window per
session and update it only after the tag verified.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fabric.errors import ConfigError
from fabric.fsutil import atomic_write

__all__ = ["KeyPair", "ReplayWindow", "TxSession", "RxSession", "CIPHERS", "derive_key",
           "TAG_LEN", "REKEY_AFTER"]

TAG_LEN = 16
LABEL = b"netfabric-dataplane-v1"
REKEY_AFTER = 1 << 60  # messages per session; far below the 2**64 counter space
CIPHERS = {"aesgcm": AESGCM, "chacha20poly1305": ChaCha20Poly1305}
_NONCE = struct.Struct("!4xQ")


class KeyPair:
    """A static X25519 key pair (private bytes kept in memory or a 0600 file)."""

    SHARED_CACHE = 1024  # peers whose X25519 result is kept

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        # every new session (peer restarts, each sender thread, forged session ids from a
        # neighbour's address) needs the peer's shared secret: one X25519 per peer, not per
        # session (a forged datagram then costs an HKDF and a failed tag check)
        self._shared: dict[bytes, bytes] = {}

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyPair:
        if len(raw) != 32:
            raise ConfigError("dataplane private key must be 32 bytes",
                              fix="delete the key file to have a new one generated")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def load_or_create(cls, path: Path) -> KeyPair:
        try:
            return cls.from_bytes(path.read_bytes())
        except FileNotFoundError:
            pair = cls.generate()
            atomic_write(path, pair.private_bytes(), mode=0o600)
            return pair

    def private_bytes(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def shared(self, peer_public: bytes) -> bytes:
        hit = self._shared.get(peer_public)
        if hit is not None:
            return hit
        if len(peer_public) != 32:
            raise ConfigError("peer public key must be 32 bytes (X25519)")
        secret = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        if len(self._shared) >= self.SHARED_CACHE:
            self._shared.pop(next(iter(self._shared)), None)
        self._shared[bytes(peer_public)] = secret
        return secret


def derive_key(shared: bytes, psk: bytes, session: bytes, sender: bytes, receiver: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=session,
                info=LABEL + sender + receiver).derive(shared + psk)


class ReplayWindow:
    """Sliding window over message counters (RFC 6479 idea, with a Python int as bitmap)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.top = 0  # counters start at 1
        self.bits = 0  # bit k set: counter top-k was accepted

    def check(self, counter: int) -> str:
        """'' if ``counter`` may be accepted, else the drop reason ('replay' / 'too_old')."""
        if counter > self.top:
            return ""
        if counter == 0 or self.top - counter >= self.size:
            return "too_old"
        return "replay" if (self.bits >> (self.top - counter)) & 1 else ""

    def accept(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size \
                else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


class TxSession:
    """Sender side of one peer: session id, key, the next counter."""

    def __init__(self, pair: KeyPair, peer_public: bytes, psk: bytes, cipher: str) -> None:
        self.session = os.urandom(8)
        key = derive_key(pair.shared(peer_public), psk, self.session, pair.public, peer_public)
        self.aead = CIPHERS[cipher](key)
        self.counter = 0

    def seal(self, data, aad: bytes) -> tuple[int, bytes]:
        self.counter += 1
        return self.counter, self.aead.encrypt(_NONCE.pack(self.counter), bytes(data), aad)

    @property
    def exhausted(self) -> bool:
        return self.counter >= REKEY_AFTER


class RxSession:
    """Receiver side of one (peer, session id): key and replay window."""

    def __init__(self, pair: KeyPair, peer_public: bytes, psk: bytes, cipher: str,
                 session: bytes) -> None:
        key = derive_key(pair.shared(peer_public), psk, session, peer_public, pair.public)
        self.aead = CIPHERS[cipher](key)
        self.window = ReplayWindow()

    def open(self, counter: int, data, aad: bytes) -> bytes | str:
        """Plaintext, or the drop reason: 'replay', 'too_old', 'auth_failed'."""
        why = self.window.check(counter)
        if why:
            return why
        try:
            plain = self.aead.decrypt(_NONCE.pack(counter), bytes(data), aad)
        except InvalidTag:
            return "auth_failed"
        self.window.accept(counter)
        return plain
