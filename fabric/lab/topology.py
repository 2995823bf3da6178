"""The lab's description: what to build, separate from the running :class:`fabric.lab.Lab`.

Naming and addressing (docs/architecture.md, "Lab conventions"): lab ``NAME`` owns
namespaces ``nfl-NAME-sw`` (switch: bridge ``brS`` per segment, etcd on
198.18.0.2), ``nfl-NAME-rt`` (router between segments and every host's default gateway, 198.18.S.1),
``nfl-NAME-hN`` (host N, ``eth0`` at 198.18.S.(10+N)/24) and ``nfl-NAME-hNpM`` (pods).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import attrs

from fabric.errors import ConfigError

__all__ = [
    "Topology",
    "HostSpec",
    "NS_PREFIX",
    "STATE_ROOT",
    "ETCD_IP",
    "MAX_HOSTS",
    "ns_prefix",
    "switch_ns",
    "router_ns",
    "host_spec",
]

NS_PREFIX = "nfl-"
STATE_ROOT = Path("/run/netfabric-lab")
ETCD_IP = IPv4Address("198.18.0.2")
ETCD_PORT = 2379
MAX_HOSTS = 200
_LAB_NAME = re.compile(r"^[a-z0-9]{1,8}$")


def _check_name(_inst: Any, _attr: Any, value: str) -> None:
    # no '-' in names: then `nfl-NAME-` is a prefix of this lab's namespaces only
    if not _LAB_NAME.match(value):
        raise ConfigError(f"lab name {value!r} is invalid",
                          fix="use 1-8 lowercase letters or digits (no '-')")


def _positive(limit: int):
    def check(_inst: Any, attr: attrs.Attribute, value: int) -> None:
        if not isinstance(value, int) or not 0 < value <= limit:
            raise ConfigError(f"{attr.name} must be an integer from 1 to {limit}, not {value!r}")
    return check


def _backends(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(value)


@attrs.frozen
class HostSpec:
    """Where host ``index`` sits on the underlay."""

    index: int
    name: str  # "h1"
    ns: str  # "nfl-NAME-h1"
    segment: int
    address: IPv4Interface  # eth0, 198.18.S.(10+N)/24
    gateway: IPv4Address  # the router's leg on the segment: the default route

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip


@attrs.frozen
class Topology:
    """hosts × pods_per_host on ``segments`` L2 segments, every host running ``backends``.

    ``agent_args`` are extra `fabric up` arguments; ``{node}``, ``{ip}``, ``{lab}`` and
    ``{peers}`` (the other hosts' underlay IPs, comma-separated) in them, and in string
    values of ``backend_opts``, are replaced per host (a gossip backend's seed list).
    With several backends, network ``i`` gets ``cidr`` shifted by ``i`` × its size and
    every host gets ``pods_per_host`` pods on every network (:meth:`pod_networks`), or on
    ``pod_network`` alone when that is set.
    """

    name: str = attrs.field(validator=_check_name)
    backends: tuple[str, ...] = attrs.field(converter=_backends)
    hosts: int = attrs.field(default=2, validator=_positive(MAX_HOSTS))
    pods_per_host: int = attrs.field(default=1, validator=_positive(9))
    segments: int = attrs.field(default=1, validator=_positive(50))
    cidr: IPv4Network = attrs.field(default=IPv4Network("10.244.0.0/16"), converter=IPv4Network)
    subnet_len: int = 24
    agent_args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    backend_opts: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)  # per backend
    etcd: bool | None = None  # None: start etcd when a backend's IPAM needs a datastore
    pod_network: str = ""
    mtu: int = 1500

    def __attrs_post_init__(self) -> None:
        if not self.backends:
            raise ConfigError("a lab needs at least one backend", fix="e.g. --backend vxlan")
        if self.segments > self.hosts:
            raise ConfigError(f"segments ({self.segments}) exceed hosts ({self.hosts})")
        if not self.cidr.is_private or self.cidr.overlaps(IPv4Network("198.18.0.0/15")):
            raise ConfigError(f"network {self.cidr} must be private and outside 198.18.0.0/15")

    @property
    def prefix(self) -> str:
        return ns_prefix(self.name)

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name

    def needs_etcd(self) -> bool:
        """``etcd`` if set; else True unless every backend's default IPAM is the
        gossip-based ``ring`` (weave style: no datastore)."""
        if self.etcd is not None:
            return self.etcd
        from fabric.plugins import load_plugin

        for b in self.backends:
            try:
                if load_plugin("backend", b).default_ipam != "ring":
                    return True
            except Exception:  # unknown backend: its agent reports that clearly
                return True
        return False

    def network_cidr(self, i: int) -> IPv4Network:
        base = int(self.cidr.network_address) + i * self.cidr.num_addresses
        return IPv4Network((base, self.cidr.prefixlen))

    def network_names(self) -> list[str]:
        return [_net_name(b, i) for i, b in enumerate(self.backends)]

    def pod_networks(self) -> list[str]:
        """The networks that get ``pods_per_host`` pods on every host."""
        return [self.pod_network] if self.pod_network else self.network_names()

    def pod_name(self, host: str, network: str, m: int) -> str:
        """``hNpM`` on the first network (as in a one-network lab); ``hN<network>pM`` on
        the others, so a name says its network (``hNn<i>pM`` when that is too long)."""
        names = self.network_names()
        if network == names[0] or network not in names:
            return f"{host}p{m}"
        name = f"{host}{network}p{m}"
        return name if len(name) <= 12 else f"{host}n{names.index(network)}p{m}"

    def host(self, index: int) -> HostSpec:
        return host_spec(self.name, index, self.segments)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["cidr"] = str(self.cidr)
        data["backends"] = list(self.backends)
        data["agent_args"] = list(self.agent_args)
        data["backend_opts"] = {k: dict(v) for k, v in self.backend_opts.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Topology:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _net_name(backend: str, i: int) -> str:
    base = re.sub(r"[^a-z0-9]", "", backend.lower())[:8] or "net"
    if not base[0].isalpha():
        base = "n" + base[:7]
    return base if i == 0 else f"{base[:7]}{i}"


def ns_prefix(name: str) -> str:
    return f"{NS_PREFIX}{name}-"


def switch_ns(name: str) -> str:
    return f"{ns_prefix(name)}sw"


def router_ns(name: str) -> str:
    return f"{ns_prefix(name)}rt"


def host_spec(name: str, index: int, segments: int) -> HostSpec:
    if not 0 < index <= MAX_HOSTS:
        raise ConfigError(f"host index {index} is outside 1..{MAX_HOSTS}")
    seg = (index - 1) % segments
    return HostSpec(index, f"h{index}", f"{ns_prefix(name)}h{index}", seg,
                    IPv4Interface(f"198.18.{seg}.{10 + index}/24"),
                    IPv4Address(f"198.18.{seg}.1"))
