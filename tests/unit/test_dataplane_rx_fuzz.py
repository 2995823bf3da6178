"""Fuzz the whole routed receive path (decode, heartbeat, rules, deliver, relay) with hostile input.

A real :class:`Engine` (not opened) for node B of a line A - B - C; the TAP device and
the UDP socket are lists here (the functional tests use the real ones).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.dataplane import FLOOD, Engine, EngineConfig, KeyPair, PeerAddr, WeaveRoutes
from fabric.dataplane.fwd_routed import RoutedRx
from fabric.dataplane.heartbeat import encode
from fabric.dataplane.l2 import F_CONTROL, L2Sender

A, B, C = (bytes([0x0A, 0, 0, 0, 0, i]) for i in (1, 2, 3))
KEYS = {n: KeyPair.generate() for n in (A, B, C)}


def node_b(sealed: bool) -> tuple[RoutedRx, list, list, dict[bytes, PeerAddr]]:
    addrs = {n: PeerAddr(f"198.19.0.{n[-1]}", 6783, KEYS[n].public if sealed else b"")
             for n in (A, B, C)}
    table = WeaveRoutes(B)
    table.set_neighbours({A: addrs[A], C: addrs[C]})
    table.set_unicast({A: A, C: C})
    table.set_flood({A: [C], C: [A], B: [A, C]})
    engine = Engine(EngineConfig("tap", "nfz0", "198.19.0.2", routed=True, encrypt=sealed),
                    table, KEYS[B] if sealed else None)
    written: list = []
    sent: list = []
    rx = RoutedRx(engine, lambda body, hoff: written.append(body) or 1,
                  lambda buf, total, addr: sent.append((bytes(buf[:total]), addr)))
    return rx, written, sent, addrs


names = st.sampled_from([A, B, C, FLOOD, b"\x0a\x00\x00\x00\x00\x09"])


@settings(max_examples=300, deadline=None)
@given(sealed=st.booleans(), flags=st.integers(0, 255), ttl=st.integers(0, 255),
       origin=names, dst=names, body=st.binary(max_size=3000),
       beat=st.booleans(), cut=st.integers(0, 40))
def test_every_message_from_a_neighbour_is_taken_or_counted(sealed, flags, ttl, origin, dst,
                                                            body, beat, cut) -> None:
    rx, written, sent, addrs = node_b(sealed)
    if beat:
        flags |= F_CONTROL
        body = encode(1, True, 0, 0) if cut % 2 else body
    sender = L2Sender(1472, KEYS[A] if sealed else None, routed=True)
    total = sender.build(body, flags, addrs[B], (ttl, origin, dst))
    data = bytes(sender.out[:total])  # empty when there is no body: nothing to send
    if cut > 30:
        data = data[:len(data) - cut]  # truncated on the way
    for off in range(0, len(data), 1472):
        rx.datagram(memoryview(data[off:off + 1472]), (A, addrs[A]))
    if not data:
        return
    outcome = len(written) + len(sent) + rx.stats.get("heartbeats", 0)
    drops = sum(rx.drops.values())
    assert outcome or drops or rx.receiver.pending, (rx.drops, flags, origin, dst)
    for _msg, addr in sent:  # never back to the sender, only to neighbours
        assert addr == addrs[C]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), sealed=st.booleans())
def test_random_datagrams_never_raise(data: bytes, sealed: bool) -> None:
    rx, written, sent, addrs = node_b(sealed)
    rx.datagram(memoryview(data), (A, addrs[A]))
    assert not written and not sent or not sealed
    assert sum(rx.drops.values()) or rx.receiver.pending or written or sent \
        or rx.stats.get("heartbeats")


def test_a_neighbour_without_a_public_key_is_a_counted_drop_not_a_crash() -> None:
    rx, written, sent, addrs = node_b(sealed=True)
    rx.table.set_neighbours({A: addrs[A], C: PeerAddr(addrs[C].ip, 6783)})  # C's key unknown
    sender = L2Sender(1472, KEYS[A], routed=True)
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(28)
    total = sender.build(frame, 0, addrs[B], (16, A, FLOOD))
    rx.datagram(memoryview(bytes(sender.out[:total])), (A, addrs[A]))
    assert len(written) == 1 and not sent and rx.drops == {"no_key": 1}
    assert L2Sender(1472, KEYS[A], routed=True).build(frame, 0, PeerAddr("x", 1)) == 0
