"""Static addresses (``IPAM.allocate(handle, requested)``) in the IPAMs that need a real
datastore or a mesh: Calico-style blocks on a real etcd, the weave-style ring on loopback.
The contract (fabric.api): exactly that address, or ConfigError(field="ips") / IPAMError."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from fabric.api import Handle, NetworkContext, NetworkSpec, Node
from fabric.errors import ConfigError, IPAMError
from fabric.ipam.blocks import BlockIPAM
from fabric.ipam.ring import RingIPAM
from fabric.store import connect
from fabric_testplugins.etcd import EtcdServer, etcd_binary


@pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed")
def test_blocks_ipam_static_address(tmp_path: Path) -> None:
    with EtcdServer(tmp_path / "etcd") as etcd:
        spec = NetworkSpec(name="pods", cidr=IPv4Network("10.244.0.0/24"), backend="calico-bgp",
                           ipam_config={"BlockSize": 28}, etcd_prefix="/tstatic",
                           subnet_len=28)
        ctx = NetworkContext(spec=spec, node=Node("h1", IPv4Address("198.18.0.11"), "eth0",
                                                  1500), state_dir=tmp_path / "h1",
                             store=connect(etcd.url))
        ipam = BlockIPAM(ctx)
        try:
            (block,) = ipam.start({})
            want = block.network_address + 9
            got = ipam.allocate(Handle("a", "eth0"), want)
            assert got.ip == want and got.chunk == block
            assert ipam.allocate(Handle("a", "eth0")).ip == want  # idempotent
            with pytest.raises(IPAMError, match="in use by a/eth0"):
                ipam.allocate(Handle("b", "eth0"), want)
            with pytest.raises(IPAMError, match="already holds"):
                ipam.allocate(Handle("a", "eth0"), want + 1)
            with pytest.raises(ConfigError) as info:  # not one of this node's blocks
                ipam.allocate(Handle("b", "eth0"), block.broadcast_address + 1)
            assert info.value.field == "ips"
            # dynamic allocations never take it
            dyn = {ipam.allocate(Handle(f"d{i}", "eth0")).ip for i in range(12)}
            assert want not in dyn
        finally:
            ipam.teardown()


def test_ring_ipam_static_address(tmp_path: Path) -> None:
    spec = NetworkSpec("ringt", IPv4Network("10.32.0.0/16"), "fake", ipam="ring",
                       ipam_config={"port": 0, "init": "consensus=1", "gossip_interval": 1,
                                    "wait": 10})
    ipam = RingIPAM(NetworkContext(spec, Node("n1", IPv4Address("127.77.1.1"), "lo", 1500),
                                   tmp_path))
    try:
        (chunk, *_) = ipam.start({})
        want = chunk.network_address + 77
        assert ipam.allocate(Handle("a", "eth0"), want).ip == want
        assert ipam.allocate(Handle("a", "eth0"), want).ip == want
        with pytest.raises(IPAMError):
            ipam.allocate(Handle("b", "eth0"), want)
        with pytest.raises(IPAMError, match="already holds"):
            ipam.allocate(Handle("a", "eth0"), want + 1)
        with pytest.raises(ConfigError) as info:
            ipam.allocate(Handle("c", "eth0"), IPv4Address("10.99.0.1"))
        assert info.value.field == "ips"
    finally:
        ipam.teardown()
