"""WeaveDNS on simulated mesh peers: gossip, reachability filter, rotation, tombstones,
rmpeer, persistence and the origin's authority over its own entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric.errors import ConfigError
from fabric.mesh.router import Router
from fabric.mesh.sim import SimNet
from fabric.mesh.wire import GOSSIP, Frame
from fabric.weave.dns import CHANNEL, STATE_FILE, WeaveDNS
from fabric.weave.dns_records import DnsEntries, Entry
from tests.unit.mesh.helpers import build
from tests.unit.weave_util import SimHost


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def chain(tmp_path: Path, n: int = 3, clock: Clock | None = None
          ) -> tuple[SimNet, list[Router], list[WeaveDNS]]:
    net, rs = build(n, edges=[(i, i + 1) for i in range(n - 1)])
    ds = [WeaveDNS(SimHost(net, r), tmp_path / f"p{i}", clock=clock or Clock(),
                   gc_interval=1.0).start() for i, r in enumerate(rs)]
    net.run_until(net.now() + 2)
    return net, rs, ds


def test_names_reach_every_peer_and_one_name_answers_all_rotated(tmp_path: Path) -> None:
    net, _rs, (a, b, c) = chain(tmp_path)
    a.add("Web", "10.32.0.1", "ca")
    c.add("web.weave.local", "10.32.0.2", "cc")
    net.run_until(net.now() + 1)
    for d in (a, b, c):
        assert sorted(d.lookup("web")) == ["10.32.0.1", "10.32.0.2"]
    firsts = {b.lookup("WEB.weave.local.")[0] for _ in range(4)}
    assert firsts == {"10.32.0.1", "10.32.0.2"}  # the order rotates per query
    assert b.reverse("10.32.0.2") == ["web.weave.local."]
    assert b.lookup("nothing") == [] and b.lookup("bad name!") == []


def test_unreachable_origin_is_hidden_and_returns_on_heal(tmp_path: Path) -> None:
    net, rs, (a, b, c) = chain(tmp_path)
    c.add("db", "10.32.0.9", "cc")
    net.run_until(net.now() + 1)
    assert a.lookup("db") == ["10.32.0.9"]
    net.partition([[rs[0].name, rs[1].name], [rs[2].name]])
    net.run_until(net.now() + 2)
    assert a.lookup("db") == [] and b.lookup("db") == []
    assert a.status()["hidden_unreachable"] == 1
    assert [x["answered"] for x in a.entries()] == [False]
    assert c.lookup("db") == ["10.32.0.9"]  # its own names always answer
    net.heal()
    net.run_until(net.now() + 3)
    assert a.lookup("db") == ["10.32.0.9"]


def test_a_removed_name_stays_removed_after_a_stale_peer_heals(tmp_path: Path) -> None:
    net, rs, (a, b, c) = chain(tmp_path)
    a.add("old", "10.32.0.4", "ca")
    a.add("keep", "10.32.0.5", "ca")
    net.run_until(net.now() + 1)
    net.partition([[rs[0].name, rs[1].name], [rs[2].name]])  # c keeps a live copy
    net.run_until(net.now() + 2)
    assert a.remove(hostname="old") == 1
    assert a.remove(hostname="old") == 0
    net.heal()
    net.run_until(net.now() + 5)  # c gossips its stale copy; the tombstone wins
    for d in (a, b, c):
        assert d.lookup("old") == [] and d.lookup("keep") == ["10.32.0.5"]


def test_remove_matches_every_given_field_and_remove_container(tmp_path: Path) -> None:
    net, _rs, (a, b, _c) = chain(tmp_path)
    a.add("x", "10.32.0.1", "c1")
    a.add("x", "10.32.0.2", "c2")
    a.add("y", "10.32.0.2", "c2")
    assert a.remove(hostname="x", ip="10.32.0.1") == 1
    assert a.remove_container("c2") == 2
    net.run_until(net.now() + 1)
    assert b.lookup("x") == [] and b.lookup("y") == []
    with pytest.raises(ConfigError):
        a.remove()


def test_only_the_origin_changes_its_entries(tmp_path: Path) -> None:
    net, rs, (a, b, _c) = chain(tmp_path)
    a.add("web", "10.32.0.1", "ca")
    net.run_until(net.now() + 1)
    assert b.remove(hostname="web") == 0  # b cannot tombstone a's entry
    # a forged claim on a's entry at a higher version is superseded by a
    forged = Entry("web.weave.local.", "10.32.0.1", rs[0].name, "ca", 7, 123)
    b.on_gossip(rs[2].name, DnsEntries([forged]).encode())
    assert b.lookup("web") == []
    net.run_until(net.now() + 1)
    for d in (a, b):
        assert d.lookup("web") == ["10.32.0.1"]
    assert a.counters["own_entries_reasserted"] == 1
    # an entry of ours we never made (a lost state directory): tombstoned everywhere
    ghost = Entry("ghost.weave.local.", "10.32.0.8", rs[0].name, "gone", 3, 0)
    b.on_gossip(rs[2].name, DnsEntries([ghost]).encode())
    net.run_until(net.now() + 1)
    assert a.lookup("ghost") == [] and b.lookup("ghost") == []


def test_rmpeer(tmp_path: Path) -> None:
    net, rs, (a, b, c) = chain(tmp_path)
    c.add("gone", "10.32.0.7", "cc")
    net.run_until(net.now() + 1)
    with pytest.raises(ConfigError, match="reachable"):
        a.remove_peer(rs[2].name)
    with pytest.raises(ConfigError, match="itself"):
        a.remove_peer(rs[0].name)
    net.partition([[rs[0].name, rs[1].name], [rs[2].name]])
    net.run_until(net.now() + 2)
    assert a.remove_peer(rs[2].name) == 1
    assert a.entries() == [] and a.status()["removed_peers"]
    b.add("other", "10.32.0.8", "cb")  # b's next full gossip (still with c's) is new to a
    net.run_until(net.now() + 3)  # b (no rmpeer) relays c's entries: refused
    assert [x["hostname"] for x in a.entries()] == ["other.weave.local."]
    assert a.counters["dropped_removed_peer"] >= 1
    net.heal()  # c was alive after all: it re-announces its own names
    net.run_until(net.now() + 3)
    assert a.lookup("gone") == ["10.32.0.7"] and not a.status()["removed_peers"]


def test_tombstones_are_collected_after_their_ttl(tmp_path: Path) -> None:
    clock = Clock()
    net, _rs, (a, b, _c) = chain(tmp_path, clock=clock)
    a.add("t", "10.32.0.3", "ca")
    a.remove(hostname="t")
    net.run_until(net.now() + 1)
    assert b.status()["tombstones"] == 1
    clock.t += 29 * 60
    net.run_until(net.now() + 2)
    assert b.status()["tombstones"] == 1
    clock.t += 2 * 60
    net.run_until(net.now() + 2)
    assert a.status()["tombstones"] == 0 and b.status()["tombstones"] == 0
    saved = json.loads((tmp_path / "p0" / STATE_FILE).read_text())
    assert saved["entries"] == []


def test_own_entries_persist_and_return_one_version_up(tmp_path: Path) -> None:
    net, rs, (a, _b, _c) = chain(tmp_path)
    a.add("web", "10.32.0.1", "ca")
    a.add("old", "10.32.0.2", "ca")
    a.remove(hostname="old")
    saved = json.loads((tmp_path / "p0" / STATE_FILE).read_text())
    assert sorted(row[0] for row in saved["entries"]) == ["old.weave.local.",
                                                         "web.weave.local."]
    assert not list((tmp_path / "p0").glob("*.tmp"))
    # a restart (same peer name, new router) finds them, one version up
    r2 = Router(rs[0].name, "p0", net, rs[0].cfg)
    again = WeaveDNS(SimHost(net, r2), tmp_path / "p0").start()
    versions = {x["hostname"]: (x["version"], x["tombstone"] > 0) for x in again.entries()}
    assert versions == {"web.weave.local.": (2, False), "old.weave.local.": (3, True)}
    assert again.lookup("web") == ["10.32.0.1"] and again.lookup("old") == []


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    net, rs = build(1, edges=[])
    (tmp_path / STATE_FILE).write_text('{"entries": [["x", 1]]}')
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path)
    with pytest.raises(ConfigError) as exc:
        d.start()
    assert exc.value.field == "state_dir" and STATE_FILE in exc.value.fix


def test_bad_input_is_refused_with_the_field(tmp_path: Path) -> None:
    net, rs = build(1, edges=[])
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path).start()
    for kwargs, field in [(dict(hostname="web.example.com", ip="10.0.0.1"), "hostname"),
                          (dict(hostname="web", ip="::1"), "ip"),
                          (dict(hostname="web", ip="10.0.0.1", container_id="x" * 200),
                           "container_id")]:
        with pytest.raises(ConfigError) as exc:
            d.add(**kwargs)
        assert exc.value.field == field and exc.value.fix
    with pytest.raises(ConfigError):
        WeaveDNS(SimHost(net, rs[0]), tmp_path, domain=".")


def test_bad_gossip_is_counted_by_the_router(tmp_path: Path) -> None:
    net, rs = build(1, edges=[])
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path).start()

    class Conn:
        remote, remote_nickname, address, outbound = 5, "x", "sim:5", False

        def send(self, data: bytes) -> None: ...
        def close(self, reason: str) -> None: ...
    rs[0].handle_frame(Conn(), Frame(GOSSIP, CHANNEL, 5, 0, b'{"e": [[1, 2]]}'))
    assert d.status()["rejected_gossip"] == 1 and d.entries() == []


def test_stop_leaves_the_channel(tmp_path: Path) -> None:
    net, rs = build(1, edges=[])
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path).start()
    assert CHANNEL in rs[0].channels
    d.stop()
    assert CHANNEL not in rs[0].channels and not rs[0].on_peers_changed


def test_a_late_start_asks_reachable_peers_for_their_names(tmp_path: Path) -> None:
    """The backend starts weaveDNS after the mesh has connected: the new neighbour's full
    gossip is over, the next periodic one is far off (weave: 30 s)."""
    net, rs = build(2, edges=[(0, 1)])
    for r in rs:
        r.cfg.gossip_interval = 1000.0
    net.run_until(2)
    b = WeaveDNS(SimHost(net, rs[1]), tmp_path / "b").start()
    b.add("early", "10.32.0.1", "cb")
    net.run_until(3)
    a = WeaveDNS(SimHost(net, rs[0]), tmp_path / "a").start()
    net.run_until(4)
    assert a.lookup("early") == ["10.32.0.1"]


def test_the_store_is_capped_against_a_flooding_peer(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fabric.weave import dns as dns_mod
    monkeypatch.setattr(dns_mod, "MAX_ENTRIES", 3)
    net, rs = build(1, edges=[])
    d = WeaveDNS(SimHost(net, rs[0]), tmp_path).start()
    flood = DnsEntries(Entry(f"h{i}.weave.local.", "10.32.0.1", 7, "", 1, 0) for i in range(5))
    d.on_gossip(7, flood.encode())
    assert len(d.entries()) == 3 and d.counters["dropped_store_full"] == 2
    with pytest.raises(ConfigError, match="3 entries"):
        d.add("mine", "10.32.0.2")
