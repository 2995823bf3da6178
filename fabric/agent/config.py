"""Agent configuration: command-line flags and/or a YAML/JSON file -> AgentConfig.

File format (every key optional except ``networks``)::

    node: {name: h1, iface: eth0, publicIP: 198.18.0.11}
    etcd: http://198.18.0.2:2379      # or a list / comma list: failover in order
    etcdCAFile: /etc/etcd/ca.pem      # client TLS (all three, or CA only)
    etcdCertFile: /etc/etcd/client.pem
    etcdKeyFile: /etc/etcd/client-key.pem
    metricsAddr: 0.0.0.0:9402         # Prometheus /metrics
    subnetFile: /run/flannel/subnet.env
    stateDir: /run/netfabric
    networks:
      - name: vx                 # device names derive from it
        backend: vxlan
        network: 10.244.0.0/16
        subnetLen: 24
        backendConfig: {VNI: 1, Port: 8472}
        ipam: subnet             # default: the backend's
        policy: none             # or nftables
        etcdPrefix: /coreos.com/network
        ipMasq: false
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs

from fabric.api import NetworkSpec
from fabric.errors import ConfigError
from fabric.ipam.flannel_names import canonical_backend
from fabric.store.base import TLSFiles
from fabric.targets import DEFAULT_STATE_DIR

__all__ = [
    "AgentConfig",
    "DEFAULT_STATE_DIR",
    "load_config_file",
    "network_from_mapping",
    "parse_key_values",
]

_NETWORK_KEYS = {
    "name", "backend", "network", "subnetLen", "subnetMin", "subnetMax", "backendConfig",
    "ipam", "ipamConfig", "policy", "etcdPrefix", "ipMasq", "mtu",
}


@attrs.frozen
class AgentConfig:
    node_name: str
    state_dir: Path
    networks: tuple[NetworkSpec, ...]
    iface: str | None = None
    public_ip: IPv4Address | None = None
    etcd: str | None = None  # one URL or a comma list (failover in order)
    etcd_tls: TLSFiles = TLSFiles()
    metrics_addr: str = ""  # HOST:PORT of /metrics; empty: none
    subnet_file: str = ""  # flannel's subnet.env path for the first network; empty: none

    def __attrs_post_init__(self) -> None:
        if not self.networks:
            raise ConfigError(
                "no network configured",
                fix="pass --backend and --network, or a --config file with networks",
            )
        names = [n.name for n in self.networks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"network name(s) used twice: {', '.join(dupes)}")
        for i, a in enumerate(self.networks):
            for b in self.networks[i + 1:]:
                if a.cidr.overlaps(b.cidr):
                    raise ConfigError(
                        f"networks {a.name} ({a.cidr}) and {b.name} ({b.cidr}) overlap"
                    )

    def to_json(self) -> dict[str, Any]:
        return {
            "node": {"name": self.node_name, "iface": self.iface,
                     "publicIP": str(self.public_ip) if self.public_ip else None},
            "etcd": self.etcd,
            "etcdCAFile": self.etcd_tls.cafile, "etcdCertFile": self.etcd_tls.certfile,
            "etcdKeyFile": self.etcd_tls.keyfile, "metricsAddr": self.metrics_addr,
            "subnetFile": self.subnet_file,
            "stateDir": str(self.state_dir),
            "networks": [_spec_to_mapping(n) for n in self.networks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentConfig:
        node = data.get("node") or {}
        if not isinstance(node, Mapping):
            raise ConfigError("'node' must be a mapping")
        nets = data.get("networks")
        if not isinstance(nets, list):
            raise ConfigError("'networks' must be a list of network mappings")
        return cls(
            node_name=str(node.get("name") or socket.gethostname()),
            state_dir=Path(data.get("stateDir") or DEFAULT_STATE_DIR),
            networks=tuple(network_from_mapping(n, f"networks[{i}]") for i, n in enumerate(nets)),
            iface=node.get("iface"),
            public_ip=_ip(node.get("publicIP"), "node.publicIP"),
            etcd=",".join(data["etcd"]) if isinstance(data.get("etcd"), list)
            else data.get("etcd"),
            etcd_tls=TLSFiles(str(data.get("etcdCAFile") or ""),
                              str(data.get("etcdCertFile") or ""),
                              str(data.get("etcdKeyFile") or "")),
            metrics_addr=str(data.get("metricsAddr") or ""),
            subnet_file=str(data.get("subnetFile") or ""),
        )


def _ip(value: Any, field: str) -> IPv4Address | None:
    if value in (None, ""):
        return None
    try:
        return IPv4Address(str(value))
    except ValueError as exc:
        raise ConfigError(f"{field}: {value!r} is not an IPv4 address") from exc


def _net(value: Any, field: str) -> IPv4Network:
    try:
        return IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise ConfigError(f"{field}: {value!r} is not an IPv4 network in CIDR form") from exc


def network_from_mapping(data: Any, where: str = "network") -> NetworkSpec:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(data) - _NETWORK_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}",
            fix=f"valid keys: {', '.join(sorted(_NETWORK_KEYS))}",
        )
    backend = data.get("backend")
    if isinstance(backend, Mapping):  # flannel style Backend: {Type: vxlan, ...}
        cfg = {k: v for k, v in backend.items() if k != "Type"}
        backend = backend.get("Type")
    else:
        cfg = data.get("backendConfig") or {}
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f"{where}.backend is required (e.g. vxlan, hostgw)")
    backend = canonical_backend(backend)  # flannel's udp / host-gw
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}.backendConfig must be a mapping")
    if "network" not in data:
        raise ConfigError(f"{where}.network is required (e.g. 10.244.0.0/16)")
    name = data.get("name") or _default_name(backend)
    try:
        subnet_len = int(data.get("subnetLen", 24))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.subnetLen must be an integer") from exc
    mtu = data.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or not 576 <= mtu <= 65535):
        raise ConfigError(f"{where}.mtu must be an integer between 576 and 65535")
    ipam_cfg = data.get("ipamConfig") or {}
    if not isinstance(ipam_cfg, Mapping):
        raise ConfigError(f"{where}.ipamConfig must be a mapping")
    return NetworkSpec(
        name=name,
        cidr=_net(data["network"], f"{where}.network"),
        backend=backend,
        subnet_len=subnet_len,
        subnet_min=_net(data["subnetMin"], f"{where}.subnetMin") if data.get("subnetMin") else None,
        subnet_max=_net(data["subnetMax"], f"{where}.subnetMax") if data.get("subnetMax") else None,
        backend_config=dict(cfg),
        ipam=str(data.get("ipam") or ""),
        ipam_config=dict(ipam_cfg),
        policy=str(data.get("policy") or "none"),
        etcd_prefix=str(data.get("etcdPrefix") or ""),
        ipmasq=bool(data.get("ipMasq", False)),
        mtu=mtu,
    )


def _default_name(backend: str) -> str:
    name = re.sub(r"[^a-z0-9-]", "", backend.lower())[:10]
    return name if name and name[0].isalpha() else "net"


def _spec_to_mapping(spec: NetworkSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "backend": spec.backend,
        "network": str(spec.cidr),
        "subnetLen": spec.subnet_len,
        "backendConfig": dict(spec.backend_config),
        "ipam": spec.ipam,
        "ipamConfig": dict(spec.ipam_config),
        "policy": spec.policy,
        "etcdPrefix": spec.etcd_prefix,
        "ipMasq": spec.ipmasq,
    }
    if spec.subnet_min:
        out["subnetMin"] = str(spec.subnet_min)
    if spec.subnet_max:
        out["subnetMax"] = str(spec.subnet_max)
    if spec.mtu:
        out["mtu"] = spec.mtu
    return out


def parse_key_values(items: list[str], option: str = "--backend-opt") -> dict[str, Any]:
    """KEY=VALUE command-line items to a mapping; values are JSON when they parse as JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json / yaml parse errors carry line numbers
        kind = path.suffix[1:] or "YAML"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data
