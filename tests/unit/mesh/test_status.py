"""Structured status and its weave-like renders, on simulated peers."""

from __future__ import annotations

import json

from fabric.ipam.ring_status import render_connections, render_ipam, render_status
from fabric.ipam.ring_status import ring_status as mesh_status

from .helpers import allocators, build


def test_status_structure_and_render() -> None:
    net, routers = build(3, edges=[(0, 1), (1, 2)])
    allocs = allocators(routers, mode="consensus", quorum=2)
    net.run_until(3.0)
    # the agreed set may leave p0 out (it then gets space by donation)
    assert net.run_until(net.now() + 3, lambda: allocs[0].try_allocate("x") is not None)
    routers[0].connect(["sim:999"])  # a target nobody answers
    net.run_until(net.now() + 0.5)
    st = mesh_status(routers[0], allocs[0], encryption=True)
    json.dumps(st)  # plain data
    assert {p["nickname"] for p in st["peers"]} == {"p0", "p1", "p2"}
    states = {c["address"]: c["state"] for c in st["connections"]}
    assert states["sim:999"] in ("failed", "connecting") and "established" in states.values()
    ipam = st["ipam"]
    assert ipam["ready"] and ipam["consensus"]["quorum"] == 2
    assert sum(o["size"] for o in ipam["owners"]) == ipam["range"][1] - ipam["range"][0]
    assert sum(o["free"] for o in ipam["owners"]) <= sum(o["size"] for o in ipam["owners"]) - 1
    text = render_status(st)
    assert "Encryption: enabled" in text and "Peers: 3" in text and "achieved" in text
    assert "sim:999" in render_connections(st)
    lines = render_ipam(st).splitlines()
    assert len(lines) == len(ipam["owners"]) and "% of total" in lines[0]


def test_status_before_ring() -> None:
    net, routers = build(2, edges=[])
    allocs = allocators(routers[:1], mode="consensus", quorum=2)
    net.run_until(0.5)
    st = mesh_status(routers[0], allocs[0])
    assert not st["ipam"]["ready"]
    assert "waiting for consensus" in render_ipam(st)


def test_status_says_why_no_ring_and_why_refusing() -> None:
    net, routers = build(2, edges=[(0, 1)])
    allocs = allocators(routers, mode="observer")
    net.run_until(2.0)
    st = mesh_status(routers[0], allocs[0])
    assert "no peer in this mesh will create the IPAM ring" in render_ipam(st)
    assert "observers" in render_status(st)
    json.dumps(st)
