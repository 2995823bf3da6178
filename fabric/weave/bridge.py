"""The weave node bridge: one flat L2 segment per network, pods and overlay ports on it.

Weave's model: every pod of the network shares one subnet across hosts; the node
bridge joins the pods' veths with the overlay ports (the sleeve TAP, the fastdp
VXLAN device). The overlay ports are *isolated* from each other (bridge port flag
``isolated``) so a frame that arrived from one overlay never leaves through the other:
each peer is reached by exactly one path, and floods are never duplicated or looped
between the kernel and the user-space overlays. The bridge's MAC is pinned at creation
so a new port with a lower MAC never changes the pods' gateway MAC.
"""

from __future__ import annotations

import errno
import hashlib
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from fabric.errors import BackendError
from fabric.net import (
    delete_link,
    ensure_bridge,
    ipr,
    link_addresses,
    link_index,
    netlink_call,
    set_address,
)

__all__ = ["WeaveBridge", "stable_mac"]


def stable_mac(*parts: str) -> str:
    """A locally administered unicast MAC derived from ``parts`` (same input, same MAC)."""
    raw = bytearray(hashlib.sha256("/".join(parts).encode()).digest()[:6])
    raw[0] = (raw[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in raw)


class WeaveBridge:
    def __init__(self, name: str, mac: str) -> None:
        self.name = name
        self.mac = mac

    def ensure(self, mtu: int) -> int:
        idx = ensure_bridge(self.name, mtu)
        with ipr() as sock:
            link = sock.get_links(idx)[0]
            if link.get_attr("IFLA_ADDRESS") != self.mac:
                netlink_call(f"pinning the MAC of {self.name}", sock.link, "set", index=idx,
                             address=self.mac)
            # Multicast floods to every peer, as weave: with snooping and no IGMP querier on
            # the overlay, the bridge would prune groups whose members sit on other hosts.
            netlink_call(f"multicast snooping off on {self.name}", sock.link, "set",
                         index=idx, kind="bridge", br_mcast_snooping=0)
        return idx

    def expose(self, ip: IPv4Address, prefixlen: int) -> None:
        """The bridge's address on the pod network (weave ``expose``): host <-> pods, gateway."""
        set_address(self.name, IPv4Interface(f"{ip}/{prefixlen}"))

    def address(self) -> IPv4Interface | None:
        addrs = link_addresses(self.name) if link_index(self.name) else []
        return addrs[0] if addrs else None

    def add_port(self, dev: str, *, isolated: bool = False, mtu: int | None = None) -> None:
        """Enslave ``dev`` to the bridge, up; ``isolated`` for overlay ports (see module doc)."""
        with ipr() as sock:
            br, port = sock.link_lookup(ifname=self.name), sock.link_lookup(ifname=dev)
            if not br or not port:
                raise BackendError(f"cannot put {dev} on {self.name}: device missing")
            kw: dict[str, Any] = {"mtu": mtu} if mtu else {}
            netlink_call(f"putting {dev} on {self.name}", sock.link, "set", index=port[0],
                         master=br[0], state="up", **kw)
            netlink_call(f"setting bridge port flags of {dev}", sock.brport, "set",
                         index=port[0], isolated=1 if isolated else 0, learning=1,
                         ignore=(errno.EOPNOTSUPP,))

    def teardown(self) -> None:
        delete_link(self.name)
