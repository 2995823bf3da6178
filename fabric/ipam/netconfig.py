"""flannel's etcd formats: the network config (``<prefix>/config``) and subnet leases.

The format is flannel's JSON: ``{"Network": "10.5.0.0/16", "SubnetLen": 24,
"SubnetMin": "10.5.1.0", "SubnetMax": "10.5.254.0", "Backend": {"Type": "vxlan"}}``.
Keys match case-insensitively, as in flannel. Defaults follow flannel's rules:
SubnetLen 24 for networks of /22 or shorter, else the network's length + 2
(networks longer than /28 are rejected); SubnetMin skips the first subnet and
SubnetMax is the last one; a missing Backend means type ``udp``.

A lease is ``<prefix>/subnets/10.5.7.0-24`` = ``{"PublicIP": "198.18.0.11",
"BackendType": "vxlan", "BackendData": {...}}`` (:class:`LeaseRecord`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any

import attrs

from fabric.api import NetworkSpec, Peer
from fabric.errors import ConfigError, StoreError
from fabric.ipam.flannel_names import flannel_type
from fabric.store.base import KeyValue, Store

__all__ = [
    "NetConfig",
    "parse_netconfig",
    "netconfig_from_spec",
    "ensure_netconfig",
    "LeaseRecord",
    "lease_owner",
    "subnet_key",
    "parse_subnet_key",
    "parse_duration",
    "parse_leases",
    "peers_from_leases",
]

log = logging.getLogger("fabric.ipam.subnet")

_KEY_RE = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)$")
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_KNOWN = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6")


@attrs.frozen
class NetConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address  # first subnet's network address
    subnet_max: IPv4Address  # last subnet's network address
    backend_type: str = "udp"
    backend: Mapping[str, Any] = attrs.field(factory=dict, hash=False)  # the whole Backend object

    def subnets(self) -> Iterator[IPv4Network]:
        """Every subnet leases may use, SubnetMin..SubnetMax inclusive."""
        step = 1 << (32 - self.subnet_len)
        for addr in range(int(self.subnet_min), int(self.subnet_max) + 1, step):
            yield IPv4Network((addr, self.subnet_len))

    def contains(self, subnet: IPv4Network) -> bool:
        return subnet.prefixlen == self.subnet_len and int(self.subnet_min) <= int(
            subnet.network_address
        ) <= int(self.subnet_max)

    def to_dict(self) -> dict[str, Any]:
        backend = dict(self.backend)
        backend.setdefault("Type", self.backend_type)
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            "Backend": backend,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _err(field: str, problem: str, fix: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: {field} {problem}", fix=fix)


def _address(value: Any, field: str, where: str) -> IPv4Address:
    if not isinstance(value, str):
        raise _err(
            field, f"must be an IPv4 address string, not {value!r}", 'e.g. "10.5.1.0"', where
        )
    try:  # flannel writes plain addresses; accept a CIDR too and take its address
        return IPv4Address(value.split("/", 1)[0].strip())
    except AddressValueError as exc:
        raise _err(field, f"{value!r} is not an IPv4 address", 'e.g. "10.5.1.0"', where) from exc


def _build(
    network: IPv4Network,
    subnet_len: int | None,
    smin: IPv4Address | None,
    smax: IPv4Address | None,
    backend: Mapping[str, Any],
    where: str,
) -> NetConfig:
    if subnet_len is None or subnet_len == 0:
        if network.prefixlen > 28:
            raise _err("Network", f"{network} is too small", "use a /28 or larger network", where)
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    elif subnet_len > 30:
        raise _err("SubnetLen", f"{subnet_len} is too long", "use 30 or less", where)
    elif subnet_len < network.prefixlen + 2:
        raise _err(
            "SubnetLen",
            f"{subnet_len} leaves room for fewer than four subnets in {network}",
            f"use at least {network.prefixlen + 2}",
            where,
        )
    size = 1 << (32 - subnet_len)
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    lo = smin if smin is not None else network.network_address + size
    hi = smax if smax is not None else IPv4Address(int(network.broadcast_address) + 1 - size)
    for field, addr in (("SubnetMin", lo), ("SubnetMax", hi)):
        if addr not in network:
            raise _err(
                field, f"{addr} is outside Network {network}", "pick an address inside it", where
            )
        if int(addr) & mask != int(addr):
            raise _err(
                field,
                f"{addr} is not on a /{subnet_len} boundary",
                f"use {IPv4Address(int(addr) & mask)}",
                where,
            )
    if int(lo) > int(hi):
        raise _err("SubnetMin", f"{lo} is above SubnetMax {hi}", "swap or widen the range", where)
    btype = backend.get("Type", "udp")
    if not isinstance(btype, str) or not btype:
        raise _err(
            "Backend.Type", f"must be a non-empty string, not {btype!r}", 'e.g. "vxlan"', where
        )
    return NetConfig(network, subnet_len, lo, hi, btype, dict(backend))


def parse_netconfig(
    data: str | bytes | Mapping[str, Any], where: str = "network config"
) -> NetConfig:
    """Parse flannel's network config JSON (or an already decoded object)."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"{where} is not valid JSON: {exc}", fix="fix the JSON") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object", fix='e.g. {"Network": "10.5.0.0/16"}')
    fields: dict[str, Any] = {}
    for key, value in data.items():
        for known in _KNOWN:
            if isinstance(key, str) and key.lower() == known.lower():
                fields[known] = value
    if fields.get("EnableIPv4") is False or fields.get("EnableIPv6"):
        raise _err("EnableIPv6", "is not supported", "netfabric serves IPv4 networks only", where)
    raw_net = fields.get("Network")
    if not isinstance(raw_net, str) or not raw_net:
        raise _err("Network", "is missing", 'set it, e.g. "Network": "10.5.0.0/16"', where)
    try:
        network = IPv4Network(raw_net.strip())
    except (AddressValueError, NetmaskValueError, ValueError) as exc:
        raise _err(
            "Network", f"{raw_net!r} is not an IPv4 network: {exc}", "e.g. 10.5.0.0/16", where
        ) from exc
    subnet_len = fields.get("SubnetLen")
    if subnet_len is not None and (isinstance(subnet_len, bool) or not isinstance(subnet_len, int)):
        raise _err("SubnetLen", f"must be an integer, not {subnet_len!r}", "e.g. 24", where)
    smin = _address(fields["SubnetMin"], "SubnetMin", where) if fields.get("SubnetMin") else None
    smax = _address(fields["SubnetMax"], "SubnetMax", where) if fields.get("SubnetMax") else None
    backend = fields.get("Backend") or {}
    if not isinstance(backend, Mapping):
        raise _err("Backend", f"must be an object, not {backend!r}", '{"Type": "vxlan"}', where)
    backend = {("Type" if k.lower() == "type" else k): v for k, v in backend.items()}
    return _build(network, subnet_len, smin, smax, backend, where)


