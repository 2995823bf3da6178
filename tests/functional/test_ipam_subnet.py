"""The flannel-style subnet IPAM against a real etcd on loopback (no root needed)."""

from __future__ import annotations

import json
import logging
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import Handle, NetworkContext, NetworkSpec, Node, PeerEvent
from fabric.errors import ConfigError, PoolExhausted, StoreUnavailable
from fabric.ipam.subnet import SubnetLeaseIPAM
from fabric.plugins import load_plugin
from fabric.store import connect
from fabric_testplugins.etcd import EtcdServer
from tests.util import wait_for

PREFIX = "/netfabric/t"


class Peers:
    """Collects peer events with their arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, PeerEvent]] = []
        self.chunks: list[tuple[IPv4Network, ...]] = []
        self.lock = threading.Lock()

    def __call__(self, events) -> None:
        with self.lock:
            self.events.extend((time.monotonic(), e) for e in events)

    def on_chunks(self, chunks) -> None:
        self.chunks.append(chunks)

    def seen(self, kind: str, ip: str) -> float | None:
        with self.lock:
            for t, e in self.events:
                if e.kind == kind and str(e.peer.public_ip) == ip:
                    return t
        return None

    def last(self, ip: str) -> PeerEvent | None:
        with self.lock:
            mine = [e for _, e in self.events if str(e.peer.public_ip) == ip]
        return mine[-1] if mine else None


@pytest.fixture
def make(store, tmp_path, stop_later):
    def factory(n: int, *, cidr="10.50.0.0/16", subnet_len=24, ttl=None, state=None, st=None,
                backend="vxlan"):  # fmt: skip
        spec = NetworkSpec(
            name="t",
            cidr=IPv4Network(cidr),
            backend=backend,
            subnet_len=subnet_len,
            ipam="subnet",
            ipam_config={"leaseTTL": ttl} if ttl else {},
            etcd_prefix=PREFIX,
        )
        node = Node(f"n{n}", IPv4Address(f"198.18.0.{10 + n}"), "eth0", 1500)
        ctx = NetworkContext(spec, node, state or tmp_path / f"n{n}", st or store)
        return stop_later(SubnetLeaseIPAM(ctx))

    return factory


def lease_of(store, subnet: IPv4Network) -> dict:
    kv = store.get(f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}")
    return json.loads(kv.value) if kv else {}


def test_entry_point_and_config_validation(make) -> None:
    assert load_plugin("ipam", "subnet") is SubnetLeaseIPAM
    with pytest.raises(ConfigError, match="ipamConfig.bogus"):
        spec = NetworkSpec(name="t", cidr=IPv4Network("10.50.0.0/16"), backend="vxlan",
                           ipam_config={"bogus": 1})  # fmt: skip
        SubnetLeaseIPAM(NetworkContext(spec, Node("n", IPv4Address("198.18.0.9"), "e", 1500),
                                       None))  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(ConfigError, match="leaseTTL"):
        make(1, ttl="forever")


def test_two_nodes_acquire_different_subnets_concurrently(make, store) -> None:
    nodes = [make(i, cidr="10.50.0.0/26", subnet_len=29) for i in range(8)]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = nodes[i].start({"VtepMAC": f"02:00:00:00:00:0{i}"})
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = [r[0] for r in results.values() if isinstance(r, tuple)]
    failures = [r for r in results.values() if not isinstance(r, tuple)]
    # a /26 in /29s is 8 subnets; flannel skips the first: 7 nodes win, one is told clearly
    assert len(got) == 7 and len(set(got)) == 7
    assert IPv4Network("10.50.0.0/29") not in got
    assert len(failures) == 1 and isinstance(failures[0], PoolExhausted)
    cfg = json.loads(store.get(f"{PREFIX}/config").value)
    assert cfg["Network"] == "10.50.0.0/26" and cfg["SubnetLen"] == 29
    for i, r in results.items():
        if isinstance(r, tuple):
            assert lease_of(store, r[0]) == {
                "PublicIP": f"198.18.0.{10 + i}",
                "BackendType": "vxlan",
                "BackendData": {"VtepMAC": f"02:00:00:00:00:0{i}"},
            }


def test_restart_reuses_the_lease_and_allocations(make, store, tmp_path) -> None:
    a = make(1, ttl=30)
    (subnet,) = a.start({"v": 1})
    first = a.allocate(Handle("c1", "eth0"))
    assert first.ip == subnet.network_address + 2  # .1 is the gateway
    lease_id = a.status()["lease_id"]
    a.stop()
    b = make(1, ttl=30, state=tmp_path / "n1")  # same node, same state dir
    assert b.start({"v": 1}) == (subnet,)
    assert b.allocate(Handle("c1", "eth0")) == first
    assert b.allocate(Handle("c2", "eth0")).ip == subnet.network_address + 3
    assert b.status()["lease_id"] == lease_id  # the live etcd lease was re-attached
    b.stop()
    # state dir lost, same PublicIP: flannel's rule re-uses the lease; new BackendData published
    c = make(1, ttl=30, state=tmp_path / "fresh")
    assert c.start({"v": 2}) == (subnet,)
    assert lease_of(store, subnet)["BackendData"] == {"v": 2}
    c.stop()
    # two leases with our PublicIP (a stale one): the recorded one is kept, the other removed
    other = next(s for s in (IPv4Network(f"10.50.{i}.0/24") for i in range(1, 9)) if s != subnet)
    store.put(f"{PREFIX}/subnets/{other.network_address}-24", json.dumps(
        {"PublicIP": "198.18.0.11", "BackendType": "vxlan", "BackendData": {}}))  # fmt: skip
    d = make(1, ttl=30, state=tmp_path / "n1")
    assert d.start({"v": 2}) == (subnet,)
    assert lease_of(store, other) == {}


def test_peers_see_add_change_and_remove_within_a_second(make, store) -> None:
    a, b = make(1, ttl=30), make(2, ttl=30)
    a.start({"mac": "a"})
    peers = Peers()
    a.subscribe(peers, peers.on_chunks)
    t0 = time.monotonic()
    (bsub,) = b.start({"mac": "b"})
    assert wait_for(lambda: peers.seen("added", "198.18.0.12"), 2)
    assert peers.seen("added", "198.18.0.12") - t0 < 1.0
    ev = peers.last("198.18.0.12")
    assert ev.peer.subnets == (bsub,) and ev.peer.data == {"mac": "b"}
    assert ev.peer.backend_type == "vxlan"
    (shown,) = a.status()["peers"]
    assert shown["public_ip"] == "198.18.0.12" and shown["subnets"] == [str(bsub)]
    assert all(str(e.peer.public_ip) != "198.18.0.11" for _, e in peers.events)  # not self
    # a late subscriber gets the current peers at once
    late = Peers()
    b.subscribe(late)
    assert late.seen("added", "198.18.0.11") is not None
    t2 = time.monotonic()
    b.teardown()
    assert wait_for(lambda: peers.seen("removed", "198.18.0.12"), 2)
    assert peers.seen("removed", "198.18.0.12") - t2 < 1.0
    assert store.get(f"{PREFIX}/subnets/{bsub.network_address}-24") is None
    assert a.status()["peers"] == []
    assert peers.chunks == []  # a's own lease never moved


def test_lease_is_renewed_and_reacquired(make, store) -> None:
    a = make(1, ttl=3)
    (subnet,) = a.start({})
    key = f"{PREFIX}/subnets/{subnet.network_address}-24"
    time.sleep(4.5)  # longer than the TTL: only renewal keeps it
    assert store.get(key) is not None
    status = a.status()
    assert 0 < status["expires_in"] <= 3 and status["expiry"].endswith("Z")
    # someone deletes our lease: it comes back, same subnet
    peers = Peers()
    a.subscribe(peers, peers.on_chunks)
    store.delete(key)
    assert wait_for(lambda: store.get(key) is not None, 3)
    assert a.chunks() == (subnet,) and peers.chunks == []
    # deleted and taken by another node: we move and say so
    store.delete(key)
    thief = json.dumps({"PublicIP": "198.18.0.99", "BackendType": "vxlan", "BackendData": {}})
    store.put(key, thief)
    assert wait_for(lambda: a.chunks() != (subnet,), 5)
    assert wait_for(lambda: peers.chunks == [a.chunks()], 2)
    assert wait_for(lambda: peers.seen("added", "198.18.0.99"), 2)


def test_bad_values_in_etcd_are_ignored_with_an_error(make, store, caplog) -> None:
    store.put(f"{PREFIX}/subnets/10.50.1.0-24", "{not json")
    store.put(f"{PREFIX}/subnets/10.50.2.0-24", '{"PublicIP": "banana"}')
    store.put(f"{PREFIX}/subnets/garbage", "x")
    caplog.set_level(logging.ERROR, logger="fabric.ipam.subnet")
    a = make(1, cidr="10.50.0.0/22", ttl=30)  # subnets .1 .2 .3: two are garbage
    assert a.start({}) == (IPv4Network("10.50.3.0/24"),)  # garbage counts as taken
    peers = Peers()
    a.subscribe(peers)
    store.put(f"{PREFIX}/subnets/10.50.1.0-24",
              json.dumps({"PublicIP": "198.18.0.50", "BackendType": "vxlan"}))  # fmt: skip
    assert wait_for(lambda: peers.seen("added", "198.18.0.50"), 2)
    store.put(f"{PREFIX}/subnets/10.50.1.0-24", "[broken")  # a known peer turns to garbage
    time.sleep(0.3)
    assert peers.seen("removed", "198.18.0.50") is None  # kept, as flannel does
    assert "malformed" in caplog.text
    assert a.allocate(Handle("c", "eth0")).ip == IPv4Address("10.50.3.2")


def test_etcd_config_is_authoritative(make, store) -> None:
    store.put(f"{PREFIX}/config", json.dumps({"Network": "10.50.0.0/16", "SubnetLen": 26,
                                              "Backend": {"Type": "vxlan"}}))  # fmt: skip
    (subnet,) = make(1, ttl=30).start({})
    assert subnet.prefixlen == 26
    store.put(f"{PREFIX}/config", '{"Network": "10.50.0.0/16", "SubnetLen": 40}')
    with pytest.raises(ConfigError, match="SubnetLen"):
        make(2, ttl=30).start({})


def test_etcd_down_keeps_serving_and_recovers(make, store, etcd) -> None:
    a, b = make(1, ttl=3), make(2, ttl=3)
    (subnet,) = a.start({})
    peers = Peers()
    a.subscribe(peers)
    etcd.stop()
    allocs = [a.allocate(Handle(f"c{i}", "eth0")) for i in range(3)]
    assert all(x.ip in subnet for x in allocs)
    assert wait_for(lambda: a.status()["store_error"], 5)
    etcd.start()
    assert wait_for(lambda: a.status()["store_error"] is None, 10)
    assert a.chunks() == (subnet,)
    b.start({})  # a's watch resumed: it sees the new peer
    assert wait_for(lambda: peers.seen("added", "198.18.0.12"), 5)


def test_start_without_etcd(make, tmp_path) -> None:
    dead = connect("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(StoreUnavailable):
        make(1, st=dead, state=tmp_path / "x").start({})
    ctx_none = make(2)
    ctx_none.ctx.store = None
    with pytest.raises(ConfigError, match="needs etcd"):
        ctx_none.start({})
    dead.close()


def test_restart_while_etcd_is_down_uses_the_recorded_lease(make, store, etcd, tmp_path) -> None:
    a = make(1, ttl=30)
    (subnet,) = a.start({})
    a.allocate(Handle("c1", "eth0"))
    a.stop()
    etcd.stop()
    b = make(1, ttl=30, state=tmp_path / "n1")
    assert b.start({}) == (subnet,)  # degraded: recorded lease, keeps allocating
    assert b.allocate(Handle("c2", "eth0")).ip == subnet.network_address + 3
    assert b.status()["confirmed"] is False
    etcd.start()
    assert wait_for(lambda: b.status()["confirmed"], 10)
    assert b.chunks() == (subnet,)


def test_teardown_returns_the_lease_even_offline(make, store, tmp_path) -> None:
    a = make(1, ttl=30)
    (subnet,) = a.start({})
    a.allocate(Handle("c1", "eth0"))
    a.stop()
    offline = make(1, ttl=30, state=tmp_path / "n1")  # never started: `fabric down` offline
    offline.teardown()
    assert store.get(f"{PREFIX}/subnets/{subnet.network_address}-24") is None
    assert not (tmp_path / "n1" / "allocations.json").exists()
    assert offline.allocations() == {}


def test_etcd_server_in_use_by_two_agents_does_not_share(tmp_path) -> None:
    """Two separate etcd servers (separate clusters) are independent: a sanity check of
    the EtcdServer helper's free ports and data directories."""
    with EtcdServer(tmp_path / "e1") as e1, EtcdServer(tmp_path / "e2") as e2:
        assert e1.url != e2.url
        s1, s2 = connect(e1.url), connect(e2.url)
        s1.put("/k", "1")
        assert s2.get("/k") is None
        s1.close()
        s2.close()
