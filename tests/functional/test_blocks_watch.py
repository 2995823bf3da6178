"""Block IPAM's list+watch survives a compaction whose re-list fails once (real etcd, no root).

The watch's consumer is held on one event while etcd restarts and the history after it is
changed and compacted, so the watch resumes from a compacted revision and the IPAM must
re-list; etcd is stopped just as that re-list starts (a logging handler on the "re-listing"
message) and started again 1.5 s later. The IPAM must keep trying: the node that joined
meanwhile and one that joins afterwards both reach the peer callback."""

from __future__ import annotations

import logging
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import NetworkContext, NetworkSpec, Node, PeerEvent
from fabric.ipam.blocks import BlockIPAM
from fabric.store import connect
from fabric_testplugins.etcd import EtcdServer, etcd_binary
from tests.util import wait_for

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed")


class _StopEtcdOnRelist(logging.Handler):
    """The first "re-listing" log line stops etcd (synchronously: the re-list that follows
    fails) and schedules its restart."""

    def __init__(self, etcd: EtcdServer) -> None:
        super().__init__(logging.INFO)
        self.etcd = etcd
        self.fired = threading.Event()
        self.restarted = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "re-listing" not in record.getMessage() or self.fired.is_set():
            return
        self.fired.set()
        self.etcd.stop()
        timer = threading.Timer(1.5, lambda: (self.etcd.start(), self.restarted.set()))
        timer.daemon = True
        timer.start()


def test_watch_resumes_after_a_failed_relist(tmp_path) -> None:
    etcd = EtcdServer(tmp_path / "etcd").start()
    made: list[BlockIPAM] = []

    def ipam(node: str) -> BlockIPAM:
        spec = NetworkSpec(name="pods", cidr=IPv4Network("10.244.0.0/24"), backend="calico-bgp",
                           ipam_config={"BlockSize": 28}, etcd_prefix="/bw", subnet_len=28)
        idx = len(made) + 11
        ctx = NetworkContext(spec=spec, node=Node(node, IPv4Address(f"198.18.0.{idx}"), "eth0",
                                                  1500), state_dir=tmp_path / node,
                             store=connect(etcd.url))
        made.append(BlockIPAM(ctx))
        return made[-1]

    seen: dict[str, tuple[IPv4Network, ...]] = {}
    gate, blocked = threading.Event(), threading.Event()

    def on_peers(events: list[PeerEvent]) -> None:
        for ev in events:
            if ev.kind == "added":
                seen[ev.peer.name] = ev.peer.subnets
        if any(ev.peer.name == "h2" for ev in events) and not gate.is_set():
            blocked.set()
            gate.wait(30)

    handler = _StopEtcdOnRelist(etcd)
    fabric_log = logging.getLogger("fabric")
    old_level = fabric_log.level
    try:
        h1 = ipam("h1")
        h1.start({})
        h1.subscribe(on_peers)
        ipam("h2").start({})
        assert blocked.wait(10)  # the watch thread is held on h2's event
        etcd.stop()  # its stream dies under it
        etcd.start()
        h3 = ipam("h3")
        h3_blocks = h3.start({})
        store = connect(etcd.url)
        store.compact(store.put("/unrelated", "x"))
        fabric_log.setLevel(logging.INFO)
        logging.getLogger().addHandler(handler)
        gate.set()
        assert handler.fired.wait(15), "the watch never reported the compaction"
        assert handler.restarted.wait(15)
        assert wait_for(lambda: seen.get("h3") == h3_blocks, timeout=20), seen
        h4_blocks = ipam("h4").start({})
        assert wait_for(lambda: seen.get("h4") == h4_blocks, timeout=10), seen  # watching
    finally:
        gate.set()
        logging.getLogger().removeHandler(handler)
        fabric_log.setLevel(old_level)
        for i in made:
            i.stop()
        etcd.stop()
