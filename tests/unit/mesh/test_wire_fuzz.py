"""Hypothesis fuzz of the frame decoder and of the router's frame handling."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.ipam.ring_alloc import CHANNEL
from fabric.mesh.router import TOPOLOGY
from fabric.mesh.wire import (
    BROADCAST,
    GOSSIP,
    HELLO,
    MAX_FRAME,
    UNICAST,
    Frame,
    FrameDecoder,
    FrameError,
    decode_body,
    decode_hello,
    encode_frame,
)

from .helpers import allocators, build

frames = st.builds(
    Frame, st.sampled_from([GOSSIP, BROADCAST, UNICAST]),
    st.sampled_from([TOPOLOGY, CHANNEL, "other"]), st.integers(1, 2 ** 48 - 1),
    st.integers(1, 2 ** 48 - 1), st.binary(max_size=200))


def test_roundtrip_and_limits() -> None:
    f = Frame(UNICAST, "ipam", 5, 7, b"xyz")
    dec = FrameDecoder()
    data = encode_frame(f)
    assert dec.feed(data[:3]) == [] and dec.feed(data[3:]) == [f]
    with pytest.raises(FrameError) as exc:
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME + 1))
    assert exc.value.reason == "bad-length"
    with pytest.raises(FrameError):
        encode_frame(Frame(GOSSIP, "x", 1, 0, b"\0" * MAX_FRAME))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    dec = FrameDecoder(max_frame=1 << 16)
    try:
        out = dec.feed(data)
    except FrameError as exc:
        assert sum(dec.rejected.values()) == 1 and exc.reason in dec.rejected
    else:
        assert all(isinstance(f, Frame) for f in out)


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_mutated_frames_are_rejected_or_decoded(f: Frame, pos: int, junk: bytes) -> None:
    data = bytearray(encode_frame(f)[4:])
    pos %= len(data)
    data[pos:pos + len(junk)] = junk
    try:
        decode_body(bytes(data))
    except FrameError as exc:
        assert exc.reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_hello_validation(payload: bytes) -> None:
    try:
        d = decode_hello(payload)
    except FrameError as exc:
        assert exc.reason == "bad-hello"
    else:
        assert isinstance(d["name"], int)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(frames, st.builds(Frame, st.just(HELLO), payload=st.binary())),
                max_size=6),
       st.lists(st.one_of(st.binary(max_size=120), st.just(b'{"ring":{"start":1}}'),
                          st.just(b'{"paxos":{"1":[[1,2],[0,0],[1e400]]}}'),
                          st.just(b"\0\0\0\x05" + b"\xff" * 20),
                          st.just(b'{"op":"space"}'), st.just(b"[" * 5000)), max_size=4))
def test_router_survives_hostile_frames(fs: list[Frame], payloads: list[bytes]) -> None:
    """Hostile frames reach real router + allocator handlers: counted, never raised."""
    net, routers = build(3, edges=[(0, 1), (1, 2)])
    allocators(routers, mode="consensus", quorum=3)
    net.run_until(0.5)
    a, b = routers[0], routers[1]
    conn = b.conns[a.name]
    before = sum(a.rejected.values())
    for i, f in enumerate(fs):
        p = payloads[i % len(payloads)] if payloads else f.payload
        conn.send(encode_frame(Frame(f.type, f.channel, f.src, f.dst, p))
                  if f.type != HELLO else encode_frame(f))
    net.run_until(1.5)
    assert sum(a.rejected.values()) >= before
    assert "handler-error" not in a.rejected  # hostile input is caught as FrameError
    assert a.name in b.conns  # still connected and gossiping
    assert len(a.topology.records) == 3
