"""Selector, ipBlock and rule semantics of the policy model."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabric.policy import (
    allow_all,
    cli,
    compile,
    engine,
    explain,
    load,
    metrics,
    model,
    nftstate,
    ops,
    peers,
    probe,
    rules,
    service,
)
from fabric.policy.model import (
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Requirement,
    namespace_labels,
)


def test_selector_semantics() -> None:
    sel = LabelSelector((("app", "db"),), (Requirement("tier", "In", ("a", "b")),
                                           Requirement("canary", "DoesNotExist")))
    assert sel.matches({"app": "db", "tier": "a"})
    assert not sel.matches({"app": "db", "tier": "c"})
    assert not sel.matches({"app": "db", "tier": "a", "canary": "1"})
    assert LabelSelector().matches({}) and LabelSelector().empty
    assert Requirement("x", "NotIn", ("1",)).matches({})  # absent key is "not in"
    assert Requirement("x", "Exists").matches({"x": ""})


def test_policy_selects_only_its_namespace() -> None:
    p = NetworkPolicy("p", "prod", LabelSelector())
    assert p.selects("prod", {}) and not p.selects("default", {})


def test_namespace_name_label_always_present() -> None:
    assert namespace_labels("x", {}) == {"kubernetes.io/metadata.name": "x"}


def test_rule_allows_all() -> None:
    assert PolicyRule().allows_all
    assert not PolicyRule(ports=(PolicyPort("TCP", 80),)).allows_all
    assert PolicyRule((PolicyPeer(ip_block=IPBlock(IPv4Network("0.0.0.0/0"))),)).allows_all
    assert not PolicyRule((PolicyPeer(pod_selector=LabelSelector()),)).allows_all


@given(st.integers(8, 24), st.lists(st.tuples(st.integers(0, 2**24 - 1), st.integers(25, 32)),
                                    max_size=5))
def test_ip_block_is_cidr_minus_excepts(plen: int, raw: list[tuple[int, int]]) -> None:
    cidr = IPv4Network(f"10.0.0.0/{plen}")
    excepts = tuple(ip_network((int(cidr.network_address) + (o % cidr.num_addresses), ln),
                               strict=False) for o, ln in raw)
    nets = IPBlock(cidr, excepts).networks()
    for a in [cidr.network_address, cidr.broadcast_address,
              *(e.network_address for e in excepts), *(e.broadcast_address for e in excepts),
              *(IPv4Address(int(e.broadcast_address) + 1) for e in excepts)]:
        inside = any(a in n for n in nets)
        want = a in cidr and not any(a in e for e in excepts)
        assert inside == want, a
    for i, n in enumerate(nets):  # disjoint
        assert not any(n.overlaps(m) for m in nets[i + 1:])


def test_public_surface() -> None:
    for mod in (allow_all, cli, compile, engine, explain, load, metrics, model, nftstate, ops,
                peers, probe, rules, service):
        assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)


def test_declared_ports() -> None:
    from fabric.policy.model import declared_ports

    assert declared_ports({"app": "x", "port.netfabric.io/http": "8080",
                           "port.netfabric.io/dns": "53-udp"}) == {
        "http": ("TCP", 8080), "dns": ("UDP", 53)}
    for bad in ({"port.netfabric.io/http": "80/TCP"}, {"port.netfabric.io/http": "0"},
                {"port.netfabric.io/HTTP": "80"}, {"port.netfabric.io/h": "80-ICMP"}):
        with pytest.raises(ValueError, match="port.netfabric.io/"):
            declared_ports(bad)
