"""The engine alone between two namespaces: integrity, fallback, interop, sealed L2, bad input."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time

import pytest

from fabric.bench.dataplane import UNDER_A, UNDER_B, EnginePair
from tests.functional.netns_util import needs_root, sh, transfer

pytestmark = [needs_root, pytest.mark.root]
DST = {"tun": "10.250.2.1", "tap": "10.251.0.2"}


@pytest.fixture
def pair():
    p = EnginePair(f"nfdp-e{secrets.token_hex(2)}")
    try:
        yield p
    finally:
        p.close()


def _ping(ns: str, dst: str, count: int = 1) -> bool:
    return sh("ping", "-c", str(count), "-i", "0.2", "-W", "1", dst, ns=ns,
              check=False).returncode == 0


def tcp_transfer(pair: EnginePair, dst: str, size: int = 16 << 20) -> None:
    """``size`` random bytes a -> b over TCP through the engines; digests must match."""
    transfer(pair.a, pair.b, dst, size)


@pytest.mark.parametrize("offload", [(True, True), (False, False), (True, False), (False, True)],
                         ids=["offload", "fallback", "offload-to-fallback", "fallback-to-offload"])
def test_tun_tcp_integrity(pair: EnginePair, offload) -> None:
    pair.start_engines("tun", offload=offload)
    tcp_transfer(pair, DST["tun"])
    for side, on in zip("ab", offload, strict=True):
        st = pair.status(side, wait=0.7 if side == "a" else 0)
        assert st["fast_path"] is on, st
        assert not st["errors"]
        if not on:
            assert "disabled" in st["fallback_reason"]
    st = pair.status("a", wait=0)
    assert st["tx"]["bytes"] >= 16 << 20
    if offload[0]:  # super-packets were read and cut into many datagrams
        assert st["tx"]["datagrams"] > 4 * st["tx"]["reads"] / 5


@pytest.mark.parametrize("encrypt,offload", [(False, True), (True, True), (True, (True, False))],
                         ids=["plain", "sealed", "sealed-offload-to-fallback"])
def test_tap_tcp_integrity(pair: EnginePair, encrypt: bool, offload) -> None:
    pair.start_engines("tap", encrypt=encrypt, offload=offload)
    tcp_transfer(pair, DST["tap"])
    st = pair.status("b")
    assert st["encrypt"] is encrypt and not st["errors"]
    assert not st["drops"]["rx"].get("auth_failed")
    assert st["rx"]["bytes"] >= 16 << 20


def test_peer_vanishing_does_not_stall_others(pair: EnginePair) -> None:
    # a second peer whose address never answers (no ARP reply): its traffic is dropped,
    # the healthy peer keeps its throughput
    pair.start_engines("tun", extra_peers=("10.250.9.0/24=198.19.254.7:8285",))
    sh("ip", "route", "add", "198.19.254.0/24", "dev", "eth0", ns=pair.a)
    flood = subprocess.Popen(["ip", "netns", "exec", pair.a, "ping", "-f", "-s", "1400",
                              "-w", "4", "10.250.9.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.monotonic()
        tcp_transfer(pair, DST["tun"], 32 << 20)
        assert time.monotonic() - start < 20
    finally:
        flood.wait(timeout=10)
    st = pair.status("a")
    assert st["tx"]["packets"] > 0 and not st["errors"]


def _captured_payloads(pcap: bytes) -> list[bytes]:
    """UDP payloads of an Ethernet pcap (libpcap format)."""
    out, off = [], 24
    while off + 16 <= len(pcap):
        incl = struct.unpack_from("<I", pcap, off + 8)[0]
        frame = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) > 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ihl = (frame[14] & 15) * 4
            out.append(frame[14 + ihl + 8:])
    return out


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_sealed_l2_drops_replayed_modified_and_garbage(pair: EnginePair, tmp_path) -> None:
    pair.start_engines("tap", encrypt=True)
    assert _ping(pair.a, DST["tap"])
    pcap = tmp_path / "cap.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", pair.b, "tcpdump", "-i", "eth0", "-U", "-w",
                             str(pcap), "-c", "6", "udp", "and", "dst", "port", "8285",
                             "and", "src", UNDER_A], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    assert _ping(pair.a, DST["tap"], 6)
    dump.wait(timeout=10)
    captured = _captured_payloads(pcap.read_bytes())
    assert captured and all(p[0] == 0xD2 for p in captured)
    before = pair.status("b", wait=0.7)["drops"]["rx"]
    replays = [p.hex() for p in captured]
    modified = []
    for p in captured:
        b = bytearray(p)
        b[12:20] = struct.pack("!Q", 1 << 40)  # fresh counter: passes the window, fails the tag
        modified.append(bytes(b).hex())
        c = bytearray(b)
        c[-1] ^= 1
        modified.append(bytes(c).hex())
    garbage = [os.urandom(300).hex(), "d2", (b"\xd2\x00\x01\x00" + bytes(30)).hex()]
    send = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.bind(('{UNDER_A}',0))\n"
        f"for h in {replays + modified + garbage!r}: s.sendto(bytes.fromhex(h),('{UNDER_B}',8285))"
    )
    sh(sys.executable, "-c", send, ns=pair.a)
    after = pair.status("b")["drops"]["rx"]

    def grew(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    assert grew("replay") + grew("too_old") >= len(captured), after
    assert grew("auth_failed") >= 2 * len(captured), after
    assert grew("garbage") >= 1 and grew("truncated") >= 1, after
    assert _ping(pair.a, DST["tap"])  # the engine kept forwarding


def test_process_per_direction_forwards_both_ways(pair: EnginePair) -> None:
    pair.start_engines("tun", split=True)
    tcp_transfer(pair, DST["tun"], 8 << 20)
    parent = pair.status("a")  # device -> UDP only
    child = json.loads((pair.tmp / "a-nfdp0-rx.json").read_text())  # UDP -> device only
    assert parent["tx"]["bytes"] >= 8 << 20 and parent["rx"]["batches"] == 0
    assert child["rx"]["batches"] > 0 and child["tx"]["reads"] == 0
