"""Consensus ring init on real mesh peers (loopback 127.77.9.0/24 in the root namespace; no
devices, no routes), set up as a weave network does it: each peer's ``RingIPAM`` gets the
running mesh node (``ctx.mesh``) told the other peers, no ``init`` (consensus of targets +
1), the mesh's default 30 s periodic gossip. Three peers started at once must all have
the same ring within a few seconds, run after run; a peer joining later gets the ring
from gossip without running Paxos.
"""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.ipam.ring import RingIPAM
from fabric.ipam.ring_paxos import Claims
from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import MeshNode

READY_WITHIN = 5.0  # seconds
RUNS = 5


class Peer:
    def __init__(self, tmp: Path, host: str) -> None:
        self.node = MeshNode(host=host, port=0, nickname=host, config=RouterConfig()).start()
        spec = NetworkSpec("ringc", IPv4Network("10.40.0.0/16"), "fake", ipam="ring",
                           ipam_config={"wait": 20})
        tmp.mkdir(parents=True, exist_ok=True)
        self.ipam = RingIPAM(NetworkContext(spec, Node(host, IPv4Address(host), "lo", 1500),
                                            tmp, mesh=self.node))
        self.took = float("nan")
        self.error: BaseException | None = None

    def start_ipam(self, t0: float) -> None:
        try:
            self.ipam.start({})
            self.took = time.monotonic() - t0
        except BaseException as exc:  # reported by the test
            self.error = exc

    def ring(self) -> tuple[str, Claims, bool]:
        a = self.ipam.alloc
        assert a is not None and a.paxos is not None
        return self.node.call(lambda: (a.ring.ring_id, a.paxos.claims[a.me], a.paxos.proposing))

    def stop(self) -> None:
        self.ipam.stop()
        self.node.stop()


def start_together(group: list[Peer]) -> None:
    for p in group:
        p.node.connect([o.node.address for o in group if o is not p])
    t0 = time.monotonic()
    threads = [threading.Thread(target=p.start_ipam, args=(t0,)) for p in group]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_three_peers_started_together_get_one_ring_within_seconds(
        tmp_path: Path, peers: list[Peer]) -> None:
    times = []
    for run in range(RUNS):
        group = [Peer(tmp_path / f"run{run}" / f"p{i}", f"127.77.9.{10 * run + i + 1}")
                 for i in range(3)]
        peers.extend(group)
        start_together(group)
        assert not [p.error for p in group if p.error], [p.error for p in group]
        times.append([round(p.took, 2) for p in group])
        assert max(p.took for p in group) < READY_WITHIN, times
        assert len({p.ring()[0] for p in group}) == 1
        for p in group:
            p.stop()
        peers.clear()
    print("time to ring per run (s):", times)


def test_peer_joining_later_learns_the_ring_from_gossip(tmp_path: Path,
                                                        peers: list[Peer]) -> None:
    group = [Peer(tmp_path / f"p{i}", f"127.77.9.{101 + i}") for i in range(3)]
    peers.extend(group)
    start_together(group)
    assert all(p.took < READY_WITHIN for p in group), [p.took for p in group]
    late = Peer(tmp_path / "late", "127.77.9.110")
    peers.append(late)
    late.node.connect([group[1].node.address])  # quorum of its own: 2 (one target + 1)
    late.start_ipam(time.monotonic())
    assert late.error is None and late.took < 2.0, (late.error, late.took)
    ring_id, claims, proposing = late.ring()
    assert ring_id == group[0].ring()[0]
    assert claims == Claims() and not proposing  # the ring came by gossip, not by Paxos
