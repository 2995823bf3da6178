"""flannel's ``subnet.env``: what CNI's flannel plugin and scripts read about this node.

    FLANNEL_NETWORK=10.5.0.0/16
    FLANNEL_SUBNET=10.5.7.1/24      # the gateway (first host) / the lease's length
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from fabric.errors import ConfigError
from fabric.fsutil import atomic_write

__all__ = ["write_subnet_env", "read_subnet_env", "render_subnet_env", "subnet_from_env"]


def render_subnet_env(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> str:
    if subnet.num_addresses < 4 or not subnet.subnet_of(network):
        raise ConfigError(f"subnet {subnet} is not a usable part of network {network}")
    gateway = IPv4Interface((subnet.network_address + 1, subnet.prefixlen))
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={gateway}\n"
        f"FLANNEL_MTU={int(mtu)}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )


def write_subnet_env(
    path: str | Path, *, network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool
) -> None:
    """Write ``path`` atomically (temp file, fsync, rename)."""
    atomic_write(Path(path), render_subnet_env(network, subnet, mtu, ipmasq))


def read_subnet_env(path: str | Path) -> dict[str, str]:
    """The variables of a subnet.env; {} if it does not exist. Malformed lines are skipped."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("FLANNEL_"):
            out[key] = value
    return out


def subnet_from_env(env: dict[str, str]) -> IPv4Network | None:
    """The lease recorded in a subnet.env (FLANNEL_SUBNET's network), or None."""
    try:
        iface = IPv4Interface(env["FLANNEL_SUBNET"])
    except (KeyError, ValueError):
        return None
    if iface.ip == IPv4Address(0):
        return None
    return iface.network
