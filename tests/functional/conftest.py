"""Functional-tier fixtures (helpers live in the ``*_util`` modules next to this file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.ipam.blocks import BlockIPAM
from fabric.store import connect
from fabric_testplugins.etcd import EtcdServer
from tests.util import private_etcd

T = TypeVar("T")


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """Peers, nodes or processes the test started: each one's ``stop()`` runs afterwards."""
    made: list[Any] = []
    yield made
    for p in made:
        p.stop()


# one private etcd for a whole module (its tests keep apart by key prefix)
module_etcd = pytest.fixture(private_etcd, scope="module", name="module_etcd")


@pytest.fixture
def stop_later() -> Iterator[Callable[[T], T]]:
    """``stop_later(x)`` returns ``x``; ``x.stop()`` runs after the test."""
    made: list[Any] = []

    def keep(obj: T) -> T:
        made.append(obj)
        return obj

    yield keep
    for obj in made:
        obj.stop()


_prefixes = iter(range(10**6))


@pytest.fixture
def block_ipam(module_etcd: EtcdServer, tmp_path: Path,
               stop_later: Callable[[BlockIPAM], BlockIPAM]) -> Callable[..., BlockIPAM]:
    """Makes Block IPAMs (blocks /28 of 10.244.0.0/24 by default) under a fresh etcd prefix,
    the Nth at 198.18.0.(N+10); all stopped afterwards."""
    prefix = f"/t{next(_prefixes)}"
    count = iter(range(11, 255))

    def factory(node: str = "h1", cidr: str = "10.244.0.0/24", **ipam_config: Any) -> BlockIPAM:
        spec = NetworkSpec(name="pods", cidr=IPv4Network(cidr), backend="calico-bgp",
                           ipam_config={"BlockSize": 28, **ipam_config}, etcd_prefix=prefix,
                           subnet_len=28)
        ip = IPv4Address(f"198.18.0.{next(count)}")
        return stop_later(BlockIPAM(NetworkContext(spec=spec, node=Node(node, ip, "eth0", 1500),
                                                   state_dir=tmp_path / node,
                                                   store=connect(module_etcd.url))))

    return factory
