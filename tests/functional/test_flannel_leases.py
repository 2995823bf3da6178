"""flannel's type names in real etcd records: the config and leases an agent writes say
``host-gw`` / ``udp`` / ``vxlan``, as flannel's own daemon writes and reads them."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.ipam.subnet import SubnetLeaseIPAM

PREFIX = "/h7flannel/network"


@pytest.mark.parametrize(("backend", "flannel"), [("hostgw", "host-gw"), ("flannel-udp", "udp"),
                                                  ("vxlan", "vxlan")])
def test_lease_and_config_carry_flannels_type(store, tmp_path: Path, backend: str,
                                              flannel: str) -> None:
    prefix = f"{PREFIX}-{flannel}"
    spec = NetworkSpec(name="t", cidr=IPv4Network("10.50.0.0/16"), backend=backend,
                       ipam="subnet", etcd_prefix=prefix)
    node = Node("n1", IPv4Address("198.18.0.11"), "eth0", 1500)
    ipam = SubnetLeaseIPAM(NetworkContext(spec, node, tmp_path, store))
    try:
        (subnet,) = ipam.start({})
        kv = store.get(f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}")
        assert json.loads(kv.value)["BackendType"] == flannel
        assert json.loads(store.get(f"{prefix}/config").value)["Backend"]["Type"] == flannel
    finally:
        ipam.stop()
