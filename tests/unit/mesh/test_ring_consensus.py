"""Liveness of the consensus ring init on simulated peers with the lab's mesh timing.

All peers start at the same moment, each told the others as targets, consensus=N
(quorum N//2+1), periodic full gossip every 30 s as in a real weave network: the ring
must exist on every peer within a few seconds from deltas alone. A peer that misses
the decided ring gets it from a ring holder; a peer that joins later learns the ring
from gossip without running Paxos.
"""

from __future__ import annotations

import random

import pytest

from fabric.ipam.ring_alloc import RingAllocator
from fabric.ipam.ring_guard import IpamData
from fabric.ipam.ring_paxos import Claims
from fabric.mesh.router import Router, RouterConfig
from fabric.mesh.sim import SimConn, SimNet

from .helpers import END, START

LAB = RouterConfig(gossip_interval=30.0)  # the defaults a weave network runs with
READY_WITHIN = 5.0  # simulated seconds


def mesh(n: int, seed: int, *, loss: float = 0.0,
         latency: tuple[float, float] = (0.0002, 0.002)) -> tuple[SimNet, list[Router]]:
    net = SimNet(seed=seed, latency=latency, loss=loss)
    routers = [Router(i + 1, f"p{i}", net, LAB, rng=random.Random(seed * 7919 + i))
               for i in range(n)]
    for r in routers:
        net.add(f"sim:{r.name}", r)
    return net, routers


def consensus(routers: list[Router], n: int) -> list[RingAllocator]:
    return [RingAllocator(r, START, END, mode="consensus", quorum=n // 2 + 1)
            for r in routers]


def start_all(net: SimNet, routers: list[Router]) -> list[RingAllocator]:
    """Every peer told every other one, all started at once (``fabric lab up``)."""
    for r in routers:
        r.connect([f"sim:{o.name}" for o in routers if o is not r])
    allocs = consensus(routers, len(routers))
    for r, a in zip(routers, allocs, strict=True):
        r.start()
        a.start()
    return allocs


def healthy(allocs: list[RingAllocator]) -> bool:
    return (all(a.ready() for a in allocs) and len({a.ring.ring_id for a in allocs}) == 1
            and not any(a.refusal() for a in allocs))


def state(allocs: list[RingAllocator]) -> list[tuple[bool, str, dict]]:
    return [(a.ready(), a.ring.ring_id, a.paxos.describe()) for a in allocs]


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_simultaneous_start_gets_one_ring_within_seconds(n: int) -> None:
    slow = []
    for seed in range(50):  # 4 x 50 = 200 runs
        net, routers = mesh(n, seed)
        allocs = start_all(net, routers)
        if not net.run_until(READY_WITHIN, lambda a=allocs: healthy(a)):
            slow.append((seed, state(allocs)))
    assert not slow, f"{len(slow)}/50 runs without one ring after {READY_WITHIN}s: {slow[:2]}"


def test_simultaneous_start_with_loss_and_slow_links() -> None:
    slow = []
    for seed in range(30):
        net, routers = mesh(3, seed, loss=0.05, latency=(0.005, 0.05))
        allocs = start_all(net, routers)
        if not net.run_until(3 * READY_WITHIN, lambda a=allocs: healthy(a)):
            slow.append((seed, state(allocs)))
    assert not slow, f"{len(slow)}/30 lossy runs without one ring: {slow[:2]}"


def test_peer_that_missed_the_decided_ring_gets_it_from_a_ring_holder() -> None:
    """The connections stay up but every ipam message to peer 3 is lost until t=4 s (the
    others decide without it): its Paxos gossip afterwards must bring it the ring, not the
    next periodic gossip (30 s)."""
    net, routers = mesh(3, 7)
    late = routers[2]
    real_send = SimConn.send

    def lossy(conn: SimConn, data: bytes) -> None:
        if conn.peer_router is late and net.now() < 4.0 and b"ipam" in data:
            return
        real_send(conn, data)
    SimConn.send = lossy  # type: ignore[method-assign]
    try:
        allocs = start_all(net, routers)
        assert net.run_until(4.0, lambda: allocs[0].ready() and allocs[1].ready())
        assert not allocs[2].ready()
        assert net.run_until(4.0 + READY_WITHIN, lambda: healthy(allocs)), state(allocs)
    finally:
        SimConn.send = real_send  # type: ignore[method-assign]
    assert not allocs[2].paxos.proposing  # it adopted the ring and stopped proposing


def test_peer_joining_after_the_decision_learns_the_ring_without_paxos() -> None:
    net, routers = mesh(4, 3)
    first = start_all(net, routers[:3])
    assert net.run_until(READY_WITHIN, lambda: healthy(first)), state(first)
    joiner = routers[3]
    joiner.connect([f"sim:{routers[0].name}"])
    (alloc,) = consensus([joiner], 3)
    joiner.start()
    alloc.start()
    assert net.run_until(net.now() + 1.0, lambda: healthy([*first, alloc])), state([alloc])
    assert alloc.paxos.claims[alloc.me] == Claims()  # never proposed nor promised
    assert not alloc.paxos.proposing
    assert net.run_until(net.now() + 3.0, lambda: alloc.try_allocate("c1") is not None)


def test_relayed_paxos_deltas_keep_each_peers_newest_claims() -> None:
    """A relay queue merging an echo of our older claims must not overwrite the newer
    ones queued before it (our acceptance was lost that way: a proposer duel)."""
    new = Claims((3, 2), (3, 2), (2, 3)).to_wire()
    old = Claims((3, 2)).to_wire()
    queued = IpamData(paxos={"2": new}).merge(IpamData(paxos={"2": old, "3": old}))
    assert queued.paxos == {"2": new, "3": old}
    queued = IpamData(paxos={"2": old}).merge(IpamData(paxos={"2": new}))
    assert queued.paxos == {"2": new}
