"""Workload plumbing shared by backends: a veth per pod, bridged or routed.

``attach_bridged`` is flannel's cni0 pattern (host veth enslaved to the node
bridge, pod default route via the bridge address). ``attach_routed`` is
Calico's (no bridge: /32 route to the pod on the host veth, proxy ARP, pod
default route via the link-local gateway 169.254.1.1).
"""

from __future__ import annotations

import errno
import hashlib
import os
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import attrs

from fabric.api import Workload
from fabric.errors import BackendError
from fabric.net.kernel import ipr, netlink_call, netns, sysctl_set
from fabric.net.routes import RTPROT_FABRIC

__all__ = [
    "LINK_LOCAL_GATEWAY",
    "HOST_VETH_MAC",
    "PodInterface",
    "host_ifname",
    "attach_bridged",
    "attach_routed",
    "detach_veth",
    "pod_interface",
    "check_pod",
]

LINK_LOCAL_GATEWAY = IPv4Address("169.254.1.1")
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"  # every routed host-side veth, as in Calico


@attrs.frozen
class PodInterface:
    ifname: str
    mac: str
    addresses: tuple[IPv4Interface, ...]
    mtu: int
    default_gateway: IPv4Address | None


def host_ifname(prefix: str, workload: Workload) -> str:
    """Deterministic host-side veth name: prefix + hash of (container id, ifname), 15 chars."""
    digest = hashlib.sha1(workload.handle.key().encode()).hexdigest()
    return (prefix + digest)[:15]


def _create_veth(host: str, workload: Workload, mtu: int) -> None:
    if not os.path.exists(workload.netns):
        raise BackendError(f"network namespace {workload.netns} does not exist")
    fd = os.open(workload.netns, os.O_RDONLY)
    try:
        with ipr() as sock:
            netlink_call(
                f"creating veth {host} for {workload.container_id[:12]}",
                sock.link, "add", ifname=host, kind="veth", mtu=mtu,
                peer={"ifname": workload.ifname, "net_ns_fd": fd, "mtu": mtu},
            )
    finally:
        os.close(fd)


def _configure_pod(workload: Workload, address: IPv4Interface, mtu: int, routes) -> PodInterface:
    with netns(workload.netns) as pod:
        lo = pod.link_lookup(ifname="lo")
        if lo:
            pod.link("set", index=lo[0], state="up")
        idx = pod.link_lookup(ifname=workload.ifname)
        if not idx:
            raise BackendError(f"{workload.ifname} did not appear in {workload.netns}")
        idx = idx[0]
        netlink_call("pod link up", pod.link, "set", index=idx, mtu=mtu, state="up")
        netlink_call(
            f"pod address {address}", pod.addr, "add", index=idx, address=str(address.ip),
            prefixlen=address.network.prefixlen, ignore=(errno.EEXIST,),
        )
        gateway = None
        for dst, gw, scope_link in routes:
            kw: dict = {"dst": str(dst), "oif": idx}
            if gw is not None:
                kw["gateway"] = str(gw)
                if dst.prefixlen == 0:
                    gateway = gw
            if scope_link:
                kw["scope"] = 253
            netlink_call(f"pod route {dst}", pod.route, "replace", **kw)
        mac = pod.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    return PodInterface(workload.ifname, mac, (address,), mtu, gateway)


def check_pod(workload: Workload, address: IPv4Interface, gateway: IPv4Address) -> PodInterface:
    """CNI CHECK of the pod side: interface present, address and default gateway as given."""
    pod = pod_interface(workload)
    if pod is None:
        raise BackendError(f"{workload.ifname} is missing in {workload.netns}")
    if address not in pod.addresses:
        raise BackendError(f"{workload.ifname} lacks address {address} (has "
                           f"{', '.join(map(str, pod.addresses)) or 'none'})")
    if pod.default_gateway != gateway:
        raise BackendError(f"{workload.ifname} default route is not via {gateway}")
    return pod


def pod_interface(workload: Workload) -> PodInterface | None:
    """What is inside the pod now (for CHECK and idempotent ADD), or None."""
    if not os.path.exists(workload.netns):
        return None
    with netns(workload.netns) as pod:
        idx = pod.link_lookup(ifname=workload.ifname)
        if not idx:
            return None
        link = pod.get_links(idx[0])[0]
        addrs = tuple(
            IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in pod.get_addr(index=idx[0], family=2)
        )
        gw = None
        for r in pod.get_routes(family=2):
            if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY"):
                gw = IPv4Address(r.get_attr("RTA_GATEWAY"))
        return PodInterface(
            workload.ifname, link.get_attr("IFLA_ADDRESS"), addrs, link.get_attr("IFLA_MTU"), gw
        )


