"""PathHealth (heartbeat state machine, no sockets); fuzz of the routed and heartbeat decoders."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.dataplane import Engine, EngineConfig, KeyPair, PathHealth, PeerAddr, WeaveRoutes
from fabric.dataplane.heartbeat import decode, encode
from fabric.dataplane.l2 import (
    F_CONTROL,
    FLOOD,
    ROUTED_HEADER_LEN,
    T_ROUTED_SEALED,
    L2Receiver,
    L2Sender,
)
from fabric.errors import ConfigError

A, B = b"\x0a\x00\x00\x00\x00\x01", b"\x0a\x00\x00\x00\x00\x02"


def exchange(x: PathHealth, y: PathHealth, now: float, x_to_y: bool = True,
             y_to_x: bool = True) -> None:
    """One round: each side's due heartbeats, delivered when that direction works."""
    for _n, payload in x.outgoing(now):
        if x_to_y:
            assert y.received(A, payload, now + 0.001) == ""
    for _n, payload in y.outgoing(now):
        if y_to_x:
            assert x.received(B, payload, now + 0.002) == ""
    x.tick(now + 0.003)
    y.tick(now + 0.003)


def pair(changes: list | None = None) -> tuple[PathHealth, PathHealth]:
    cb = (lambda *c: changes.append(c)) if changes is not None else None
    x, y = PathHealth(1.0, 3, cb), PathHealth(1.0, 3)
    x.set_peers([B], now=0.0)
    y.set_peers([A], now=0.0)
    return x, y


def test_both_ways_established_then_unreachable_after_three_misses_then_back() -> None:
    changes: list = []
    x, y = pair(changes)
    assert x.state(B) == "pending"
    t = 0.0
    for _ in range(2):
        exchange(x, y, t)
        t += 1.0
    assert x.state(B) == y.state(A) == "established"
    h = x.health(now=t)[B]
    assert h["state"] == "established" and h["rtt_ms"] is not None and 0 <= h["rtt_ms"] < 10
    for _ in range(4):  # y's heartbeats are lost
        exchange(x, y, t, y_to_x=False)
        t += 1.0
    assert x.state(B) == "unreachable"
    assert y.state(A) == "unreachable"  # x stopped saying "I hear you": one way is not a path
    for _ in range(2):
        exchange(x, y, t)
        t += 1.0
    assert x.state(B) == y.state(A) == "established"
    assert [c[1:] for c in changes] == [("pending", "established"),
                                        ("established", "unreachable"),
                                        ("unreachable", "established")]


def test_a_peer_never_heard_goes_from_pending_to_unreachable() -> None:
    x, _y = pair()
    assert x.tick(now=2.9) == []
    assert x.tick(now=3.1) == [(B, "pending", "unreachable")]
    x.set_peers([], now=4.0)
    assert x.health(now=4.0) == {}


def test_heartbeats_are_sent_once_per_interval() -> None:
    x, _y = pair()
    assert len(x.outgoing(0.0)) == 1 and x.outgoing(0.5) == [] and len(x.outgoing(1.0)) == 1


def test_bad_heartbeats_are_refused_with_a_reason() -> None:
    x, _y = pair()
    assert x.received(B, b"short", 0.0) == "bad_heartbeat"
    assert x.received(B, b"\x09" + encode(1, True, 0, 0)[1:], 0.0) == "bad_heartbeat"  # version
    assert x.received(b"\x0a\x00\x00\x00\x00\x09", encode(1, True, 0, 0), 0.0) == "unknown_peer"
    assert x.state(B) == "pending"
    with pytest.raises(ConfigError):
        PathHealth(0, 3)


def test_engine_refuses_a_table_that_does_not_fit_its_format() -> None:
    with pytest.raises(ConfigError, match="WeaveRoutes"):
        Engine(EngineConfig("tap", "d", "198.19.0.1", routed=True))
    with pytest.raises(ConfigError, match="WeaveRoutes"):
        Engine(EngineConfig("tap", "d", "198.19.0.1"), WeaveRoutes(A))


# -- fuzz: no exception escapes the decoders, every refused datagram is counted --

PEER = PeerAddr("198.19.0.2", 6783)
KEYS = (KeyPair.generate(), KeyPair.generate())
SEALED_PEER = PeerAddr("198.19.0.2", 6783, KEYS[0].public)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), sealed=st.booleans())
def test_fuzz_routed_decoder_counts_every_refusal(data: bytes, sealed: bool) -> None:
    drops: dict = {}
    rx = L2Receiver(drops, KEYS[1] if sealed else None, routed=True)
    got = rx.feed(memoryview(data), SEALED_PEER if sealed else PEER)
    if got is None:
        # refused, or the first fragment of a longer message (kept, bounded)
        assert sum(drops.values()) == 1 or (len(data) > ROUTED_HEADER_LEN and rx.pending == 1)
    else:
        assert not sealed and len(rx.route) == 3


@settings(max_examples=200, deadline=None)
@given(message=st.binary(min_size=1, max_size=5000), cut=st.integers(0, 60),
       flip=st.integers(0, 10_000), seg=st.sampled_from([200, 1000, 1472]))
def test_fuzz_truncated_and_forged_sealed_routed_messages(message: bytes, cut: int, flip: int,
                                                          seg: int) -> None:
    sender = L2Sender(seg, KEYS[0], routed=True)
    to_b = PeerAddr("198.19.0.3", 6783, KEYS[1].public)
    total = sender.build(message, 0, to_b, (16, A, FLOOD))
    dgrams = [bytes(sender.out[o:min(o + seg, total)]) for o in range(0, total, seg)]
    assert dgrams[0][0] == T_ROUTED_SEALED
    drops: dict = {}
    rx = L2Receiver(drops, KEYS[1], routed=True)
    last = bytearray(dgrams[-1])
    if cut:
        last = last[:max(1, len(last) - cut)]
    else:
        last[flip % len(last)] ^= 0x40  # header (authenticated) or ciphertext: both forged
    results = [rx.feed(memoryview(d), SEALED_PEER) for d in [*dgrams[:-1], bytes(last)]]
    # refused and counted, or (a forged fragment count) held for fragments that never come
    assert results[-1] is None and (sum(drops.values()) >= 1 or rx.pending == 1)
    assert all(r is None for r in results)
    # the untouched message still opens, with its route
    rx2 = L2Receiver({}, KEYS[1], routed=True)
    ok = [rx2.feed(memoryview(d), SEALED_PEER) for d in dgrams][-1]
    assert ok == (message, 0) and rx2.route == (16, A, FLOOD)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40))
def test_fuzz_heartbeat_decoder(payload: bytes) -> None:
    x, _y = pair()
    why = x.received(B, payload, 1.0)
    beat = decode(payload)
    assert (why == "") == (beat is not None)
    assert why in ("", "bad_heartbeat")


def test_heartbeat_control_message_round_trip() -> None:
    sender = L2Sender(1472, routed=True)
    total = sender.build(encode(7, True, 3, 250), F_CONTROL, PEER, (1, A, B))
    rx = L2Receiver({}, routed=True)
    body, flags = rx.feed(memoryview(bytes(sender.out[:total])), PEER)
    assert flags == F_CONTROL and rx.route == (1, A, B) and decode(body) == (7, True, 3, 250)
    assert struct.calcsize("!BBIII") == len(body)
