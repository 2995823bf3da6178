"""Block IPAM records are untrusted (issue 16), against a real etcd: forged blocks and node
records never become peers and are reported, garbage over a node's own block is written
back from its allocations, and garbage cannot hold a block forever."""

from __future__ import annotations

import json
import logging

from fabric.api import Handle
from fabric.ipam.blocks import block_key
from tests.util import wait_for


def h(i: int) -> Handle:
    return Handle(f"c{i:04d}", "eth0")


def node(ip: str, mac: str = "0a:00:00:00:00:01") -> str:
    return json.dumps({"name": "evil", "public_ip": ip, "backend_type": "calico-bgp",
                       "backend_data": {"VtepMAC": mac}})


def test_forged_blocks_and_node_records_are_refused(block_ipam, caplog) -> None:
    caplog.set_level(logging.ERROR)
    a = block_ipam("h1")
    a.start({})
    events = []
    a.subscribe(events.extend)
    store, prefix = a.store, a.prefix
    forged = {
        f"{prefix}/blocks/0.0.0.0-0": json.dumps({"cidr": "0.0.0.0/0", "affinity": "evil"}),
        f"{prefix}/blocks/198.18.0.0-24": json.dumps({"cidr": "198.18.0.0/24",
                                                     "affinity": "evil"}),
        f"{prefix}/blocks/10.244.0.0-24": json.dumps({"cidr": "10.244.0.0/24",
                                                     "affinity": "evil"}),  # whole pool
        f"{prefix}/blocks/10.244.0.64-27": json.dumps({"cidr": "10.244.0.64/27",
                                                      "affinity": "evil"}),  # not BlockSize
        f"{prefix}/blocks/10.244.0.96-28": json.dumps({"cidr": "10.244.0.112/28",
                                                      "affinity": "evil"}),  # key != cidr
        f"{prefix}/nodes/evil": node("10.244.0.5"),  # inside the pod network
        f"{prefix}/nodes/evil2": node("198.18.0.50", mac="ff:ff:ff:ff:ff:ff"),
        f"{prefix}/nodes/evil3": node("0.0.0.0"),
    }
    for key, value in forged.items():
        store.put(key, value)
    assert wait_for(lambda: {r["key"] for r in a.status()["refused"]} == set(forged), 5)
    assert events == [] and a.status()["nodes"] == ["h1"]
    for key in forged:
        store.delete(key)
    assert wait_for(lambda: a.status()["refused"] == [], 5)


def test_garbage_over_own_block_is_written_back_from_allocations(block_ipam) -> None:
    a = block_ipam("h1")
    (block,) = a.start({})
    first = a.allocate(h(1))
    key = block_key(a.prefix, block)
    a.subscribe(lambda _e: None)
    a.store.put(key, "{not json")
    def restored() -> bool:
        kv = a.store.get(key)
        try:
            rec = json.loads(kv.value)
        except ValueError:
            return False
        return rec["affinity"] == "h1" and rec["allocations"] != {}
    assert wait_for(restored, 5)
    second = a.allocate(Handle("c2", "eth0"))
    assert second.chunk == block and second.ip != first.ip
    assert a.allocations()[h(1)] == first


def test_garbage_cannot_hold_the_last_block(block_ipam) -> None:
    a = block_ipam("h1", cidr="10.244.0.0/27")  # two /28 blocks
    prefix = a.prefix
    for b in ("10.244.0.0-28", "10.244.0.16-28"):
        a.store.put(f"{prefix}/blocks/{b}", "garbage")
    (block,) = a.start({})
    assert json.loads(a.store.get(block_key(prefix, block)).value)["affinity"] == "h1"
