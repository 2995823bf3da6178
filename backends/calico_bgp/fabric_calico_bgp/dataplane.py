"""Kernel side of the calico-bgp backend: blackholes for local blocks, routes to peers' blocks.

Modes (per network, like a Calico IP pool):

* native: ``block via <next hop>`` on the underlay (the next hop must be on-link;
  across segments a router must learn pod routes, e.g. BIRD on the underlay);
* vxlan Always/CrossSubnet: device ``<net>.vx`` (VNI 4096, UDP 4789, learning off);
  per remote block ``block via <block address> dev <net>.vx onlink``, a permanent
  neighbour entry block address -> peer VTEP MAC, and an FDB entry MAC -> peer
  node address; CrossSubnet routes natively to next hops on the node's own subnet;
* ipip Always/CrossSubnet: ``block via <next hop> dev tunl0 onlink``; needs the
  kernel's ipip module, which is detected and refused clearly when missing.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv4Network

from fabric.api import NetworkContext
from fabric.errors import BackendError
from fabric.net import (
    NetlinkError,
    delete_fdb,
    delete_link,
    delete_neigh,
    delete_route,
    ensure_vxlan,
    fabric_routes,
    ipr,
    link_addresses,
    link_index,
    link_info,
    replace_blackhole,
    replace_fdb,
    replace_neigh,
    replace_route,
    require_kind,
    set_up,
    sysctl_set,
)
from fabric_calico_bgp.config import BgpConfig

__all__ = ["Dataplane", "VXLAN_OVERHEAD", "IPIP_OVERHEAD", "vtep_mac"]

VXLAN_OVERHEAD = 50
IPIP_OVERHEAD = 20
RTN_BLACKHOLE = 6


def vtep_mac(node: str, network: str) -> str:
    """A stable, locally administered MAC for this node's VTEP (kept across restarts)."""
    digest = hashlib.sha1(f"{network}/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x66, *digest[:5]))


class Dataplane:
    def __init__(self, ctx: NetworkContext, cfg: BgpConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.mode = cfg.encapsulation
        self.vx = ctx.device_name("vx")
        self.mac = vtep_mac(ctx.node.name, ctx.spec.name)
        self.installed: dict[IPv4Network, tuple[IPv4Address, str]] = {}  # prefix -> (nh, how)
        self._vx_entries: dict[IPv4Network, tuple[str, IPv4Address]] = {}

    @property
    def mtu(self) -> int:
        overhead = {"vxlan": VXLAN_OVERHEAD, "ipip": IPIP_OVERHEAD}.get(self.mode, 0)
        return self.ctx.node.mtu - overhead

    def prepare(self) -> dict[str, str]:
        """Create the encapsulation device (if any); return what peers need to reach it."""
        if self.mode == "ipip":
            require_kind("ipip")  # KernelFeatureMissing on this kernel: a clear refusal
            set_up("tunl0", self.mtu)
            return {}
        if self.mode == "vxlan":
            require_kind("vxlan")
            underlay = link_index(self.ctx.node.iface)
            if underlay is None:
                raise BackendError(f"underlay interface {self.ctx.node.iface} does not exist")
            ensure_vxlan(self.vx, vni=self.cfg.vni, port=self.cfg.port,
                         local=self.ctx.node.public_ip, underlay_index=underlay, mtu=self.mtu,
                         mac=self.mac)
            info = link_info(self.vx) or {}
            self.mac = info.get("mac") or self.mac
            return {"VtepMAC": self.mac}
        return {}

    def uplinks(self) -> list[str]:
        """Devices where pod traffic from other nodes arrives (for the fast path)."""
        return [self.ctx.node.iface] + ([self.vx] if self.mode == "vxlan" else [])

    def start(self) -> None:
        sysctl_set("net/ipv4/ip_forward", 1)
        if self.mode == "vxlan":
            sysctl_set(f"net/ipv4/conf/{self.vx}/rp_filter", 0)

    # -- local blocks --
    def set_local_blocks(self, chunks: tuple[IPv4Network, ...]) -> None:
        """Blackhole each local block (pods have /32s); remove blackholes of released blocks."""
        wanted = {c for c in chunks if c.prefixlen < 32}
        for r in fabric_routes():
            if r["type"] == RTN_BLACKHOLE and r["dst"].subnet_of(self.ctx.spec.cidr) \
                    and r["dst"] not in wanted:
                delete_route(r["dst"], blackhole=True)
        for c in wanted:
            replace_blackhole(c, within=self.ctx.spec.cidr)

    # -- remote routes --
    def direct(self, nexthop: IPv4Address) -> bool:
        """True if ``nexthop`` is on one of the underlay interface's subnets."""
        return any(nexthop in a.network for a in link_addresses(self.ctx.node.iface))

    def resolve(self, nexthop: IPv4Address) -> IPv4Address:
        """The underlay gateway this node uses to reach ``nexthop``."""
        with ipr() as sock:
            try:
                found = sock.route("get", dst=str(nexthop))
            except NetlinkError as exc:
                raise BackendError(f"no route to next hop {nexthop}: {exc}") from exc
        gw = found[0].get_attr("RTA_GATEWAY") if found else None
        if not gw:
            raise BackendError(f"next hop {nexthop} is neither on-link nor behind a gateway")
        return IPv4Address(gw)

    def program(self, prefix: IPv4Network, nexthop: IPv4Address, peer_mac: str | None) -> str:
        """Install the route to a remote block; returns how ("native", "vxlan", "ipip")."""
        encap = self.mode != "none" and not (self.cfg.cross_subnet and self.direct(nexthop))
        if self.installed.get(prefix, (None, ""))[0] != nexthop:
            self.unprogram(prefix)
        if not encap:
            # A next hop behind a router resolves recursively (like BIRD's "gateway
            # recursive"): pod traffic goes to that router, which must know pod routes.
            gateway = nexthop if self.direct(nexthop) else self.resolve(nexthop)
            replace_route(prefix, gateway=gateway, dev=self.ctx.node.iface,
                          within=self.ctx.spec.cidr)
            how = "native" if gateway == nexthop else f"native via router {gateway}"
        elif self.mode == "vxlan":
            if not peer_mac:
                raise BackendError(f"no VTEP MAC known for node {nexthop} yet (for {prefix})")
            gw = prefix.network_address
            replace_neigh(self.vx, gw, peer_mac)
            replace_fdb(self.vx, peer_mac, nexthop)
            replace_route(prefix, gateway=gw, dev=self.vx, onlink=True,
                          within=self.ctx.spec.cidr)
            self._vx_entries[prefix] = (peer_mac, nexthop)
            how = "vxlan"
        else:
            replace_route(prefix, gateway=nexthop, dev="tunl0", onlink=True,
                          within=self.ctx.spec.cidr)
            how = "ipip"
        self.installed[prefix] = (nexthop, how)
        return how

    def unprogram(self, prefix: IPv4Network) -> None:
        if self.installed.pop(prefix, None) is None:
            return
        delete_route(prefix)
        entry = self._vx_entries.pop(prefix, None)
        if entry is not None:
            delete_neigh(self.vx, prefix.network_address)
            mac, nexthop = entry
            if not any(m == mac for m, _ in self._vx_entries.values()):
                delete_fdb(self.vx, mac, nexthop)

    def reconcile(self, keep: set[IPv4Network], local: set[IPv4Network]) -> int:
        """Remove our routes into the network that are neither learned nor local (after restart)."""
        removed = 0
        for r in fabric_routes():
            dst = r["dst"]
            if (r["type"] == RTN_BLACKHOLE or not dst.subnet_of(self.ctx.spec.cidr)
                    or dst in keep or dst in local or dst.prefixlen == 32 and r["dev"] and
                    r["dev"] not in (self.ctx.node.iface, self.vx, "tunl0")):
                continue  # pod /32 routes on veths are the workloads', not ours to sweep
            delete_route(dst, gateway=r["gateway"], dev=r["dev"])
            removed += 1
        return removed

    def teardown(self) -> None:
        for r in fabric_routes():
            if r["dst"].subnet_of(self.ctx.spec.cidr):
                delete_route(r["dst"], gateway=r["gateway"], dev=r["dev"],
                             blackhole=r["type"] == RTN_BLACKHOLE)
        self.installed.clear()
        delete_link(self.vx)
