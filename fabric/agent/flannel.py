"""flannel's node-side conventions: ``net-conf.json`` and the subnet file path.

``net-conf.json`` (flannel's kube-flannel ConfigMap) is the etcd network config::

    {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}

:func:`read_net_conf` turns it into one network mapping of the agent config (the same
keys a ``--config`` file uses), with flannel's type names accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError
from fabric.ipam.flannel_names import canonical_backend

__all__ = ["FLANNEL_SUBNET_FILE", "read_net_conf", "net_conf_to_network"]

FLANNEL_SUBNET_FILE = "/run/flannel/subnet.env"  # flannel's -subnet-file default
_KEYS = {"network": "Network", "subnetlen": "SubnetLen", "subnetmin": "SubnetMin",
         "subnetmax": "SubnetMax", "backend": "Backend", "enableipv4": "EnableIPv4",
         "enableipv6": "EnableIPv6", "ipv6network": "IPv6Network"}


def net_conf_to_network(data: Any, where: str = "net-conf.json") -> dict[str, Any]:
    """flannel's network config object -> an agent network mapping (keys as flannel's:
    case-insensitive). IPv6 is refused: the fabric is IPv4 only."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object", fix='e.g. {"Network": '
                          '"10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    conf = {}
    for key, value in data.items():
        canon = _KEYS.get(str(key).lower())
        if canon is None:
            raise ConfigError(f"{where}: unknown key {key!r}",
                              fix=f"flannel's keys: {', '.join(sorted(_KEYS.values()))}")
        conf[canon] = value
    if conf.get("EnableIPv6") or conf.get("IPv6Network"):
        raise ConfigError(f"{where}: IPv6 networks are not supported", fix="drop EnableIPv6")
    if "Network" not in conf:
        raise ConfigError(f"{where}: Network is required", fix='e.g. "Network": "10.244.0.0/16"')
    backend = conf.get("Backend") or {"Type": "udp"}  # flannel's default
    if not isinstance(backend, dict):
        raise ConfigError(f"{where}: Backend must be an object", fix='{"Type": "vxlan"}')
    btype = backend.get("Type") or backend.get("type") or "udp"
    net: dict[str, Any] = {
        "network": conf["Network"],
        "backend": canonical_backend(str(btype)),
        "backendConfig": {k: v for k, v in backend.items() if k.lower() != "type"},
    }
    if conf.get("SubnetLen"):
        net["subnetLen"] = conf["SubnetLen"]
    for key, ours in (("SubnetMin", "subnetMin"), ("SubnetMax", "subnetMax")):
        if conf.get(key):  # flannel gives an address; ours is a subnet of SubnetLen
            net[ours] = f"{str(conf[key]).split('/')[0]}/{int(conf.get('SubnetLen') or 24)}"
    return net


def read_net_conf(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", field="--net-conf",
                          fix="mount kube-flannel's ConfigMap there, or fix the path") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}", field="--net-conf") from exc
    return net_conf_to_network(data, str(path))
