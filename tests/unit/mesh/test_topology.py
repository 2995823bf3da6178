"""Topology gossip, routes over partial connectivity, broadcast/unicast, GC, reconnects."""

from __future__ import annotations

from fabric.mesh.names import fmt_name, new_name, parse_name
from fabric.mesh.topology import PeerRecord, Topology, TopologyUpdate

from .helpers import Recorder, build, converged


def test_names_roundtrip() -> None:
    n = new_name()
    assert parse_name(fmt_name(n)) == n and n & (1 << 41)  # locally administered bit


def test_routes_partial_connectivity_a_b_c() -> None:
    """A-B-C with no A-C link: A reaches C via B, by unicast and broadcast."""
    net, (a, b, c) = build(3, edges=[(0, 1), (1, 2)])
    recs = [r.new_gossip("app", Recorder()) for r in (a, b, c)]
    assert net.run_until(2.0, lambda: converged([a, b, c]))
    assert a.topology.unicast_routes()[c.name] == b.name
    assert c.name not in a.conns
    assert recs[0].gossip_unicast(c.name, b"hello C")
    class Blob:
        def encode(self):
            return b"to all"
    a.channels["app"].gossip_broadcast(Blob())
    net.run_until(net.now() + 0.2)
    assert recs[2].gossiper.unicast == [(a.name, b"hello C")]
    assert recs[1].gossiper.unicast == []  # B only relayed it
    assert [s for s, _ in recs[1].gossiper.bcast] == [a.name]
    assert [s for s, _ in recs[2].gossiper.bcast] == [a.name]


def test_asymmetric_connection_is_not_a_route() -> None:
    me = PeerRecord(1, "a", 1, 1, ((2, "x", True),))
    topo = Topology(me)
    topo.apply(TopologyUpdate({2: PeerRecord(2, "b", 2, 1, ())}))
    assert 2 not in topo.unicast_routes()
    topo.apply(TopologyUpdate({2: PeerRecord(2, "b", 2, 2, ((1, "y", False),))}))
    assert topo.unicast_routes()[2] == 2


def test_wire_format_roundtrip_and_stale_ignored() -> None:
    recs = {n: PeerRecord(n, f"p{n}", n * 3, 5, ((n + 1, "h:1", True),)) for n in (1, 2, 3)}
    data = TopologyUpdate(dict(recs)).encode()
    topo = Topology(PeerRecord(9, "me", 1, 1, ((1, "x", True),)))
    delta = topo.apply(TopologyUpdate.decode(data))
    assert set(delta.records) == {1, 2, 3} and topo.records[2] == recs[2]
    assert topo.apply(TopologyUpdate.decode(data)).records == {}  # idempotent


def test_gc_of_unreachable_and_reconnect_after_partition() -> None:
    net, routers = build(6, edges=[(i, i + 1) for i in range(5)])
    assert net.run_until(3.0, lambda: converged(routers))
    net.partition([[r.name for r in routers[:3]], [r.name for r in routers[3:]]])
    net.run_until(net.now() + 1.5)
    assert set(routers[0].topology.records) == {r.name for r in routers[:3]}  # gc'd
    net.heal()
    assert net.run_until(net.now() + 5.0, lambda: converged(routers))
    assert routers[0].topology.unicast_routes()[routers[5].name] == routers[1].name


def test_connect_forget_and_duplicate_connections() -> None:
    net, (a, b) = build(2, edges=[(0, 1), (1, 0)])  # both dial: one connection survives
    assert net.run_until(1.0, lambda: converged([a, b]))
    assert len(a.conns) == 1 and all(t.state == "established" for t in a.targets.values())
    a.forget([f"sim:{b.name}"])
    assert a.targets == {}


def test_convergence_with_loss() -> None:
    net, routers = build(40, loss=0.05)
    assert net.run_until(10.0, lambda: converged(routers))
