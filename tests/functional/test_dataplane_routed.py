"""Weave-routed L2 engines on three namespaces: unicast, relay, floods once, sealing, heartbeats.

Each namespace (``-a``, ``-b``, ``-c``, underlay 198.19.250.0/24 on a bridge in ``-sw``) gets
an in-process :class:`Engine` on a real TAP device (10.253.0.N/24) and UDP socket, opened from
a thread that entered the namespace; the test then sets the tables as the control plane would.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fabric.dataplane import Engine, EngineConfig, KeyPair, PeerAddr, WeaveRoutes
from fabric.dataplane.__main__ import configure_device
from tests.functional.netns_util import add_ns, namespaces, needs_root, sh, transfer, wire
from tests.util import wait_for

pytestmark = [needs_root, pytest.mark.root]

NODES = "abc"
NAME = {n: bytes([0x0A, 0xFB, 0, 0, 0, i + 1]) for i, n in enumerate(NODES)}
UNDER = {n: f"198.19.250.{i + 1}" for i, n in enumerate(NODES)}
INNER = {n: f"10.253.0.{i + 1}" for i, n in enumerate(NODES)}
PORT = 6783
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], object]) -> object:
    """Run ``fn`` on a thread inside namespace ``ns``: sockets and devices it opens stay there."""
    out: dict = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            out["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


class Mesh:
    """Three hosts, each with a routed engine; tables are set with :meth:`topology`."""

    def __init__(self, tag: str, *, encrypt: bool = False, psk: dict | None = None,
                 interval: float = 1.0) -> None:
        self.ns = {n: f"{tag}-{n}" for n in NODES}
        self.sw = f"{tag}-sw"
        self.keys = {n: KeyPair.generate() for n in NODES} if encrypt else {}
        self.engines: dict[str, Engine] = {}
        self.changes: list[tuple] = []
        add_ns(self.sw)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.sw)
        sh("ip", "link", "set", "br0", "up", ns=self.sw)
        for i, n in enumerate(NODES):
            add_ns(self.ns[n])
            wire(self.sw, "br0", self.ns[n], f"{UNDER[n]}/24", f"p{i}")
        for n in NODES:
            cfg = EngineConfig("tap", "nfr0", UNDER[n], port=PORT, routed=True,
                               encrypt=encrypt, psk=(psk or {}).get(n, b""),
                               heartbeat_interval=interval)
            eng = Engine(cfg, WeaveRoutes(NAME[n]), self.keys.get(n),
                         on_peer_health=lambda name, old, new, n=n:
                         self.changes.append((n, name, old, new)))

            def open_engine(eng: Engine = eng, n: str = n) -> None:
                eng.open()
                configure_device("nfr0", f"{INNER[n]}/24", eng.config.mtu)

            in_netns(self.ns[n], open_engine)
            self.engines[n] = eng
            eng.start()

    def addr(self, n: str) -> PeerAddr:
        return PeerAddr(UNDER[n], PORT, self.keys[n].public if self.keys else b"")

    def topology(self, links: set[frozenset[str]], tree: dict[str, dict[str, list[str]]]):
        """Neighbours from ``links``, shortest-path next hops, and the flood tree per node."""
        for n in NODES:
            nbrs = {m for m in NODES if frozenset((n, m)) in links}
            unicast = {}
            for m in NODES:
                if m == n:
                    continue
                via = m if m in nbrs else next(iter(x for x in sorted(nbrs)
                                                     if frozenset((x, m)) in links), None)
                if via:
                    unicast[NAME[m]] = NAME[via]
            t = self.engines[n].table
            t.set_neighbours({NAME[m]: self.addr(m) for m in nbrs})
            t.set_unicast(unicast)
            t.set_flood({NAME[o]: [NAME[c] for c in kids] for o, kids in tree[n].items()})

    def full_mesh(self) -> None:
        self.topology({frozenset(p) for p in ("ab", "bc", "ac")},
                      {n: {n: [m for m in NODES if m != n]} for n in NODES})

    def line(self) -> None:
        """a - b - c: a and c are no neighbours; b relays, and forwards floods."""
        self.topology({frozenset("ab"), frozenset("bc")},
                      {"a": {"a": ["b"]}, "b": {"b": ["a", "c"], "a": ["c"], "c": ["a"]},
                       "c": {"c": ["b"]}})

    def ping(self, src: str, dst: str, count: int = 1, size: int = 56) -> bool:
        return sh("ping", "-c", str(count), "-i", "0.2", "-W", "1", "-s", str(size), "-M", "do",
                  INNER[dst], ns=self.ns[src], check=False).returncode == 0

    def status(self, n: str) -> dict:
        return self.engines[n].status()

    def close(self) -> None:
        for eng in self.engines.values():
            eng.stop()


@pytest.fixture
def mesh_factory() -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []
    with namespaces("nfdr") as tag:
        def make(**kw) -> Mesh:
            m = Mesh(f"{tag}{len(made)}", **kw)
            made.append(m)
            return m

        try:
            yield make
        finally:
            for m in made:
                m.close()


def _drops(st: dict, side: str, why: str) -> int:
    return st["drops"][side].get(why, 0)


def nft_block(ns: str, src: str) -> None:
    """Drop UDP to the data port from ``src`` in namespace ``ns`` (input hook)."""
    sh("nft", "add table inet nfdrblock", ns=ns)
    sh("nft", "add chain inet nfdrblock in { type filter hook input priority 0 ; }", ns=ns)
    sh("nft", f"add rule inet nfdrblock in ip saddr {src} udp dport {PORT} drop", ns=ns)


def nft_unblock(ns: str) -> None:
    sh("nft", "delete table inet nfdrblock", ns=ns, check=False)


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "sealed"])
def test_unicast_direct_then_relayed_through_b(mesh_factory, encrypt: bool) -> None:
    m = mesh_factory(encrypt=encrypt)  # sealed: b opens with a's key and seals again for c
    m.full_mesh()
    assert m.ping("a", "c", 3)
    assert m.status("b")["rx"].get("relayed", 0) == 0
    before_b = m.status("b")
    # a and c lose their direct link: tables as the mesh would compute, and the wire cut too
    m.line()
    nft_block(m.ns["a"], UNDER["c"])
    nft_block(m.ns["c"], UNDER["a"])
    assert m.ping("a", "c", 5)
    transfer(m.ns["a"], m.ns["c"], INNER["c"], 4 << 20)
    st_b = m.status("b")
    assert st_b["rx"]["relayed"] >= 5, st_b
    # b relayed a's and c's frames without taking them: its device saw none of the transfer
    assert st_b["rx"]["bytes"] - before_b["rx"]["bytes"] < 64 << 10, st_b
    st_a = m.status("a")
    assert st_a["routing"]["unicast"]["0a:fb:00:00:00:03"] == "0a:fb:00:00:00:02"
    origins = {e["origin"] for e in m.engines["a"].table.macs()}
    assert "0a:fb:00:00:00:03" in origins  # c's MAC learned against c, not against b
    assert not st_a["errors"] and not st_b["errors"]
    assert not _drops(m.status("c"), "rx", "auth_failed")


def _packet_socket(ns: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind(("nfr0", 0))
        s.settimeout(0.2)
        return s

    return in_netns(ns, make)


def _count(sock: socket.socket, marker: bytes, seconds: float = 1.5) -> int:
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, addr = sock.recvfrom(65536)
        except TimeoutError:
            continue
        if marker in data and addr[2] != socket.PACKET_OUTGOING:
            n += 1
    return n


@pytest.mark.parametrize("shape", ["mesh", "tree", "line", "targets"])
def test_broadcast_and_multicast_arrive_exactly_once(mesh_factory, shape: str) -> None:
    m = mesh_factory()
    if shape == "mesh":
        m.full_mesh()
    elif shape == "line":
        m.line()
    elif shape == "targets":  # weave-fastdp's origin replication: a copy per peer, c via b
        m.line()
        for n in NODES:
            m.engines[n].table.set_flood_targets({NAME[n]: [NAME[x] for x in NODES if x != n]})
    else:  # every pair connected, but a's floods go a -> b -> c: c must not get two
        m.topology({frozenset(p) for p in ("ab", "bc", "ac")},
                   {"a": {"a": ["b"]}, "b": {"a": ["c"], "b": ["a", "c"]},
                    "c": {"c": ["a", "b"]}})
    socks = {n: _packet_socket(m.ns[n]) for n in "bc"}
    marker = secrets.token_bytes(8)
    sender = _packet_socket(m.ns["a"])
    src = bytes.fromhex("02fb000000aa")
    try:
        for dst in (b"\xff" * 6, bytes.fromhex("01005e0a0a0a"), bytes.fromhex("3333000000fb")):
            for i in range(3):
                sender.send(dst + src + struct.pack("!H", 0x88B5) + marker + bytes([i]) * 50)
        got = {n: _count(s, marker) for n, s in socks.items()}
    finally:
        for s in (*socks.values(), sender):
            s.close()
    assert got == {"b": 9, "c": 9}, (got, m.status("b")["drops"])
    if shape != "mesh":
        assert m.status("b")["rx"]["relayed"] >= 9
    assert m.status("a")["tx"]["flooded"] >= 9


def test_sealed_wrong_psk_peer_gets_nothing_and_drops_are_counted(mesh_factory) -> None:
    m = mesh_factory(encrypt=True, psk={"a": b"one", "b": b"one", "c": b"two"},
                     interval=0.2)
    m.full_mesh()
    assert m.ping("a", "b", 2)
    assert not m.ping("a", "c", 2)
    st_c = m.status("c")
    assert _drops(st_c, "rx", "auth_failed") >= 2, st_c["drops"]
    assert st_c["rx"]["packets"] == 0  # nothing of a's or b's reached c's device
    assert st_c["encrypt"] and st_c["mtu"] == 1500 - 75 - 16
    assert wait_for(lambda: m.engines["a"].peer_health()[NAME["b"]]["state"] == "established",
                    timeout=3)
    health = m.engines["a"].peer_health()
    assert health[NAME["c"]]["state"] in ("pending", "unreachable")
    assert wait_for(lambda: m.engines["a"].peer_health()[NAME["c"]]["state"] == "unreachable",
                    timeout=3)


def test_heartbeats_mark_a_blocked_peer_unreachable_and_established_after(mesh_factory) -> None:
    m = mesh_factory(interval=0.2)
    m.full_mesh()

    def state(n: str, peer: str) -> str:
        return m.engines[n].peer_health()[NAME[peer]]["state"]

    assert wait_for(lambda: all(state(n, p) == "established" for n in NODES for p in NODES
                                if p != n), timeout=5)
    h = m.engines["a"].peer_health()[NAME["c"]]
    assert h["rtt_ms"] is not None and h["last_heard"] < 1
    nft_block(m.ns["c"], UNDER["a"])  # a -> c datagrams lost; c -> a still arrive
    try:
        assert wait_for(lambda: state("c", "a") == "unreachable", timeout=3)
        # a still hears c, but c says it no longer hears a: one way only is no path
        assert wait_for(lambda: state("a", "c") == "unreachable", timeout=3)
        assert state("a", "b") == "established"
        assert m.status("a")["peer_health"]["0a:fb:00:00:00:03"]["state"] == "unreachable"
    finally:
        nft_unblock(m.ns["c"])
    assert wait_for(lambda: state("a", "c") == state("c", "a") == "established", timeout=3)
    assert ("a", NAME["c"], "established", "unreachable") in m.changes
    assert ("a", NAME["c"], "unreachable", "established") in m.changes


def test_oversized_frames_and_mac_conflicts_are_dropped_and_counted(mesh_factory) -> None:
    m = mesh_factory()
    m.full_mesh()
    assert m.ping("a", "b")
    mtu = m.engines["a"].config.mtu
    assert m.ping("a", "b", size=mtu - 28)  # the largest that fits
    sh("ip", "link", "set", "nfr0", "mtu", "1500", ns=m.ns["a"])  # a misconfigured pod MTU
    assert not m.ping("a", "b", size=1472)
    assert _drops(m.status("a"), "tx", "too_big") >= 1
    # b sends a frame whose source is a's own MAC: a refuses it, never learns it
    a_mac = sh("cat", "/sys/class/net/nfr0/address", ns=m.ns["a"]).stdout.strip()
    sock = _packet_socket(m.ns["b"])
    try:
        sock.send(b"\xff" * 6 + bytes.fromhex(a_mac.replace(":", "")) + b"\x88\xb5" + bytes(50))
    finally:
        sock.close()
    assert wait_for(lambda: _drops(m.status("a"), "rx", "mac_conflict") >= 1, timeout=2)
    assert m.engines["a"].table.owner(bytes.fromhex(a_mac.replace(":", ""))) == NAME["a"]
