"""Links and addresses: bridges, VXLAN devices, veths (idempotent helpers)."""

from __future__ import annotations

import errno
import os
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from fabric.errors import BackendError
from fabric.net.kernel import ipr, netlink_call

__all__ = [
    "bridge_ports",
    "link_names",
    "link_index",
    "link_info",
    "ensure_bridge",
    "random_mac",
    "ensure_vxlan",
    "delete_link",
    "set_address",
    "link_addresses",
    "set_up",
    "underlay_of",
]


def link_index(name: str) -> int | None:
    with ipr() as sock:
        found = sock.link_lookup(ifname=name)
    return found[0] if found else None


def link_info(name: str) -> dict | None:
    """Kind, MTU, MAC, state and VXLAN attributes of ``name``, or None if absent."""
    with ipr() as sock:
        found = sock.link_lookup(ifname=name)
        if not found:
            return None
        msg = sock.get_links(found[0])[0]
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    out = {
        "index": msg["index"],
        "kind": kind,
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "up": bool(msg["flags"] & 1),
        "master": msg.get_attr("IFLA_MASTER"),
    }
    if kind == "vxlan" and data is not None:
        out["vni"] = data.get_attr("IFLA_VXLAN_ID")
        out["port"] = data.get_attr("IFLA_VXLAN_PORT")
        out["local"] = data.get_attr("IFLA_VXLAN_LOCAL")
        out["learning"] = bool(data.get_attr("IFLA_VXLAN_LEARNING"))
    return out


def set_up(name: str, mtu: int | None = None) -> None:
    with ipr() as sock:
        idx = sock.link_lookup(ifname=name)
        if not idx:
            raise BackendError(f"device {name} does not exist")
        kw: dict[str, Any] = {"state": "up"}
        if mtu:
            kw["mtu"] = mtu
        netlink_call(f"setting {name} up", sock.link, "set", index=idx[0], **kw)


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def ensure_bridge(name: str, mtu: int, mac: str | None = None) -> int:
    """Create (or adopt) bridge ``name`` with ``mtu``, up, its MAC pinned; returns its index.

    A bridge whose MAC was never set explicitly takes the lowest MAC of its ports, so a
    new pod veth with a lower MAC changes the gateway's MAC under the pods that have the
    old one in their ARP cache (8-45 s cut off, issue 16). As the reference bridge plugin
    does, the MAC is set explicitly (``mac``, or a random one) when the bridge is created,
    and an adopted bridge is pinned to the MAC it has now (the one pods know).
    """
    with ipr() as sock:
        if not sock.link_lookup(ifname=name):
            netlink_call(
                f"creating bridge {name}", sock.link, "add", ifname=name, kind="bridge",
                address=mac or random_mac(), ignore=(errno.EEXIST,),
            )
        idx = sock.link_lookup(ifname=name)[0]
        current = sock.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        # setting the address (even to the same value) marks it NET_ADDR_SET: pinned
        netlink_call(f"pinning the MAC of {name}", sock.link, "set", index=idx,
                     address=mac or current)
        netlink_call(f"setting {name} up", sock.link, "set", index=idx, mtu=mtu, state="up")
        return idx


def ensure_vxlan(
    name: str,
    *,
    vni: int,
    port: int,
    local: IPv4Address,
    underlay_index: int,
    mtu: int,
    learning: bool = False,
    mac: str | None = None,
) -> int:
    """Create a VXLAN device, or adopt an existing one whose attributes match.

    A device with different VNI/port/local address is deleted and recreated,
    as flannel does, so a changed config never leaves a half-right device.
    """
    current = link_info(name)
    if current is not None and (
        current["kind"] != "vxlan"
        or current["vni"] != vni
        or current["port"] != port
        or current["local"] != str(local)
        or current["learning"] != learning
    ):
        delete_link(name)
        current = None
    with ipr() as sock:
        if current is None:
            kw: dict[str, Any] = dict(
                ifname=name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_port=port,
                vxlan_local=str(local),
                vxlan_link=underlay_index,
                vxlan_learning=1 if learning else 0,
                vxlan_udp_csum=0,  # as flannel and Calico: no outer UDP checksum
            )
            if mac:
                kw["address"] = mac
            netlink_call(f"creating VXLAN device {name}", sock.link, "add", **kw)
        idx = sock.link_lookup(ifname=name)[0]
        netlink_call(f"setting {name} up", sock.link, "set", index=idx, mtu=mtu, state="up")
        return idx


def link_names() -> list[str]:
    """Names of every device in the caller's namespace."""
    with ipr() as sock:
        return [link.get_attr("IFLA_IFNAME") for link in sock.get_links()]


def bridge_ports(bridge: str) -> list[str]:
    """Names of the devices enslaved to ``bridge`` (empty if it does not exist)."""
    with ipr() as sock:
        idx = sock.link_lookup(ifname=bridge)
        if not idx:
            return []
        return [link.get_attr("IFLA_IFNAME") for link in sock.get_links()
                if link.get_attr("IFLA_MASTER") == idx[0]]


def delete_link(name: str) -> bool:
    """Delete ``name`` if present; True if it existed."""
    with ipr() as sock:
        idx = sock.link_lookup(ifname=name)
        if not idx:
            return False
        netlink_call(f"deleting {name}", sock.link, "del", index=idx[0], ignore=(errno.ENODEV,))
        return True


def link_addresses(name: str) -> list[IPv4Interface]:
    with ipr() as sock:
        idx = sock.link_lookup(ifname=name)
        if not idx:
            return []
        msgs = sock.get_addr(index=idx[0], family=2)
    return [
        IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}") for m in msgs
    ]


def set_address(name: str, address: IPv4Interface, *, exclusive: bool = True) -> None:
    """Give ``name`` the IPv4 ``address``; with ``exclusive``, remove its other IPv4 addresses."""
    with ipr() as sock:
        idx = sock.link_lookup(ifname=name)
        if not idx:
            raise BackendError(f"device {name} does not exist")
        for m in sock.get_addr(index=idx[0], family=2):
            have = IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
            if have == address:
                return
            if exclusive:
                netlink_call(
                    f"removing {have} from {name}", sock.addr, "del", index=idx[0],
                    address=str(have.ip), prefixlen=have.network.prefixlen,
                    ignore=(errno.EADDRNOTAVAIL,),
                )
        netlink_call(
            f"adding {address} to {name}", sock.addr, "add", index=idx[0],
            address=str(address.ip), prefixlen=address.network.prefixlen,
            ignore=(errno.EEXIST,),
        )


def underlay_of(iface: str | None) -> tuple[str, IPv4Interface, int]:
    """(name, first IPv4 address, MTU) of the underlay interface.

    With no name, the interface of the default route is used.
    """
    with ipr() as sock:
        if not iface:
            routes = sock.get_default_routes(family=2)
            if not routes:
                raise BackendError(
                    "no default route to find the underlay interface", fix="pass --iface"
                )
            idx = routes[0].get_attr("RTA_OIF")
            iface = sock.get_links(idx)[0].get_attr("IFLA_IFNAME")
    info = link_info(iface)
    if info is None:
        raise BackendError(f"underlay interface {iface} does not exist", fix="check --iface")
    addrs = link_addresses(iface)
    if not addrs:
        raise BackendError(f"underlay interface {iface} has no IPv4 address")
    return iface, addrs[0], info["mtu"]
