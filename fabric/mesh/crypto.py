"""Per-connection encryption: X25519 ephemeral keys + a password-derived key.

Each side sends a fresh X25519 public key in the clear preamble. The session
keys come from HKDF-SHA256 over the X25519 shared secret, salted with
scrypt(password) — so only peers that know the password derive the same keys,
and every connection has fresh keys. Frames are sealed with ChaCha20-Poly1305,
one key per direction, the nonce a per-direction counter. A peer with another
password fails to open the first frame (its HELLO) and is refused.
"""

from __future__ import annotations

import functools
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fabric.mesh.wire import FrameError

__all__ = ["Ephemeral", "Session", "password_key"]

_SALT = b"netfabric-mesh-password-v1"


@functools.lru_cache(maxsize=8)
def password_key(password: bytes) -> bytes:
    """scrypt(password) — slow on purpose, computed once per password per process."""
    return Scrypt(salt=_SALT, length=32, n=2 ** 14, r=8, p=1).derive(password)


class Session:
    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send, self._recv = ChaCha20Poly1305(send_key), ChaCha20Poly1305(recv_key)
        self._send_n = self._recv_n = 0

    def seal(self, data: bytes) -> bytes:
        nonce = struct.pack(">4xQ", self._send_n)
        self._send_n += 1
        return self._send.encrypt(nonce, data, None)

    def open(self, data: bytes) -> bytes:
        nonce = struct.pack(">4xQ", self._recv_n)
        try:
            out = self._recv.decrypt(nonce, data, None)
        except InvalidTag as exc:
            raise FrameError("auth-failed", "frame did not authenticate (wrong password?)"
                             ) from exc
        self._recv_n += 1
        return out


class Ephemeral:
    """One connection's key pair."""

    def __init__(self) -> None:
        self._priv = X25519PrivateKey.generate()
        self.public = self._priv.public_key().public_bytes_raw()

    def session(self, their_public: bytes, password: bytes, initiator: bool) -> Session:
        try:
            shared = self._priv.exchange(X25519PublicKey.from_public_bytes(their_public))
        except ValueError as exc:
            raise FrameError("bad-key", "peer public key is invalid") from exc
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=password_key(password),
                   info=b"netfabric-mesh session v1").derive(shared)
        a, b = okm[:32], okm[32:]
        return Session(a, b) if initiator else Session(b, a)
