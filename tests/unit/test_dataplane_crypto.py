"""Sealed L2 messages: keys per peer/session, nonces, replay window, tampering, bad input."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.dataplane.crypto import KeyPair, ReplayWindow, RxSession, TxSession
from fabric.dataplane.l2 import HEADER_LEN, T_SEALED, L2Receiver, L2Sender
from fabric.dataplane.peers import PeerAddr
from fabric.errors import ConfigError

SEG = 1472


def _pair():
    a, b = KeyPair.generate(), KeyPair.generate()
    peer_b = PeerAddr("198.19.255.2", 8285, b.public)
    peer_a = PeerAddr("198.19.255.1", 8285, a.public)
    return a, b, peer_a, peer_b


def _datagrams(sender: L2Sender, message: bytes, peer: PeerAddr) -> list[bytes]:
    total = sender.build(message, 1, peer)
    out = bytes(sender.out[:total])
    return [out[o:o + SEG] for o in range(0, total, SEG)]


def _deliver(rx: L2Receiver, dgrams, peer):
    got = [rx.feed(memoryview(d), peer) for d in dgrams]
    return [g for g in got if g is not None]


class Link:
    """Peer a sealing messages for peer b; b's receiver counts its drops in ``drops``."""

    def __init__(self, psk: bytes = b"", cipher: str = "aesgcm") -> None:
        self.a, self.b, self.peer_a, self.peer_b = _pair()
        self.sender = L2Sender(SEG, self.a, psk, cipher)
        self.drops: dict = {}
        self.rx = L2Receiver(self.drops, self.b, psk, cipher)

    def send(self, message: bytes) -> list[bytes]:
        return _datagrams(self.sender, message, self.peer_b)

    def deliver(self, dgrams: list[bytes]) -> list:
        return _deliver(self.rx, dgrams, self.peer_a)


@pytest.mark.parametrize("cipher", ["aesgcm", "chacha20poly1305"])
@pytest.mark.parametrize("size", [20, 1400, 1452, 65000])
def test_sealed_roundtrip(cipher: str, size: int) -> None:
    link = Link(b"psk", cipher)
    msg = os.urandom(size)
    dgrams = link.send(msg)
    assert all(len(d) <= SEG and d[0] == T_SEALED for d in dgrams)
    assert msg not in b"".join(dgrams)  # encrypted on the wire
    assert link.deliver(dgrams) == [(msg, 1)]
    assert not link.drops


def test_replay_and_modification_are_dropped_and_counted() -> None:
    link = Link()
    first = link.send(b"x" * 3000)
    assert len(link.deliver(first)) == 1
    assert link.deliver(first) == []  # replayed whole
    assert link.drops["replay"] == 1
    second = link.send(b"y" * 100)
    body = bytearray(second[0])
    body[-1] ^= 0x80  # flipped ciphertext bit
    assert link.deliver([bytes(body)]) == []
    hdr = bytearray(second[0])
    hdr[3] ^= 1  # flags are authenticated (associated data)
    assert link.deliver([bytes(hdr)]) == []
    assert link.drops["auth_failed"] == 2
    assert link.deliver(second) == [(b"y" * 100, 1)]  # the genuine one still passes


def test_wrong_key_or_psk_fails_authentication() -> None:
    a, b, peer_a, peer_b = _pair()
    drops: dict = {}
    mallory = KeyPair.generate()
    forged = _datagrams(L2Sender(SEG, mallory), b"hi", peer_b)
    assert _deliver(L2Receiver(drops, b), forged, peer_a) == []
    other_psk = _datagrams(L2Sender(SEG, a, b"one"), b"hi", peer_b)
    assert _deliver(L2Receiver(drops, b, b"two"), other_psk, peer_a) == []
    assert drops["auth_failed"] == 2


def test_sessions_have_distinct_keys_and_increasing_nonces() -> None:
    a, b, _pa, _pb = _pair()
    t1, t2 = TxSession(a, b.public, b"", "aesgcm"), TxSession(a, b.public, b"", "aesgcm")
    assert t1.session != t2.session
    counters = [t1.seal(b"m", b"")[0] for _ in range(100)]
    assert counters == list(range(1, 101))
    c1 = t1.seal(b"same", b"")[1]
    c2 = t2.seal(b"same", b"")[1]
    assert c1 != c2  # other session, other key
    rx = RxSession(b, a.public, b"", "aesgcm", t1.session)
    assert rx.open(101, c1, b"") == b"same"
    assert rx.open(101, c1, b"") == "replay"


def test_replay_window() -> None:
    w = ReplayWindow(size=64)
    for c in (1, 3, 2, 10):
        assert w.check(c) == ""
        w.accept(c)
    assert w.check(3) == "replay" and w.check(4) == ""
    w.accept(200)
    assert w.check(136) == "too_old" and w.check(137) == "" and w.check(0) == "too_old"
    assert w.check(200) == "replay" and w.check(201) == ""


def test_lost_fragment_drops_only_that_message() -> None:
    link = Link()
    lossy = link.send(b"a" * 5000)
    del lossy[1]
    assert link.deliver(lossy) == []
    assert link.drops["incomplete"] >= 1
    assert link.deliver(link.send(b"b" * 5000)) == [(b"b" * 5000, 1)]


def test_plain_receiver_refuses_sealed_and_vice_versa() -> None:
    a, b, peer_a, peer_b = _pair()
    drops: dict = {}
    sealed = _datagrams(L2Sender(SEG, a), b"z", peer_b)
    assert _deliver(L2Receiver(drops), sealed, peer_a) == []
    plain = _datagrams(L2Sender(SEG), b"z", peer_b)
    assert _deliver(L2Receiver(drops, b), plain, peer_a) == []
    assert drops["wrong_type"] == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_never_raises(data: bytes, sealed: bool) -> None:
    _a, b, peer_a, _pb = _pair()
    drops: dict = {}
    rx = L2Receiver(drops, b if sealed else None)
    result = rx.feed(memoryview(data), peer_a)
    if len(data) <= HEADER_LEN or data[0] not in (0xD1, 0xD2):
        assert result is None and sum(drops.values()) == 1
    if sealed:
        assert result is None


def test_truncated_header_counted() -> None:
    drops: dict = {}
    rx = L2Receiver(drops)
    assert rx.feed(memoryview(struct.pack("!BBB", 0xD1, 0, 1)), PeerAddr("x", 1)) is None
    assert drops == {"truncated": 1}


def test_key_files(tmp_path) -> None:
    path = tmp_path / "dp.key"
    k1 = KeyPair.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert KeyPair.load_or_create(path).public == k1.public
    path.write_bytes(b"short")
    with pytest.raises(ConfigError):
        KeyPair.load_or_create(path)
