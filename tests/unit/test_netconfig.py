"""flannel network config and lease formats: defaults, validation, clear errors."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from fabric.api import NetworkSpec
from fabric.errors import ConfigError
from fabric.ipam.netconfig import (
    LeaseRecord,
    lease_owner,
    netconfig_from_spec,
    parse_duration,
    parse_netconfig,
    parse_subnet_key,
    subnet_key,
)
from fabric.store.base import KeyValue


@pytest.mark.parametrize(
    ("network", "subnet_len", "smin", "smax"),
    [
        ("10.5.0.0/16", 24, "10.5.1.0", "10.5.255.0"),
        ("10.5.0.0/22", 24, "10.5.1.0", "10.5.3.0"),
        ("10.5.0.0/23", 25, "10.5.0.128", "10.5.1.128"),
        ("10.5.0.0/28", 30, "10.5.0.4", "10.5.0.12"),
    ],
)
def test_flannel_defaults(network, subnet_len, smin, smax) -> None:
    cfg = parse_netconfig(json.dumps({"Network": network}))
    assert cfg.subnet_len == subnet_len
    assert (str(cfg.subnet_min), str(cfg.subnet_max)) == (smin, smax)
    assert cfg.backend_type == "udp"  # flannel's default when Backend is missing


def test_explicit_fields_and_case_insensitive_keys() -> None:
    cfg = parse_netconfig(
        '{"network": "10.1.0.0/16", "subnetlen": 28, "SubnetMin": "10.1.10.0",'
        ' "SUBNETMAX": "10.1.50.0", "Backend": {"type": "vxlan", "VNI": 7}}'
    )
    assert cfg.network == IPv4Network("10.1.0.0/16")
    assert cfg.subnet_len == 28
    assert cfg.subnet_min == IPv4Address("10.1.10.0")
    assert cfg.backend_type == "vxlan" and cfg.backend["VNI"] == 7
    subnets = list(cfg.subnets())
    assert subnets[0] == IPv4Network("10.1.10.0/28")
    assert subnets[-1] == IPv4Network("10.1.50.0/28")
    assert len(subnets) == (0x32 - 0x0A) * 16 + 1
    assert cfg.contains(IPv4Network("10.1.20.16/28"))
    assert not cfg.contains(IPv4Network("10.1.9.0/28"))
    assert not cfg.contains(IPv4Network("10.1.20.0/24"))


def test_round_trip() -> None:
    doc = {"Network": "10.9.0.0/16", "SubnetLen": 26, "Backend": {"Type": "host-gw"}}
    cfg = parse_netconfig(doc)
    again = parse_netconfig(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["Backend"] == {"Type": "host-gw"}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("{not json", "JSON"),
        ("[1, 2]", "JSON object"),
        ("{}", "Network"),
        ('{"Network": "10.5.0.0/33"}', "Network"),
        ('{"Network": "10.5.0.1/16"}', "Network"),  # host bits set
        ('{"Network": "10.5.0.0/29"}', "Network"),  # too small for flannel
        ('{"Network": "10.5.0.0/16", "SubnetLen": 31}', "SubnetLen"),
        ('{"Network": "10.5.0.0/16", "SubnetLen": 17}', "SubnetLen"),
        ('{"Network": "10.5.0.0/16", "SubnetLen": "24"}', "SubnetLen"),
        ('{"Network": "10.5.0.0/16", "SubnetLen": true}', "SubnetLen"),
        ('{"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}', "SubnetMin"),
        ('{"Network": "10.5.0.0/16", "SubnetMin": "10.5.0.7"}', "SubnetMin"),
        ('{"Network": "10.5.0.0/16", "SubnetMax": "banana"}', "SubnetMax"),
        ('{"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.2.0"}',
         "SubnetMin"),
        ('{"Network": "10.5.0.0/16", "Backend": "vxlan"}', "Backend"),
        ('{"Network": "10.5.0.0/16", "Backend": {"Type": 3}}', "Backend.Type"),
        ('{"Network": "10.5.0.0/16", "EnableIPv6": true}', "EnableIPv6"),
    ],
)
def test_bad_configs_name_the_field(doc, field) -> None:
    with pytest.raises(ConfigError) as err:
        parse_netconfig(doc, where="etcd key /x/config")
    assert field in str(err.value)
    assert "etcd key /x/config" in str(err.value)


def test_from_spec() -> None:
    spec = NetworkSpec(
        name="blue",
        cidr=IPv4Network("10.7.0.0/16"),
        backend="vxlan",
        subnet_len=26,
        subnet_min=IPv4Network("10.7.4.0/26"),
        backend_config={"VNI": 4},
    )
    cfg = netconfig_from_spec(spec)
    assert cfg.subnet_len == 26 and cfg.subnet_min == IPv4Address("10.7.4.0")
    assert cfg.subnet_max == IPv4Address("10.7.255.192")
    assert cfg.to_dict()["Backend"] == {"Type": "vxlan", "VNI": 4}


def test_lease_record_is_flannels_format() -> None:
    rec = LeaseRecord(IPv4Address("198.18.0.11"), "vxlan", {"VNI": 1, "VtepMAC": "aa:bb"})
    data = json.loads(rec.to_json())
    assert data == {
        "PublicIP": "198.18.0.11",
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "aa:bb"},
    }
    # flannel writes extra fields (PublicIPv6): they are tolerated
    flannel = '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb"}}'  # noqa: E501
    assert LeaseRecord.parse(flannel) == rec
    assert lease_owner(KeyValue("/k", flannel, 3)) == IPv4Address("198.18.0.11")


@pytest.mark.parametrize(
    "value", ["", "{", "[]", '{"BackendType": "vxlan"}', '{"PublicIP": "nope"}',
              '{"PublicIP": "1.2.3.4", "BackendData": [1]}'],  # fmt: skip
)
def test_bad_lease_values_raise_value_error(value) -> None:
    with pytest.raises((ValueError, KeyError)):
        LeaseRecord.parse(value)
    assert lease_owner(KeyValue("/k", value, 3)) is None


def test_subnet_keys() -> None:
    net = IPv4Network("10.5.7.0/24")
    key = subnet_key("/coreos.com/network", net)
    assert key == "/coreos.com/network/subnets/10.5.7.0-24"
    assert parse_subnet_key(key) == net
    assert parse_subnet_key("/p/subnets/10.5.7.1-24") is None  # host bits
    assert parse_subnet_key("/p/subnets/garbage") is None
    assert parse_subnet_key("/p/config") is None


def test_durations() -> None:
    assert parse_duration(86400, "leaseTTL") == 86400
    assert parse_duration("24h", "leaseTTL") == 86400
    assert parse_duration("1h30m", "leaseTTL") == 5400
    assert parse_duration("45s", "leaseTTL") == 45
    assert parse_duration("90", "leaseTTL") == 90
    for bad in ("", "soon", "1d", True, 1, -5, None):
        with pytest.raises(ConfigError, match="leaseTTL"):
            parse_duration(bad, "leaseTTL")
