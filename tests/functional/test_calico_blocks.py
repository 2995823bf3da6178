"""Block IPAM against a real etcd (loopback, no root): claims, CAS races, borrowing, peers."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import Handle, NetworkContext, NetworkSpec, Node
from fabric.errors import PoolExhausted, StoreError
from fabric.ipam.blocks import BlockIPAM, block_key
from fabric.store import connect
from fabric_testplugins.etcd import etcd_binary

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed")


def h(i: int) -> Handle:
    return Handle(f"c{i:04d}", "eth0")


def test_claims_a_block_and_allocates_idempotently(block_ipam):
    ipam = block_ipam()
    chunks = ipam.start({"VtepMAC": "66:00:00:00:00:01"})
    assert len(chunks) == 1 and chunks[0].prefixlen == 28
    a = ipam.allocate(h(1))
    assert ipam.allocate(h(1)) == a
    b = ipam.allocate(h(2))
    assert a.ip != b.ip and a.chunk == b.chunk == chunks[0]
    raw = ipam.store.get(block_key(ipam.prefix, chunks[0]))
    assert '"affinity": "h1"' in raw.value and "c0001/eth0" in raw.value


def test_restart_keeps_allocations(block_ipam):
    first = block_ipam()
    first.start({})
    allocs = {h(i): first.allocate(h(i)) for i in range(20)}  # spills into a second block
    assert len(first.chunks()) == 2
    first.stop()
    again = block_ipam()  # same node name, fresh process state
    assert again.start({}) == first.chunks()
    assert again.allocations() == allocs
    assert again.allocate(h(3)) == allocs[h(3)]


def test_two_nodes_racing_never_share_an_address(block_ipam):
    a, b = block_ipam("h1"), block_ipam("h2")
    a.start({})
    b.start({})
    got: dict[str, list] = {"h1": [], "h2": []}

    def run(ipam, name):
        for i in range(40):
            got[name].append(ipam.allocate(Handle(f"{name}-{i}", "eth0")).ip)

    threads = [threading.Thread(target=run, args=(a, "h1")),
               threading.Thread(target=run, args=(b, "h2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ips = got["h1"] + got["h2"]
    assert len(ips) == 80 and len(set(ips)) == 80
    assert not set(a.chunks()) & set(b.chunks())


def test_borrow_when_pool_is_full_unless_strict(block_ipam):
    a = block_ipam("h1", cidr="10.244.0.0/26")  # 4 blocks of 16
    a.start({})
    for i in range(40):
        a.allocate(h(i))
    assert len(a.chunks()) == 3
    b = block_ipam("h2", cidr="10.244.0.0/26")
    b.start({})
    assert len(b.chunks()) == 1
    for i in range(16):
        b.allocate(Handle(f"b{i}", "eth0"))
    borrowed = b.allocate(Handle("b-extra", "eth0"))
    assert borrowed.chunk in a.chunks()
    assert IPv4Network(f"{borrowed.ip}/32") in b.chunks()
    strict = block_ipam("h3", cidr="10.244.0.0/26", StrictAffinity=True)
    strict.start({})
    with pytest.raises(PoolExhausted, match="StrictAffinity"):
        strict.allocate(Handle("s", "eth0"))
    assert b.release(Handle("b-extra", "eth0")) == borrowed
    assert IPv4Network(f"{borrowed.ip}/32") not in b.chunks()


def test_release_of_last_address_gives_block_back(block_ipam):
    ipam = block_ipam()
    seen = []
    ipam.start({})
    ipam.subscribe(lambda ev: None, seen.append)
    allocs = [ipam.allocate(h(i)) for i in range(17)]  # 16 + 1: second block
    second = allocs[-1].chunk
    assert second in ipam.chunks() and seen[-1] == ipam.chunks()
    ipam.release(h(16))
    assert second not in ipam.chunks()
    assert ipam.store.get(block_key(ipam.prefix, second)) is None
    assert seen[-1] == ipam.chunks()
    assert ipam.release(h(16)) is None  # idempotent


def test_peers_are_reported_with_blocks_and_backend_data(block_ipam):
    a = block_ipam("h1")
    a.start({})
    events = []
    a.subscribe(events.extend)
    b = block_ipam("h2")
    b.start({"VtepMAC": "66:00:00:00:00:02"})
    def latest():
        added = [e for e in events if e.peer.name == "h2" and e.kind == "added"]
        return added[-1] if added else None

    deadline = time.monotonic() + 5  # registration, then the block claim, arrive as events
    while time.monotonic() < deadline and (latest() is None or not latest().peer.subnets):
        time.sleep(0.05)
    added = latest()
    assert added is not None and added.peer.subnets == b.chunks()
    assert added.peer.data["VtepMAC"] == "66:00:00:00:00:02"
    b.teardown()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(e.kind == "removed" for e in events):
        time.sleep(0.05)
    assert any(e.kind == "removed" and e.peer.name == "h2" for e in events)


def test_corrupt_block_in_store_is_skipped(block_ipam):
    a = block_ipam("h1")
    a.store.put(block_key(a.prefix, IPv4Network("10.244.0.0/28")), "{garbage")
    a.start({})
    alloc = a.allocate(h(1))
    assert alloc.chunk != IPv4Network("10.244.0.0/28")


def test_unreachable_etcd_is_a_store_error(tmp_path):
    spec = NetworkSpec(name="pods", cidr=IPv4Network("10.244.0.0/24"), backend="calico-bgp")
    ctx = NetworkContext(spec=spec, node=Node("h1", IPv4Address("198.18.0.11"), "eth0", 1500),
                         state_dir=tmp_path, store=connect("http://127.0.0.1:9"))
    with pytest.raises(StoreError):
        BlockIPAM(ctx).start({})


def test_random_allocate_release_sequences_keep_invariants(module_etcd, tmp_path):
    """Hypothesis drives two nodes sharing a 64-address pool through allocate/release."""
    from hypothesis import settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    counter = iter(range(10**6))

    class Pool(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            prefix = f"/sm{next(counter)}"
            self.nodes = {}
            for i, name in enumerate(("h1", "h2")):
                spec = NetworkSpec(name="pods", cidr=IPv4Network("10.244.0.0/26"),
                                   backend="calico-bgp", ipam_config={"BlockSize": 28},
                                   etcd_prefix=prefix, subnet_len=28)
                ctx = NetworkContext(spec=spec, node=Node(name, IPv4Address(f"198.18.0.{11 + i}"),
                                                          "eth0", 1500),
                                     state_dir=tmp_path / name, store=connect(module_etcd.url))
                self.nodes[name] = BlockIPAM(ctx)
                self.nodes[name].start({})
            self.model: dict[str, dict[Handle, IPv4Address]] = {"h1": {}, "h2": {}}

        @rule(node=st.sampled_from(["h1", "h2"]), n=st.integers(0, 40))
        def allocate(self, node, n):
            handle = Handle(f"{node}-{n}", "eth0")
            used = sum(len(m) for m in self.model.values())
            try:
                alloc = self.nodes[node].allocate(handle)
            except PoolExhausted:
                assert used == 64 and handle not in self.model[node]
                return
            if handle in self.model[node]:
                assert alloc.ip == self.model[node][handle]  # idempotent
            self.model[node][handle] = alloc.ip

        @rule(node=st.sampled_from(["h1", "h2"]), n=st.integers(0, 40))
        def release(self, node, n):
            handle = Handle(f"{node}-{n}", "eth0")
            got = self.nodes[node].release(handle)
            expected = self.model[node].pop(handle, None)
            assert (got.ip if got else None) == expected

        @invariant()
        def consistent(self):
            ips = [ip for m in self.model.values() for ip in m.values()]
            assert len(ips) == len(set(ips))
            for name, ipam in self.nodes.items():
                assert {h: a.ip for h, a in ipam.allocations().items()} == self.model[name]
                for a in ipam.allocations().values():
                    assert a.ip in a.chunk
                    assert a.chunk in ipam.chunks() or IPv4Network(f"{a.ip}/32") in ipam.chunks()

        def teardown(self):
            for ipam in self.nodes.values():
                ipam.stop()

    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Pool, settings=settings(max_examples=12, stateful_step_count=40, deadline=None))
