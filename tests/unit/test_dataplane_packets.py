"""Checksums, TSO-style segmentation and receive-side merging (pure functions, no root)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.dataplane import gro, l3
from fabric.dataplane.csum import checksum, fill_ipv4_checksum


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_super(payload: bytes, *, flags: int = 0x18, seq: int = 1000, opts: bytes = b"",
              ident: int = 7) -> bytearray:
    thl = 20 + len(opts)
    pkt = bytearray(20 + thl) + payload
    pkt[0] = 0x45
    struct.pack_into("!HH", pkt, 2, len(pkt), ident)
    pkt[6] = 0x40  # DF
    pkt[8], pkt[9] = 64, 6
    pkt[12:20] = bytes([10, 250, 1, 5, 10, 250, 2, 9])
    struct.pack_into("!HHII", pkt, 20, 40000, 5201, seq, 77)
    pkt[32] = (thl // 4) << 4
    pkt[33] = flags
    struct.pack_into("!H", pkt, 34, 501)
    pkt[40:40 + len(opts)] = opts
    fill_ipv4_checksum(pkt, 0, 20)
    return pkt


def split(out: bytearray, total: int) -> list[bytes]:
    res, o = [], 0
    while o < total:
        length = struct.unpack_from("!H", out, o + 2)[0]
        res.append(bytes(out[o:o + length]))
        o += length
    return res


def tcp_ok(seg: bytes) -> bool:
    ihl = (seg[0] & 15) * 4
    pseudo = seg[12:20] + struct.pack("!BBH", 0, 6, len(seg) - ihl)
    return ref_sum(seg[:ihl]) == 0xFFFF and ref_sum(pseudo + seg[ihl:]) == 0xFFFF


@given(st.binary(max_size=3000))
def test_checksum_matches_rfc1071_reference(data: bytes) -> None:
    ref = (~ref_sum(data)) & 0xFFFF
    mine = checksum(data)
    # 0x0000 and 0xffff are the same number in ones' complement; both verify
    assert mine == ref or {mine, ref} == {0, 0xFFFF}


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 60000), mss=st.integers(500, 1460), numpy=st.booleans(),
       opts=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]), cwr=st.booleans())
def test_segments_are_valid_flannel_packets(size, mss, numpy, opts, cwr) -> None:
    payload = os.urandom(size)
    pkt = tcp_super(payload, flags=0x18 | (0x80 if cwr else 0) | 0x01, opts=opts)
    out = bytearray()
    count, full, total = l3.segment_tcp4(memoryview(pkt), mss, out, True, numpy)
    segs = split(out, total)
    assert count == len(segs) == -(-size // mss)
    assert b"".join(s[40 + len(opts):] for s in segs) == payload
    for i, s in enumerate(segs):
        assert tcp_ok(s), i
        assert l3.valid_ipv4(s, len(s)) == 20
        assert struct.unpack_from("!I", s, 24)[0] == 1000 + i * mss
        assert struct.unpack_from("!H", s, 4)[0] == 7 + i
        f = s[33]
        assert bool(f & 0x80) == (cwr and i == 0)
        assert bool(f & 0x09) == (i == count - 1)  # FIN/PSH only on the last
    if count > 1:
        assert full == len(segs[0])


def test_numpy_and_python_segmentation_agree() -> None:
    pkt = tcp_super(os.urandom(1420 * 40 + 3), opts=bytes([1, 1, 8, 10]) + bytes(8))
    a, b = bytearray(), bytearray()
    ra = l3.segment_tcp4(memoryview(pkt), 1420, a, True, True)
    rb = l3.segment_tcp4(memoryview(pkt), 1420, b, True, False)
    assert ra == rb and a[:ra[2]] == b[:rb[2]]


def test_partial_checksum_mode_leaves_pseudo_sum() -> None:
    pkt = tcp_super(os.urandom(5000))
    out = bytearray()
    _c, _f, total = l3.segment_tcp4(memoryview(pkt), 1400, out, False)
    for s in split(out, total):
        ihl = 20
        pseudo = ref_sum(s[12:20] + struct.pack("!BBH", 0, 6, len(s) - ihl))
        assert struct.unpack_from("!H", s, 36)[0] == pseudo


def test_udp_segments_are_valid() -> None:
    payload = os.urandom(10000)
    pkt = bytearray(28) + payload
    pkt[0], pkt[8], pkt[9] = 0x45, 64, 17
    struct.pack_into("!H", pkt, 2, len(pkt))
    pkt[12:20] = bytes([10, 0, 0, 1, 10, 0, 1, 1])
    struct.pack_into("!HHH", pkt, 20, 1234, 5678, len(pkt) - 20)
    out = bytearray()
    count, _full, total = l3.segment_udp4(memoryview(pkt), 1400, out)
    segs = split(out, total)
    assert count == len(segs) == 8
    for s in segs:
        pseudo = s[12:20] + struct.pack("!BBH", 0, 17, len(s) - 20)
        assert ref_sum(s[:20]) == 0xFFFF and ref_sum(pseudo + s[20:]) == 0xFFFF
        assert struct.unpack_from("!H", s, 24)[0] == len(s) - 20


@pytest.mark.parametrize("bad", [b"", b"\x45", bytes(40), b"\x60" + bytes(59),
                                 bytes([0x4F]) + bytes(39), bytes([0x45, 0, 0, 99]) + bytes(36)])
def test_malformed_packets_are_refused(bad: bytes) -> None:
    out = bytearray()
    assert l3.segment_tcp4(memoryview(bytearray(bad)), 1400, out)[0] == 0
    assert l3.segment_udp4(memoryview(bytearray(bad)), 1400, out)[0] == 0
    assert not l3.valid_ipv4(bad, len(bad))


def test_complete_checksum_finishes_partial_packets() -> None:
    pkt = tcp_super(os.urandom(333))
    pseudo = ref_sum(pkt[12:20] + struct.pack("!BBH", 0, 6, len(pkt) - 20))
    struct.pack_into("!H", pkt, 36, pseudo)
    assert l3.complete_checksum(pkt, 0, len(pkt), 20, 16)
    assert tcp_ok(bytes(pkt))
    assert not l3.complete_checksum(pkt, 0, len(pkt), 20, 5000)  # offsets outside the packet


def _segments(size=1400 * 30, mss=1400, **kw) -> tuple[bytearray, list[bytes]]:
    pkt = tcp_super(os.urandom(size), flags=0x18, **kw)
    out = bytearray()
    _c, _f, total = l3.segment_tcp4(memoryview(pkt), mss, out)
    return pkt, split(out, total)


def test_merge_restores_the_super_packet() -> None:
    pkt, segs = _segments()
    views = [memoryview(s) for s in segs]
    count, hlen, mss = l3.coalesce_tcp4(views, 0)
    assert (count, hlen, mss) == (30, 40, 1400)
    hdr = l3.merged_header(views[0], len(pkt), hlen, views[-1][33])
    merged = bytes(hdr) + b"".join(bytes(v[hlen:]) for v in views)
    assert merged[40:] == pkt[40:] and merged[:20][:4] == pkt[:4]
    assert ref_sum(merged[:20]) == 0xFFFF
    # the TCP field holds the pseudo-header sum (CHECKSUM_PARTIAL), PSH restored
    assert struct.unpack_from("!H", merged, 36)[0] == ref_sum(
        merged[12:20] + struct.pack("!BBH", 0, 6, len(merged) - 20))
    assert merged[33] & 0x08


@pytest.mark.skipif(not gro.available(), reason="numpy is not installed")
def test_numpy_run_detection_matches_python() -> None:
    _pkt, segs = _segments(size=1400 * 20)  # all full: equal-size datagrams
    buf = bytearray(b"".join(segs))
    assert gro.equal_run(buf, 0, len(segs), len(segs[0]))[0] == \
        l3.coalesce_tcp4([memoryview(s) for s in segs], 0)[0] == 20
    # a gap in the sequence ends the run
    bad = bytearray(buf)
    struct.pack_into("!I", bad, 7 * 1440 + 24, 5)
    assert gro.equal_run(bad, 0, 20, 1440)[0] == 7
    runs = [memoryview(bad)[i * 1440:(i + 1) * 1440] for i in range(20)]
    assert l3.coalesce_tcp4(runs, 0)[0] == 7
    # another flow (port) ends it too; SYN never merges
    other = bytearray(buf)
    other[3 * 1440 + 21] ^= 1
    assert gro.equal_run(other, 0, 20, 1440)[0] == 3
    syn = bytearray(buf)
    syn[33] = 0x02
    assert gro.equal_run(syn, 0, 20, 1440)[0] == 1


def test_icmp_unreachable_quotes_the_offender() -> None:
    pkt = tcp_super(b"hello")
    reply = l3.icmp_unreachable(memoryview(pkt), bytes([10, 250, 1, 0]))
    assert reply[9] == 1 and reply[20] == 3 and reply[21] == 0
    assert reply[16:20] == pkt[12:16] and reply[12:16] == bytes([10, 250, 1, 0])
    assert reply[28:28 + 28] == bytes(pkt[:28])
    assert ref_sum(reply[:20]) == 0xFFFF and ref_sum(reply[20:]) == 0xFFFF


@pytest.mark.skipif(not gro.available(), reason="numpy is not installed")
def test_receive_batch_drops_malformed_rows_and_merges_the_rest() -> None:
    from fabric.dataplane import vnet
    from fabric.dataplane.fwd_l3 import _write_batch

    _pkt, segs = _segments(size=600 * 12, mss=600)  # 12 equal datagrams of 640 bytes
    rows = [bytearray(s) for s in segs]
    rows[0][0] = 0x60  # not IPv4
    rows[5] = bytearray(os.urandom(640))  # garbage in the middle (breaks the run)
    buf = bytearray(b"".join(rows))
    r, w = os.pipe()
    try:
        stats = {"bytes": 0, "packets": 0, "writes": 0, "datagrams": 0}
        drops: dict = {}
        _write_batch(w, buf, memoryview(buf), len(buf), 640, stats, drops)
        os.close(w)
        out = b""
        while chunk := os.read(r, 1 << 16):
            out += chunk
    finally:
        os.close(r)
    assert drops.get("malformed", 0) >= 1 + (0 if l3.valid_ipv4(rows[5], 640) else 1)
    assert stats["packets"] == 10 and stats["writes"] == 2  # rows 1-4 and 6-11 merged
    hdr = vnet.unpack(out)
    assert hdr[1] == vnet.GSO_TCPV4 and hdr[3] == 600
