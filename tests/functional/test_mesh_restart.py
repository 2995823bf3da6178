"""Restart from the database: the ring IPAM in-process, and a kill -9 of a peer process.

Loopback addresses 127.77.1.0/24 in the root namespace; no devices are created.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from fabric.api import Handle, Node
from fabric.errors import ConfigError
from fabric.ipam.ring import RingIPAM
from fabric.ipam.ring_status import render_ipam, render_status
from tests.functional.mesh_util import Peer, ring_ctx, until


def test_ring_ipam_restart_keeps_ring_and_allocations(tmp_path: Path) -> None:
    ipam = RingIPAM(ring_ctx(tmp_path))
    chunks = ipam.start({})
    assert chunks and chunks[0].subnet_of(IPv4Network("10.32.0.0/16"))
    got = {Handle(f"c{i}", "eth0"): ipam.allocate(Handle(f"c{i}", "eth0")) for i in range(5)}
    ipam.release(Handle("c4", "eth0"))
    st = ipam.status()
    ring_before = st["ipam"]["ring_id"], st["ipam"]["owners"]
    assert "100.0% of total" in render_ipam(st) and "Name" in render_status(st)
    ipam.stop()

    again = RingIPAM(ring_ctx(tmp_path))
    assert again.start({}) == chunks
    st2 = again.status()
    assert (st2["ipam"]["ring_id"], st2["ipam"]["owners"]) == ring_before
    assert st2["name"] == st["name"]  # the peer name is persisted too
    allocs = again.allocations()
    assert set(allocs) == {Handle(f"c{i}", "eth0") for i in range(4)}
    for h, a in allocs.items():
        assert a.ip == got[h].ip and again.allocate(h).ip == got[h].ip
    new = again.allocate(Handle("new", "eth0"))
    assert new.ip not in {a.ip for a in allocs.values()}
    again.teardown()
    assert not (tmp_path / "ring.db").exists()


def test_ring_ipam_bad_config(tmp_path: Path) -> None:
    for bad in ({"init": "consensus=zero"}, {"peers": "x"}, {"bogus": 1}, {"range": "nope"}):
        with pytest.raises(ConfigError):
            RingIPAM(ring_ctx(tmp_path, **bad))


def test_kill9_peer_restarts_from_its_database(tmp_path: Path, peers: list[Peer]) -> None:
    a = Peer(tmp_path / "a", "127.77.1.11")
    peers.append(a)
    peers.append(Peer(tmp_path / "b", "127.77.1.12", "--connect", a.address))
    peers.append(Peer(tmp_path / "c", "127.77.1.13", "--connect", a.address))
    until(lambda: all(p.cmd("status")["ipam"]["ready"] for p in peers))
    handed = {f"h{i}": until(lambda i=i: a.cmd(f"alloc h{i}")) for i in range(6)}
    ring = a.cmd("status")["ipam"]
    a.kill9()
    port = int(a.address.rsplit(":", 1)[1])
    a.args[a.args.index("--port") + 1] = str(port)  # same address: the others redial it
    a.start()
    st = a.cmd("status")
    assert st["ipam"]["ring_id"] == ring["ring_id"] and st["ipam"]["allocated_here"] == 6
    for h, ip in handed.items():
        assert a.cmd(f"alloc {h}") == ip  # idempotent per handle after the crash
    fresh = {until(lambda i=i: a.cmd(f"alloc n{i}")) for i in range(6)}
    assert not fresh & set(handed.values())
    until(lambda: all(len(p.cmd("status")["peers"]) == 3 for p in peers))

    def agree() -> bool:
        owners = [json.dumps(p.cmd("status")["ipam"]["owners"], sort_keys=True)
                  for p in peers]
        return len(set(owners)) == 1
    until(agree)


def test_two_ring_ipams_observer_gets_space_and_events(tmp_path: Path) -> None:
    a = RingIPAM(ring_ctx(tmp_path / "a"))
    a.start({})
    a_events: list = []
    a.subscribe(a_events.extend)
    addr = a.status()["connections"]  # noqa: F841 - status works before peers exist
    port = a.node.port
    b_ctx = ring_ctx(tmp_path / "b", init="observer", peers=[f"127.77.1.1:{port}"])
    b_ctx.node = Node("n2", IPv4Address("127.77.1.2"), "lo", 1500)
    b = RingIPAM(b_ctx)
    try:
        assert b.start({}) == ()  # an observer owns nothing until it asks
        chunk_events: list = []
        b.subscribe(lambda ev: None, chunk_events.append)
        got = b.allocate(Handle("x", "eth0"), timeout=10)
        assert got.ip in IPv4Network("10.32.0.0/16")
        until(lambda: chunk_events and got.ip in chunk_events[-1][0].supernet(0))
        assert any(got.ip in c for c in b.chunks())
        until(lambda: any(e.kind == "added" and e.peer.data["nickname"] == "n2"
                          for e in a_events))
        assert all(got.ip not in c for c in a.chunks())
    finally:
        b.stop()
        a.stop()
