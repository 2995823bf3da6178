"""The calico-bgp backend's options (the network's ``backend_config`` block), validated."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any, Literal

import attrs

from fabric.api import check_options
from fabric.errors import ConfigError

__all__ = ["BgpConfig", "GlobalPeer", "parse_config", "DEFAULT_ASN"]

DEFAULT_ASN = 64512
_MODES = ("Never", "Always", "CrossSubnet")
_OPTIONS = {
    "Type", "ASNumber", "NodeToNodeMesh", "RouteReflectorClusterID", "Peers", "IPIPMode",
    "VXLANMode", "VXLANVNI", "VXLANPort", "HoldTime", "GracefulRestartTime", "ListenPort",
    "FastPath",  # validated by fabric.net.fastpath
}


@attrs.frozen
class GlobalPeer:
    """A BGP peer outside the cluster's nodes: a BIRD route reflector or an underlay router."""

    address: IPv4Address
    asn: int


@attrs.frozen
class BgpConfig:
    asn: int = DEFAULT_ASN
    mesh: bool = True
    rr_cluster_id: IPv4Address | None = None  # set: this node is a route reflector
    peers: tuple[GlobalPeer, ...] = ()
    ipip: Literal["Never", "Always", "CrossSubnet"] = "Never"
    vxlan: Literal["Never", "Always", "CrossSubnet"] = "Never"
    vni: int = 4096
    port: int = 4789
    hold_time: int = 30
    graceful_restart: int = 120
    listen_port: int = 179

    @property
    def encapsulation(self) -> str:
        if self.vxlan != "Never":
            return "vxlan"
        return "ipip" if self.ipip != "Never" else "none"

    @property
    def cross_subnet(self) -> bool:
        return "CrossSubnet" in (self.vxlan, self.ipip)


def _err(field: str, reason: str, fix: str) -> ConfigError:
    return ConfigError(f"calico-bgp backend: {field} {reason}", fix=fix)


def _int(cfg: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _err(key, f"must be an integer in [{low}, {high}], got {value!r}",
                   f"set {key} to a number between {low} and {high}")
    return value


def _bool(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise _err(key, f"must be true or false, got {value!r}", f"set {key}: true or false")
    return value


def _ip(value: Any, field: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except (ValueError, TypeError) as exc:
        raise _err(field, f"is not an IPv4 address: {value!r}",
                   "use dotted quad, e.g. 198.18.0.2") from exc


def _mode(cfg: Mapping[str, Any], key: str) -> str:
    value = cfg.get(key, "Never")
    if value not in _MODES:
        raise _err(key, f"must be one of {', '.join(_MODES)}, got {value!r}",
                   f"set {key} to Never, Always or CrossSubnet")
    return value


def parse_config(cfg: Mapping[str, Any]) -> BgpConfig:
    """Validate ``backend_config``; raises ConfigError naming the bad field."""
    cfg = check_options(cfg, _OPTIONS, "calico-bgp")
    asn = _int(cfg, "ASNumber", DEFAULT_ASN, 1, 4294967295)
    rr = cfg.get("RouteReflectorClusterID") or None
    raw_peers = cfg.get("Peers", [])
    if not isinstance(raw_peers, list):
        raise _err("Peers", "must be a list", "Peers: [{PeerIP: 198.18.0.2, ASNumber: 64512}]")
    peers = []
    for i, p in enumerate(raw_peers):
        if not isinstance(p, Mapping) or "PeerIP" not in p:
            raise _err(f"Peers[{i}]", "needs PeerIP", "give {PeerIP: ..., ASNumber: ...}")
        peers.append(GlobalPeer(_ip(p["PeerIP"], f"Peers[{i}].PeerIP"),
                                _int(p, "ASNumber", asn, 1, 4294967295)))
    ipip, vxlan = _mode(cfg, "IPIPMode"), _mode(cfg, "VXLANMode")
    if ipip != "Never" and vxlan != "Never":
        raise _err("IPIPMode/VXLANMode", "are both enabled", "choose one encapsulation")
    mesh = _bool(cfg, "NodeToNodeMesh", True)  # off: peer with Peers and reflector nodes only
    hold = _int(cfg, "HoldTime", 30, 0, 65535)
    if 0 < hold < 3:
        raise _err("HoldTime", "must be 0 or at least 3 seconds", "use 0 or 3-65535")
    return BgpConfig(
        asn=asn, mesh=mesh, rr_cluster_id=_ip(rr, "RouteReflectorClusterID") if rr else None,
        peers=tuple(peers), ipip=ipip, vxlan=vxlan,  # type: ignore[arg-type]
        vni=_int(cfg, "VXLANVNI", 4096, 1, 2**24 - 1),
        port=_int(cfg, "VXLANPort", 4789, 1, 65535),
        hold_time=hold,
        graceful_restart=_int(cfg, "GracefulRestartTime", 120, 0, 4095),
        listen_port=_int(cfg, "ListenPort", 179, 1, 65535),
    )