def netconfig_from_spec(spec: NetworkSpec) -> NetConfig:
    """The config an agent writes when etcd has none: the network as configured locally."""
    backend = {
        "Type": flannel_type(spec.backend),  # flannel's names: udp, host-gw
        **{k: v for k, v in spec.backend_config.items() if k != "Type"},
    }
    smin = spec.subnet_min.network_address if spec.subnet_min else None
    smax = spec.subnet_max.network_address if spec.subnet_max else None
    return _build(spec.cidr, spec.subnet_len, smin, smax, backend, f"network {spec.name}")


def ensure_netconfig(store: Store, prefix: str, spec: NetworkSpec) -> NetConfig:
    """``<prefix>/config`` from etcd (authoritative, validated); written from ``spec``
    with create-if-absent when missing, so the first agent defines the network."""
    key = f"{prefix}/config"
    kv = store.get(key)
    if kv is None:
        mine = netconfig_from_spec(spec)
        if store.create(key, mine.to_json()):
            log.info("wrote network config %s: %s", key, mine.to_json())
            return mine
        kv = store.get(key)  # another agent was first
        if kv is None:
            raise StoreError(f"{key} vanished while it was being read; retry")
    config = parse_netconfig(kv.value, where=f"etcd key {key}")
    if config.network != spec.cidr:
        log.warning("%s says Network %s, the local config %s: etcd wins",
                    key, config.network, spec.cidr)  # fmt: skip
    return config


