"""Ring CRDT, Paxos consensus, donation, claim, rmpeer and reset on simulated peers."""

from __future__ import annotations

import pytest

from fabric.errors import ConfigError, IPAMError
from fabric.ipam.ring import parse_init, ranges_to_cidrs
from fabric.ipam.ring_crdt import Entry, Ring, RingMismatch
from fabric.ipam.ring_paxos import Paxos

from .helpers import END, START, allocators, build, converged


def test_merge_is_commutative_idempotent() -> None:
    a, b = Ring(0, 100, "r"), Ring(0, 100, "r")
    a.claim_for_peers([1, 2], "r")
    b.merge(a)
    b.set_entry(50, 9, 10)
    c = Ring(0, 100, "r", a.entries.values())
    c.merge(b)
    a2 = Ring(0, 100, "r", b.entries.values())
    a2.merge(a)
    assert c == a2 and c.merge(b) == []


def test_foreign_ring_is_reported_not_merged() -> None:
    a, b = Ring(0, 100), Ring(0, 100)
    a.claim_for_peers([1], "x")
    b.claim_for_peers([2], "y")
    with pytest.raises(RingMismatch) as exc:
        a.merge(b)
    assert "reset" in str(exc.value)


def test_paxos_three_nodes_agree() -> None:
    nodes = [Paxos(i, 2) for i in (1, 2, 3)]
    nodes[0].propose()
    nodes[2].propose()
    for _ in range(10):
        for n in nodes:
            for m in nodes:
                n.merge(dict(m.claims))
            n.think()
    values = {n.decided[1] for n in nodes if n.decided}
    assert len(values) == 1 and len([n for n in nodes if n.decided]) == 3


def test_consensus_over_gossip_and_allocation() -> None:
    net, routers = build(7)
    allocs = allocators(routers, mode="consensus", quorum=4)
    assert net.run_until(5.0, lambda: all(a.ready() for a in allocs))
    assert len({a.ring.ring_id for a in allocs}) == 1
    got = [a.try_allocate(f"c{i}") for i, a in enumerate(allocs)]
    assert len({g for g in got if g is not None}) == sum(g is not None for g in got) >= 4
    # peers outside the agreed set get space by donation
    for i, a in enumerate(allocs):
        assert net.run_until(net.now() + 3, lambda a=a, i=i: a.try_allocate(f"c{i}"))
    assert len({a.allocs[f"c{i}"] for i, a in enumerate(allocs)}) == 7


def test_seed_donation_and_observer() -> None:
    net, routers = build(5)
    allocs = allocators(routers[:4], seeds=[routers[0].name])
    obs = allocators(routers[4:], mode="observer")[0]
    assert net.run_until(3.0, lambda: all(a.ready() for a in allocs + [obs]))
    assert obs.owned() == [] and obs.try_allocate("x") is None  # asks for space
    assert net.run_until(net.now() + 3, lambda: obs.try_allocate("x") is not None)
    assert allocs[0].stats["donated"] >= 1
    assert obs.ring.owner_entry(obs.allocs["x"]).peer == obs.me


def test_claim_and_errors() -> None:
    net, routers = build(2)
    a, b = allocators(routers, seeds=[routers[0].name, routers[1].name])
    net.run_until(1.0)
    mine = a.owned()[0][0] + 5
    assert a.claim("h1", mine) == mine and a.claim("h1", mine) == mine
    with pytest.raises(IPAMError, match="already allocated"):
        a.claim("h2", mine)
    with pytest.raises(IPAMError, match="owned by peer"):
        b.claim("h3", mine)
    assert a.release("h1") == mine and a.release("h1") is None


def test_rmpeer_on_two_hosts_at_once_agrees() -> None:
    net, routers = build(4, edges=[(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)])
    allocs = allocators(routers, seeds=[r.name for r in routers])
    assert net.run_until(3.0, lambda: converged(routers))
    dead = routers[3]
    with pytest.raises(IPAMError, match="reachable"):
        allocs[0].rmpeer(dead.name)
    dead.stop()
    net.run_until(net.now() + 2.0)
    n1 = allocs[0].rmpeer(dead.name)
    n2 = allocs[1].rmpeer(dead.name)  # concurrently, before any gossip
    assert n1 == n2 == 1
    net.run_until(net.now() + 2.0)
    live = allocs[:3]
    assert len({tuple(sorted(a.ring.entries.items())) for a in live}) == 1
    assert dead.name not in live[0].ring.peers()
    assert all(not a.inconsistencies for a in live)


