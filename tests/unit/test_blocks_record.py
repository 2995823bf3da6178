"""Block records, keys and BlockIPAM option validation (pure logic, no etcd)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.errors import ConfigError, IPAMError
from fabric.ipam.blocks import Block, BlockIPAM, block_key, parse_block_key


def ctx(ipam_config=None, cidr="10.244.0.0/16") -> NetworkContext:
    spec = NetworkSpec(name="pods", cidr=IPv4Network(cidr), backend="calico-bgp",
                       ipam_config=ipam_config or {})
    return NetworkContext(spec=spec, node=Node("h1", IPv4Address("198.18.0.11"), "eth0", 1500),
                          state_dir=Path("/nonexistent"))


def test_key_round_trip():
    cidr = IPv4Network("10.244.3.64/26")
    key = block_key("/netfabric/pods", cidr)
    assert key == "/netfabric/pods/blocks/10.244.3.64-26"
    assert parse_block_key(key) == cidr
    assert parse_block_key("/netfabric/pods/blocks/garbage") is None


@given(st.integers(0, 1023), st.sets(st.integers(0, 63), max_size=64), st.booleans())
def test_encode_decode_round_trip(n, ordinals, affine):
    cidr = IPv4Network(f"{IPv4Address('10.0.0.0') + 64 * n}/26")
    block = Block(cidr, "h1" if affine else None,
                  {o: {"handle": f"c{o}/eth0", "node": "h1"} for o in ordinals})
    back = Block.decode(block.encode())
    assert back == block
    free = back.free_ordinal()
    if len(ordinals) == 64:
        assert free is None
    else:
        assert free == min(set(range(64)) - ordinals)
        assert back.ip(free) in cidr


@pytest.mark.parametrize("text", [
    "not json", "{}",
    '{"cidr": "10.0.0.0/26", "allocations": {"64": {"handle": "a/b", "node": "x"}}}',
    '{"cidr": "10.0.0.0/26", "allocations": {"1": "x"}}', '{"cidr": "10.0.0.0/26", "affinity": 3}',
    '{"cidr": "10.0.0.1/26"}',
])
def test_corrupt_records_are_ipam_errors(text):
    with pytest.raises(IPAMError) as info:
        Block.decode(text)
    assert "corrupt" in str(info.value) and info.value.fix


@pytest.mark.parametrize("cfg,field", [
    ({"BlockSize": 19}, "BlockSize"), ({"BlockSize": "26"}, "BlockSize"),
    ({"BlockSize": True}, "BlockSize"), ({"StrictAffinity": "yes"}, "StrictAffinity"),
    ({"Bogus": 1}, "Bogus"),
])
def test_bad_options_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as info:
        BlockIPAM(ctx(cfg))
    assert field in str(info.value)


def test_block_larger_than_pool_is_refused():
    with pytest.raises(ConfigError, match="larger than the pool"):
        BlockIPAM(ctx({"BlockSize": 22}, cidr="10.244.0.0/24"))


def test_needs_a_store():
    ipam = BlockIPAM(ctx())
    with pytest.raises(ConfigError, match="needs etcd"):
        ipam.start({})
