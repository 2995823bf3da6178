"""Ring IPAM defects of issue 11 on simulated peers: mismatched seed lists reach every
peer, a removed peer's return is refused, the agreed consensus set, all-observer meshes."""

from __future__ import annotations

import json

import attrs
import pytest

from fabric.errors import IPAMError
from fabric.ipam.ring_paxos import Claims, Paxos
from fabric.mesh.names import fmt_name

from .helpers import allocators, build


def _line(n: int):  # 0-1-2-...: gossip must cross several peers
    return build(n, edges=[(i, i + 1) for i in range(n - 1)])


def test_mismatched_seed_lists_stop_allocation_on_every_peer() -> None:
    net, routers = _line(6)
    left = allocators(routers[:3], seeds=[routers[0].name])
    right = allocators(routers[3:], seeds=[routers[5].name])
    net.run_until(14.0)  # longer than the conflict's ttl: boundary peers keep reporting
    for a in left + right:  # not only the two peers at the boundary (2 and 3)
        with pytest.raises(IPAMError, match="initialised separately") as err:
            a.try_allocate("pod")
        assert err.value.fix and "conflict" in a.describe()["refusing"]
    # a non-seed peer never adopts a ring its own seed list does not produce
    assert {a.ring.ring_id for a in left} == {left[0].ring.ring_id}
    assert {a.ring.ring_id for a in right} == {right[2].ring.ring_id}
    # once the two rings are apart (one side reset / disconnected) the refusal expires
    net.partition([[r.name for r in routers[:3]], [r.name for r in routers[3:]]])
    for r in routers[:3]:
        r.forget([f"sim:{routers[3].name}"])
    routers[2].forget([f"sim:{routers[3].name}"])
    assert net.run_until(net.now() + 12, lambda: not left[0].refusal())
    assert left[0].try_allocate("pod") is not None


def test_seed_peer_refuses_a_saved_ring_of_another_seed_list() -> None:
    from fabric.errors import ConfigError
    from fabric.ipam.ring_alloc import RingAllocator
    from fabric.mesh.db import MeshDB

    _net, routers = build(1, edges=[])
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        db = MeshDB(f"{d}/ring.db")
        a = allocators(routers, seeds=[routers[0].name], db=db)[0]
        assert a.ready()
        _net2, others = build(1, edges=[])
        with pytest.raises(ConfigError, match="seed"):
            RingAllocator(others[0], a.ring.start, a.ring.end, mode="seed",
                          seeds=[routers[0].name, 77], db=db)


def test_removed_peer_that_returns_is_refused_and_views_converge() -> None:
    net, routers = build(3, edges=[(0, 1), (1, 2), (2, 0)])
    allocs = allocators(routers, seeds=[r.name for r in routers])
    net.run_until(2.0)
    dead = allocs[2]
    for i in range(5):
        assert dead.try_allocate(f"d{i}") is not None
    net.partition([[routers[0].name, routers[1].name], [routers[2].name]])
    net.run_until(net.now() + 1.0)
    assert allocs[0].rmpeer(dead.me) >= 1
    heir = allocs[0].ring.entries[dead.owned()[0][0]].peer
    heir_alloc = next(a for a in allocs if a.me == heir)
    token = dead.owned()[0][0]
    net.run_until(net.now() + 1.0)
    assert heir_alloc.claim("heirs-pod", token + 1) == token + 1  # the heir uses the range
    net.heal()  # the removed peer comes back with its old state
    net.run_until(net.now() + 6.0)
    with pytest.raises(IPAMError, match="removed") as err:
        dead.try_allocate("new")
    assert "state directory" in err.value.fix
    views = {str(sorted(a.ring.to_wire()["entries"])) for a in allocs}
    assert len(views) == 1, "views never converge: the range goes back and forth"
    assert allocs[0].ring.entries[token].peer == heir
    others = [a for a in allocs if a.me not in (dead.me, allocs[0].me)]
    assert any(i["kind"] == "removed-back" for i in others[0].describe()["inconsistencies"])
    assert any(i["kind"] == "removed" for i in dead.describe()["inconsistencies"])
    assert all(a.describe()["removed"] == [fmt_name(dead.me)] for a in allocs)


def test_consensus_value_is_the_set_that_promised() -> None:
    p = Paxos(1, 2)
    p.merge({2: Claims(), 3: Claims()})  # 3 was heard of once, then went away
    p.propose()
    p.think()
    p.merge({2: attrs.evolve(p.claims[2], promise=p.claims[1].promise)})
    p.think()
    assert p.claims[1].value == (1, 2)


def test_consensus_seven_all_get_space_without_duplicates() -> None:
    net, routers = build(7)
    allocs = allocators(routers, mode="consensus", quorum=4)
    assert net.run_until(8.0, lambda: all(a.ready() for a in allocs))
    decided = {a.paxos.decided[1] for a in allocs if a.paxos.decided}
    assert len(decided) == 1
    owners = {e.peer for e in allocs[0].ring.entries.values()}
    assert owners == set(next(iter(decided)))
    got = []
    for i, a in enumerate(allocs):
        assert net.run_until(net.now() + 5, lambda a=a, i=i: a.try_allocate(f"c{i}"))
        got.append(a.allocs[f"c{i}"])
    assert len(set(got)) == 7


def test_all_observer_mesh_says_nobody_will_create_a_ring(
        caplog: pytest.LogCaptureFixture) -> None:
    net, routers = build(3, edges=[(0, 1), (1, 2)])
    allocs = allocators(routers, mode="observer")
    net.run_until(3.0)
    for a in allocs:
        st = a.describe()
        assert not st["ready"]
        assert "no peer" in st["waiting"] and "observer" in st["waiting"]
    with pytest.raises(IPAMError, match="no peer"):
        allocs[0].require_ready()
    assert any("no peer in this mesh will create" in r.getMessage() for r in caplog.records)


def test_hostile_guard_gossip_is_refused() -> None:
    from fabric.mesh.wire import FrameError

    net, routers = build(1, edges=[])
    a = allocators(routers, seeds=[routers[0].name])[0]
    future = {"conflicts": {f"{a.ring.ring_id}|x": net.now() + 1e9}}
    a.on_gossip(99, json.dumps(future).encode())
    assert a.refusal() is None and a.try_allocate("ok") is not None
    for bad in ({"ring": [1]}, {"removed": {"x": 1}}, {"conflicts": {"nobar": 1.0}},
                {"waiting": {"x": "boss"}}):
        with pytest.raises(FrameError):
            a.on_gossip(99, json.dumps(bad).encode())
