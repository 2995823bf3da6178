"""Two live peers with one name (a copied state directory): detected, the later one
yields (refuses to join and to allocate), both say so. Simulated network."""

from __future__ import annotations

import random

import pytest

from fabric.errors import IPAMError
from fabric.ipam.ring_alloc import RingAllocator
from fabric.mesh.router import Router, RouterConfig
from fabric.mesh.sim import SimNet

from .helpers import END, START

CFG = RouterConfig(gossip_interval=0.5, relay_delay=0.02, backoff_base=0.1, backoff_max=0.5)


def _router(net: SimNet, name: int, uid: int, address: str, version: int = 1) -> Router:
    r = Router(name, f"p{address}", net, CFG, uid=uid, version=version,
               rng=random.Random(uid))
    net.add(address, r)
    return r


def _ring(r: Router) -> RingAllocator:
    a = RingAllocator(r, START, END, mode="seed", seeds=[1], retry=0.3)
    a.start()
    return a


@pytest.mark.parametrize("via", ["third-peer", "direct", "topology"])
def test_copied_peer_yields_and_both_report(via: str) -> None:
    net = SimNet(seed=3, heartbeat_timeout=0.3)
    orig = _router(net, 1, uid=100, address="sim:orig", version=10)
    p = _router(net, 2, uid=200, address="sim:p")
    q = _router(net, 3, uid=300, address="sim:q")
    copy = _router(net, 1, uid=500, address="sim:copy", version=50)  # started later
    allocs = {r: _ring(r) for r in (orig, p, q)}
    orig.connect(["sim:p"])
    p.connect(["sim:q"])
    for r in (orig, p, q):
        r.start()
    net.run_until(2.0)
    assert allocs[orig].try_allocate("pod-a") is not None
    copy_alloc = RingAllocator(copy, START, END, mode="seed", seeds=[1], retry=0.3)
    copy_alloc.ring = allocs[orig].ring.subset(allocs[orig].ring.tokens)  # the copied db
    copy_alloc.start()
    copy.connect([{"third-peer": "sim:p", "direct": "sim:orig", "topology": "sim:q"}[via]])
    copy.start()
    net.run_until(6.0)
    assert copy.name_collision is not None, via
    assert "refuses" in copy.name_collision["message"]
    with pytest.raises(IPAMError, match="name") as err:
        copy_alloc.try_allocate("pod-b")
    assert err.value.fix
    assert not copy.conns
    # the original keeps its name and its ring; whoever met both reports the collision
    assert orig.name_collision is None and orig.conns
    witness = p if via == "third-peer" else orig
    assert witness.rejected["name-collision"] >= 1
    assert allocs[orig].try_allocate("pod-c") is not None
    assert copy.describe()["name_collision"]


def test_restarted_peer_replaces_its_silent_old_connection() -> None:
    """Not a copy: the old incarnation's connection is silent (it died, no close seen yet),
    so a third peer takes the new incarnation instead of telling it to yield."""
    net = SimNet(seed=4, heartbeat_timeout=5.0)
    old = _router(net, 1, uid=100, address="sim:old", version=10)
    p = _router(net, 2, uid=200, address="sim:p")
    old.connect(["sim:p"])
    old.start()
    p.start()
    net.run_until(1.0)
    old._stopped = True  # the old process dies; no close reaches p
    for c in old.conns.values():
        c.open = False
    p.conns[1].alive = lambda: False  # what a TCP connection reports after 1.5 heartbeats
    new = _router(net, 1, uid=500, address="sim:new", version=50)
    new.connect(["sim:p"])
    new.start()
    net.run_until(2.0)
    assert new.name_collision is None and 2 in new.conns
    assert p.conns[1].remote_uid == 500
