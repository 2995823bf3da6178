"""Shared builders for mesh unit tests: routers and allocators on a SimNet."""

from __future__ import annotations

import random

from fabric.ipam.ring_alloc import RingAllocator
from fabric.mesh.gossip import Gossiper
from fabric.mesh.router import Router, RouterConfig
from fabric.mesh.sim import SimNet

START, END = (10 << 24) + (32 << 16) + 1, (10 << 24) + (48 << 16) - 1


def build(n: int, *, seed: int = 1, edges: list[tuple[int, int]] | None = None,
          degree: int = 3, loss: float = 0.0) -> tuple[SimNet, list[Router]]:
    net = SimNet(seed=seed, loss=loss, heartbeat_timeout=0.3)
    rng = random.Random(seed)
    cfg = RouterConfig(gossip_interval=0.5, relay_delay=0.02, backoff_base=0.1,
                       backoff_max=0.5)
    routers = [Router(i + 1, f"p{i}", net, cfg, rng=random.Random(seed * 7919 + i))
               for i in range(n)]
    for r in routers:
        net.add(f"sim:{r.name}", r)
    if edges is None:
        edges = [(i, (i + 1) % n) for i in range(n)] + [
            (i, rng.randrange(n)) for i in range(n) for _ in range(degree - 1)]
    for a, b in edges:
        if a != b:
            routers[a].connect([f"sim:{routers[b].name}"])
    for r in routers:
        r.start()
    return net, routers


def allocators(routers: list[Router], mode: str = "seed", start: int = START, end: int = END,
               **kw) -> list[RingAllocator]:
    if mode == "seed":
        kw.setdefault("seeds", [routers[0].name])
    out = [RingAllocator(r, start, end, mode=mode, retry=0.3, **kw) for r in routers]
    for a in out:
        a.start()
    return out


def converged(routers: list[Router]) -> bool:
    truth = 0
    for r in routers:
        truth = (truth + hash((r.name, r.version))) & ((1 << 64) - 1)
    return all(len(r.topology.records) == len(routers) and r.topology.digest == truth
               for r in routers)


class Recorder(Gossiper):
    """A gossip channel's user that keeps what it is sent point-to-point and broadcast."""

    def __init__(self) -> None:
        self.unicast: list[tuple[int, bytes]] = []
        self.bcast: list[tuple[int, bytes]] = []

    def gossip(self):
        return None

    def on_gossip(self, sender, payload):
        return None

    def on_gossip_broadcast(self, src, payload):
        self.bcast.append((src, payload))

    def on_gossip_unicast(self, src, payload):
        self.unicast.append((src, payload))