def test_peer_removed_behind_a_partition_yields_on_heal() -> None:
    """rmpeer of a peer that was only partitioned: on heal it learns that it was removed,
    refuses to allocate and yields its ranges (it must restart under a new name) instead
    of re-asserting them against the heir (issue 11: a range went back and forth)."""
    net, routers = build(3, edges=[(0, 1), (1, 2), (2, 0)])
    allocs = allocators(routers, seeds=[r.name for r in routers])
    net.run_until(2.0)
    victim = allocs[2]
    addr = victim.try_allocate("live")
    net.run_until(net.now() + 0.5)  # everybody knows the victim's latest version
    net.partition([[routers[0].name, routers[1].name], [routers[2].name]])
    net.run_until(net.now() + 1.0)
    allocs[0].rmpeer(victim.me)  # wrongly, while the victim lives behind a partition
    net.heal()
    net.run_until(net.now() + 5.0)
    assert all(a.ring.owner_entry(addr).peer != victim.me for a in allocs)
    assert len({str(a.ring.to_wire()["entries"]) for a in allocs}) == 1
    assert any(i["kind"] == "removed" for i in victim.inconsistencies)
    assert "removed with rmpeer" in victim.describe()["refusing"]


def test_reset_hands_ranges_to_heir() -> None:
    net, routers = build(3, edges=[(0, 1), (1, 2), (2, 0)])
    allocs = allocators(routers, seeds=[r.name for r in routers])
    net.run_until(2.0)
    allocs[1].try_allocate("x")
    assert allocs[1].reset() == 1 and allocs[1].allocs == {}
    net.run_until(net.now() + 1.0)
    assert all(routers[1].name not in a.ring.peers() for a in allocs)


def test_parse_init_and_cidrs() -> None:
    assert parse_init("consensus=3") == ("consensus", 3, [])
    assert parse_init("seed=02:00:00:00:00:01")[2] == [0x020000000001]
    for bad in ("consensus=0", "seed=", "seed=zz", "nonsense", "observer=1"):
        with pytest.raises(ConfigError):
            parse_init(bad)
    assert [str(c) for c in ranges_to_cidrs([(START - 1, START + 255)])] == ["10.32.0.0/24"]
    assert END > START and Entry(1, 2, 3, 4).key() == (3, 2)


def test_separately_initialised_rings_are_reported() -> None:
    net, routers = build(2, edges=[])
    a, b = (allocators([r], mode="consensus", quorum=1)[0] for r in routers)
    net.run_until(1.0)  # each decides alone, then they meet
    routers[0].connect([f"sim:{routers[1].name}"])
    net.run_until(3.0)
    assert a.ready() and b.ready() and a.ring.ring_id != b.ring.ring_id
    assert any(i["kind"] == "ring-mismatch" for i in a.inconsistencies)
    from fabric.ipam.ring_status import render_ipam
    from fabric.ipam.ring_status import ring_status as mesh_status
    text = render_ipam(mesh_status(routers[0], a))
    assert "ring-mismatch" in text and "reset" in text
    assert converged(routers)  # the mesh itself is not partitioned by it


def test_concurrent_donations_tell_the_range_end() -> None:
    """Two peers ask one donor at once; the second must learn where its new range ends
    (the first one's token) from the donation itself, before any gossip relays it."""
    net, (d, r1, r2) = build(3, edges=[(1, 0), (2, 0)])  # r1, r2 only know d
    a_d, a_1, a_2 = allocators([d, r1, r2], start=START, end=START + 16, seeds=[d.name])
    assert net.run_until(2.0, lambda: converged([d, r1, r2]) and a_2.ready())
    assert a_1.try_allocate("a0") is None and a_2.try_allocate("b0") is None  # both ask
    assert net.run_until(net.now() + 1, lambda: bool(a_2.owned()) and bool(a_1.owned()),
                         check_every=0.001)
    got = [a_2.try_allocate(f"b{i}") for i in range(16)]  # before the relay arrives
    net.run_until(net.now() + 1)
    got += [a_1.try_allocate(f"a{i}") for i in range(16)]
    mine2 = [g for g in got[:16] if g is not None]
    mine1 = [g for g in got[16:] if g is not None]
    assert mine1 and mine2 and not set(mine1) & set(mine2)
    assert all(a_2.ring.owner_entry(x).peer == r2.name for x in mine2)
