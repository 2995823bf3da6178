"""Routes, neighbour and FDB entries (idempotent: replace / delete-if-present).

Routes a backend installs carry ``proto`` :data:`RTPROT_FABRIC` so they can be
listed and removed by owner without touching anything else on the host.
"""

from __future__ import annotations

import errno
import os
from ipaddress import IPv4Address, IPv4Network

from fabric.errors import BackendError
from fabric.net.kernel import NetlinkError, ipr, netlink_call

__all__ = [
    "RTPROT_FABRIC",
    "replace_route",
    "delete_route",
    "fabric_routes",
    "replace_blackhole",
    "replace_neigh",
    "delete_neigh",
    "replace_fdb",
    "delete_fdb",
]

RTPROT_FABRIC = 0x4E  # our routes' protocol number (like bird=12, zebra=11)

_GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL)


def _index(sock, dev: str) -> int:
    idx = sock.link_lookup(ifname=dev)
    if not idx:
        raise BackendError(f"device {dev} does not exist")
    return idx[0]


def _foreign(sock, dst: IPv4Network, table: int) -> str | None:
    """The route to exactly ``dst`` (metric 0) a replace would overwrite, when it is not
    ours: e.g. the connected underlay route or the default route."""
    for m in sock.get_routes(family=2, table=table):
        if m["dst_len"] != dst.prefixlen or (m.get_attr("RTA_PRIORITY") or 0) != 0:
            continue
        if (m.get_attr("RTA_DST") or "0.0.0.0") != str(dst.network_address):
            continue
        if m["proto"] != RTPROT_FABRIC:
            return f"protocol {m['proto']}, type {m['type']}"
    return None


def _install(sock, what: str, dst: IPv4Network, table: int, within: IPv4Network | None,
             **kw) -> None:
    """Add the route, or replace it only when the route in place is the fabric's own:
    a route of another protocol (the connected underlay route, the default route) is
    never overwritten, whatever a datastore record says."""
    if within is not None and not dst.subnet_of(within):
        raise BackendError(f"refusing {what}: {dst} is outside the pod network {within}",
                           fix="the record asking for it is invalid; see `fabric status`")
    kw.update(dst=str(dst), proto=RTPROT_FABRIC, table=table)
    try:
        sock.route("add", **kw)
        return
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise BackendError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})") from exc
    if owner := _foreign(sock, dst, table):
        raise BackendError(f"refusing {what}: a route to {dst} that the fabric did not "
                           f"install is in place ({owner})",
                           fix="the record asking for it conflicts with the host's routes")
    netlink_call(what, sock.route, "replace", **kw)


def replace_route(
    dst: IPv4Network,
    *,
    gateway: IPv4Address | None = None,
    dev: str | None = None,
    onlink: bool = False,
    src: IPv4Address | None = None,
    table: int = 254,
    within: IPv4Network | None = None,
) -> None:
    """Install ``dst`` (proto 78); ``within``: refuse destinations outside that network.
    Never replaces a route of another protocol (BackendError)."""
    with ipr() as sock:
        kw: dict = {}
        if gateway is not None:
            kw["gateway"] = str(gateway)
        if dev is not None:
            kw["oif"] = _index(sock, dev)
        if onlink:
            kw["flags"] = 4  # RTNH_F_ONLINK
        if src is not None:
            kw["prefsrc"] = str(src)
        _install(sock, f"route {dst} via {gateway or dev}", dst, table, within, **kw)


def replace_blackhole(dst: IPv4Network, *, within: IPv4Network | None = None) -> None:
    with ipr() as sock:
        _install(sock, f"blackhole route {dst}", dst, 254, within, type="blackhole")


def delete_route(
    dst: IPv4Network,
    *,
    gateway: IPv4Address | str | None = None,
    dev: str | None = None,
    blackhole: bool = False,
    table: int = 254,
) -> bool:
    """Delete the fabric's route to ``dst`` (proto 78 only, and only via ``gateway`` /
    ``dev`` when given): routes of other protocols are never matched by the kernel."""
    with ipr() as sock:
        kw: dict = {"dst": str(dst), "table": table, "proto": RTPROT_FABRIC}
        if blackhole:
            kw["type"] = "blackhole"
        if gateway is not None:
            kw["gateway"] = str(gateway)
        if dev is not None:
            idx = sock.link_lookup(ifname=dev)
            if not idx:
                return False  # its device is gone, and the route with it
            kw["oif"] = idx[0]
        res = netlink_call(f"deleting route {dst}", sock.route, "del", ignore=_GONE, **kw)
        return res is not None


def fabric_routes(dev: str | None = None) -> list[dict]:
    """Routes installed with our protocol number, as {dst, gateway, dev, type}."""
    out = []
    with ipr() as sock:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in sock.get_links()}
        for m in sock.get_routes(family=2, proto=RTPROT_FABRIC):
            oif = m.get_attr("RTA_OIF")
            if dev is not None and names.get(oif) != dev:
                continue
            dst = m.get_attr("RTA_DST") or "0.0.0.0"
            out.append(
                {
                    "dst": IPv4Network(f"{dst}/{m['dst_len']}"),
                    "gateway": m.get_attr("RTA_GATEWAY"),
                    "dev": names.get(oif),
                    "type": m["type"],
                }
            )
    return out


def replace_neigh(dev: str, ip: IPv4Address, mac: str) -> None:
    with ipr() as sock:
        netlink_call(
            f"neighbour {ip} {mac} on {dev}", sock.neigh, "replace", dst=str(ip), lladdr=mac,
            ifindex=_index(sock, dev), state="permanent",
        )


def delete_neigh(dev: str, ip: IPv4Address) -> None:
    with ipr() as sock:
        idx = sock.link_lookup(ifname=dev)
        if idx:
            netlink_call(
                f"deleting neighbour {ip}", sock.neigh, "del", dst=str(ip), ifindex=idx[0],
                ignore=_GONE,
            )


def replace_fdb(dev: str, mac: str, dst: IPv4Address) -> None:
    """Bridge FDB entry on a VXLAN device: frames for ``mac`` go to VTEP ``dst``."""
    with ipr() as sock:
        netlink_call(
            f"fdb {mac} dst {dst} on {dev}", sock.fdb, "replace", ifindex=_index(sock, dev),
            lladdr=mac, dst=str(dst), state="permanent", flags=2,  # NTF_SELF
        )


def delete_fdb(dev: str, mac: str, dst: IPv4Address | None = None) -> None:
    with ipr() as sock:
        idx = sock.link_lookup(ifname=dev)
        if not idx:
            return
        kw: dict = {"ifindex": idx[0], "lladdr": mac, "flags": 2}
        if dst is not None:
            kw["dst"] = str(dst)
        netlink_call(f"deleting fdb {mac}", sock.fdb, "del", ignore=_GONE, **kw)