def _existing(host: str, workload: Workload, address: IPv4Interface) -> PodInterface | None:
    with ipr() as sock:
        present = bool(sock.link_lookup(ifname=host))
    if not present:
        return None
    current = pod_interface(workload)
    if current is not None and address in current.addresses:
        return current
    detach_veth(host, workload)  # half-made: start again
    return None


def attach_bridged(
    workload: Workload, *, bridge: str, host: str, address: IPv4Interface,
    gateway: IPv4Address, mtu: int,
) -> PodInterface:
    """veth pair: pod side ``workload.ifname`` with ``address``, host side on ``bridge``."""
    found = _existing(host, workload, address)
    if found is not None:
        return found
    _create_veth(host, workload, mtu)
    try:
        with ipr() as sock:
            br = sock.link_lookup(ifname=bridge)
            if not br:
                raise BackendError(f"bridge {bridge} does not exist")
            idx = sock.link_lookup(ifname=host)[0]
            netlink_call(f"enslaving {host}", sock.link, "set", index=idx, master=br[0])
            netlink_call(f"setting {host} up", sock.link, "set", index=idx, state="up")
        routes = [(IPv4Network("0.0.0.0/0"), gateway, False)]
        return _configure_pod(workload, address, mtu, routes)
    except BaseException:
        detach_veth(host, workload)
        raise


def attach_routed(
    workload: Workload, *, host: str, ip: IPv4Address, mtu: int,
    gateway: IPv4Address = LINK_LOCAL_GATEWAY,
) -> PodInterface:
    """Calico-style routed veth: pod gets ip/32, host gets a /32 route and proxy ARP."""
    address = IPv4Interface(f"{ip}/32")
    found = _existing(host, workload, address)
    if found is None:
        _create_veth(host, workload, mtu)
    try:
        with ipr() as sock:
            idx = sock.link_lookup(ifname=host)[0]
            netlink_call(
                f"setting {host} up", sock.link, "set", index=idx, state="up",
                address=HOST_VETH_MAC,
            )
        sysctl_set(f"net/ipv4/conf/{host}/proxy_arp", 1)
        sysctl_set(f"net/ipv4/neigh/{host}/proxy_delay", 0)
        sysctl_set(f"net/ipv4/conf/{host}/forwarding", 1)
        with ipr() as sock:
            netlink_call(
                f"route to pod {ip}", sock.route, "replace", dst=f"{ip}/32", oif=idx,
                scope=253, proto=RTPROT_FABRIC,
            )
        if found is None:
            routes = [
                (IPv4Network(f"{gateway}/32"), None, True),
                (IPv4Network("0.0.0.0/0"), gateway, False),
            ]
            found = _configure_pod(workload, address, mtu, routes)
        _pin_gateway(workload, gateway)
        return found
    except BaseException:
        detach_veth(host, workload)
        raise


def _pin_gateway(workload: Workload, gateway: IPv4Address) -> None:
    """Permanent neighbour entry gateway -> host veth MAC inside the pod.

    Proxy ARP answers only for addresses the host can route elsewhere; a host
    with no default route has none to 169.254.1.1, so the pod's ARP would go
    unanswered. Pinning the entry (as Calico's static ARP does) removes the doubt.
    """
    with netns(workload.netns) as pod:
        idx = pod.link_lookup(ifname=workload.ifname)
        if not idx:
            raise BackendError(f"{workload.ifname} vanished from {workload.netns}")
        netlink_call(f"pinning {gateway} in the pod", pod.neigh, "replace", dst=str(gateway),
                     lladdr=HOST_VETH_MAC, ifindex=idx[0], state="permanent")


def detach_veth(host: str, workload: Workload) -> None:
    """Delete the veth pair (host side, or pod side if the host side is gone). Idempotent."""
    with ipr() as sock:
        idx = sock.link_lookup(ifname=host)
        if idx:
            netlink_call(f"deleting {host}", sock.link, "del", index=idx[0], ignore=(errno.ENODEV,))
            return
    if os.path.exists(workload.netns):
        try:
            with netns(workload.netns) as pod:
                idx = pod.link_lookup(ifname=workload.ifname)
                if idx:
                    netlink_call(
                        "deleting pod link", pod.link, "del", index=idx[0], ignore=(errno.ENODEV,)
                    )
        except BackendError:
            pass  # namespace vanished meanwhile: nothing left to delete