# -- leases --
def parse_duration(value: Any, field: str) -> int:
    """Seconds from an int or a Go-style duration ("24h", "1h30m", "45s")."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value.strip())) and any(m.groups()):
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    else:
        raise ConfigError(
            f"ipamConfig.{field} {value!r} is not a duration", fix='use e.g. 86400 or "24h"'
        )
    if seconds < 2:
        raise ConfigError(f"ipamConfig.{field} must be at least 2 seconds, not {seconds}")
    return seconds


def subnet_key(prefix: str, subnet: IPv4Network) -> str:
    return f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network | None:
    """The subnet a ``.../subnets/10.5.7.0-24`` key names, or None if it is not one."""
    m = _KEY_RE.match(key.rsplit("/", 1)[-1])
    if not m:
        return None
    try:
        return IPv4Network(f"{m.group(1)}/{m.group(2)}")
    except ValueError:
        return None


class LeaseRecord:
    """The JSON value of a lease key (flannel's LeaseAttrs)."""

    __slots__ = ("public_ip", "backend_type", "backend_data")

    def __init__(self, public_ip: IPv4Address, backend_type: str, backend_data: Mapping) -> None:
        self.public_ip = public_ip
        self.backend_type = backend_type
        self.backend_data = dict(backend_data)

    @classmethod
    def parse(cls, value: str) -> LeaseRecord:
        """Raises ValueError with a reason for anything that is not a valid lease value."""
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        bdata = data.get("BackendData") or {}
        if not isinstance(bdata, dict):
            raise ValueError("BackendData is not an object")
        return cls(IPv4Address(data["PublicIP"]), str(data.get("BackendType", "")), bdata)

    def to_json(self) -> str:
        data = {
            "PublicIP": str(self.public_ip),
            "BackendType": self.backend_type,
            "BackendData": self.backend_data,
        }
        return json.dumps(data, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeaseRecord) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]


def lease_owner(kv: KeyValue) -> IPv4Address | None:
    try:
        return LeaseRecord.parse(kv.value).public_ip
    except (ValueError, KeyError):
        return None


def parse_leases(
    kvs: Iterable[KeyValue], warned: set[tuple[str, int]] | None = None
) -> dict[IPv4Network, tuple[KeyValue, LeaseRecord | None]]:
    """Lease keys by subnet; a malformed value maps to None (and is logged once per
    key and revision when ``warned`` is given). Keys that are not subnets are skipped."""
    out: dict[IPv4Network, tuple[KeyValue, LeaseRecord | None]] = {}
    for kv in kvs:
        subnet = parse_subnet_key(kv.key)
        if subnet is None:
            continue
        try:
            out[subnet] = (kv, LeaseRecord.parse(kv.value))
        except (ValueError, KeyError) as exc:
            out[subnet] = (kv, None)
            if warned is None or (kv.key, kv.mod_revision) not in warned:
                log.error("ignoring lease %s: malformed value (%s): %.80r", kv.key, exc, kv.value)
                if warned is not None:
                    warned.add((kv.key, kv.mod_revision))
    return out


def peers_from_leases(
    kvs: Iterable[KeyValue],
    self_ip: IPv4Address,
    previous: Mapping[IPv4Network, Peer],
    warned: set[tuple[str, int]] | None = None,
) -> dict[IPv4Network, Peer]:
    """Peers described by lease keys, excluding ``self_ip``. A lease whose value became
    malformed keeps the peer previously known for its subnet (as flannel skips the event)."""
    peers: dict[IPv4Network, Peer] = {}
    for subnet, (_kv, rec) in parse_leases(kvs, warned).items():
        if rec is None:
            if subnet in previous:
                peers[subnet] = previous[subnet]
        elif rec.public_ip != self_ip:
            ip = rec.public_ip
            peers[subnet] = Peer(str(ip), ip, (subnet,), rec.backend_type, rec.backend_data)
    return peers
