"""Workload plumbing shared by backends: a veth per pod, bridged or routed.

``attach_bridged`` is flannel's cni0 pattern (host veth enslaved to the node
bridge, pod default route via the bridge address). ``attach_routed`` is
Calico's (no bridge: /32 route to the pod on the host veth, proxy ARP, pod
default route via the link-local gateway 169.254.1.1).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from fabric.api import Endpoint, Route, Workload
from fabric.errors import BackendError
from fabric.net.kernel import ipr, netlink_call, sysctl_set
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
    "pod_netns",
    "check_pod",
    "take_default_route",
]

LINK_LOCAL_GATEWAY = IPv4Address("169.254.1.1")
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"  # every routed host-side veth, as in Calico
_CLONE_NEWNET = 0x40000000
_LO_INDEX = 1  # the loopback device is created first in every network namespace
_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("fabric.net")


def _netlink_socket_in(target: int, path: str) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the namespace ``target`` (an open nsfs descriptor).

    setns(2) moves only the calling thread; the socket keeps the namespace it was
    created in, and the thread goes straight back. pyroute2's ``NetNS`` forks a helper
    process per socket instead: 8-12 ms each, several per ADD (measured, see
    docs/benchmarks.md "CNI ADD latency"); this costs about 0.1 ms.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise BackendError(f"cannot enter network namespace {path}: {os.strerror(err)}",
                               fix="CNI_NETNS must name a network namespace", field="netns")
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:  # never run agent code in a pod's netns
                log.critical("cannot return to the agent's network namespace: exiting")
                os._exit(70)
    finally:
        os.close(home)


@contextlib.contextmanager
def pod_netns(path: str) -> Iterator[IPRoute]:
    """An IPRoute socket inside the network namespace at ``path`` (CNI_NETNS, or the
    agent's ``/proc/PID/fd/N`` for a descriptor `fabric-cni` passed)."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BackendError(f"network namespace {path} does not exist") from exc
    except OSError as exc:
        raise BackendError(f"cannot open network namespace {path}: {exc}") from exc
    try:
        sock = _netlink_socket_in(target, path)
    finally:
        os.close(target)
    try:
        pod = IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise
    try:
        yield pod
    finally:
        pod.close()


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


def _create_veth(host: str, workload: Workload, mtu: int, *, master: int | None = None,
                 sock: IPRoute | None = None) -> None:
    """The pair in one request: host side (on ``master``, up) and pod side in its netns."""
    try:
        fd = os.open(workload.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"network namespace {workload.netns} does not exist") from exc
    kw: dict = {"master": master, "state": "up"} if master is not None else {}
    try:
        with contextlib.ExitStack() as stack:
            if sock is None:
                sock = stack.enter_context(ipr())
            try:
                sock.link("add", ifname=host, kind="veth", mtu=mtu, **kw,
                          peer={"ifname": workload.ifname, "net_ns_fd": fd, "mtu": mtu})
            except NetlinkError as exc:
                if exc.code == errno.EEXIST and _pod_has(workload):
                    raise interface_exists(workload) from exc
                raise BackendError(f"creating veth {host} for {workload.container_id[:12]}: "
                                   f"{os.strerror(exc.code)} (errno {exc.code})") from exc
    finally:
        os.close(fd)


def interface_exists(workload: Workload) -> BackendError:
    """CNI code 100 in `fabric-cni` (a BackendError whose ``field`` is ``ifname``)."""
    return BackendError(f"interface {workload.ifname} already exists in {workload.netns}",
                        fix="choose another CNI_IFNAME, or DEL the attachment that made it",
                        field="ifname")


def _pod_has(workload: Workload) -> bool:
    with pod_netns(workload.netns) as pod:
        return bool(pod.link_lookup(ifname=workload.ifname))


def _configure_pod(workload: Workload, address: IPv4Interface, mtu: int, routes) -> PodInterface:
    """Address, link and routes inside the pod. The default route is taken only when the
    pod has none through another interface: the first interface owns it (a second one,
    e.g. ``net1``, must not steal it, nor take it away when deleted)."""
    with pod_netns(workload.netns) as pod:
        netlink_call("pod lo up", pod.link, "set", index=_LO_INDEX, state="up",
                     ignore=(errno.ENODEV,))
        try:
            link = pod.link("get", ifname=workload.ifname)[0]
        except NetlinkError as exc:
            raise BackendError(f"{workload.ifname} did not appear in {workload.netns}") from exc
        idx = link["index"]
        netlink_call("pod link up", pod.link, "set", index=idx, mtu=mtu, state="up")
        netlink_call(
            f"pod address {address}", pod.addr, "add", index=idx, address=str(address.ip),
            prefixlen=address.network.prefixlen, ignore=(errno.EEXIST,),
        )
        gateway = None
        for dst, gw, scope_link in routes:
            if dst.prefixlen == 0 and _default_oifs(pod) - {idx}:
                continue  # another interface owns the default route
            kw: dict = {"dst": str(dst), "oif": idx}
            if gw is not None:
                kw["gateway"] = str(gw)
                if dst.prefixlen == 0:
                    gateway = gw
            if scope_link:
                kw["scope"] = 253
            netlink_call(f"pod route {dst}", pod.route, "replace", **kw)
        mac = link.get_attr("IFLA_ADDRESS")  # a veth's MAC is fixed at creation
    return PodInterface(workload.ifname, mac, (address,), mtu, gateway)


def _default_oifs(pod: IPRoute) -> set[int]:
    """Interfaces of the pod's IPv4 default routes (main table)."""
    return {r.get_attr("RTA_OIF") for r in pod.get_routes(family=2, table=254)
            if r["dst_len"] == 0}


def take_default_route(workload: Workload, ep: Endpoint) -> Endpoint:
    """Move the pod's default route to ``ep``'s interface (the config's ``defaultRoute``)."""
    gateway = ep.gateway
    if gateway is None:
        return ep
    with pod_netns(workload.netns) as pod:
        idx = pod.link_lookup(ifname=workload.ifname)
        if not idx:
            raise BackendError(f"{workload.ifname} is missing in {workload.netns}")
        netlink_call("pod default route", pod.route, "replace", dst="0.0.0.0/0",
                     gateway=str(gateway), oif=idx[0])
    routes = tuple(r for r in ep.routes if r.dst.prefixlen)
    return attrs.evolve(ep, routes=(*routes, Route(IPv4Network("0.0.0.0/0"), gateway)))


def check_pod(workload: Workload, address: IPv4Interface, gateway: IPv4Address) -> PodInterface:
    """CNI CHECK of the pod side: interface present, address and default gateway as given."""
    pod = pod_interface(workload)
    if pod is None:
        raise BackendError(f"{workload.ifname} is missing in {workload.netns}")
    if address not in pod.addresses:
        raise BackendError(f"{workload.ifname} lacks address {address} (has "
                           f"{', '.join(map(str, pod.addresses)) or 'none'})")
    if pod.default_gateway not in (None, gateway):  # None: another interface owns it
        raise BackendError(f"{workload.ifname} default route is not via {gateway}")
    return pod


def pod_interface(workload: Workload) -> PodInterface | None:
    """What is inside the pod now (for CHECK and idempotent ADD), or None.

    ``default_gateway`` is that of a default route through this interface only."""
    if not os.path.exists(workload.netns):
        return None
    with pod_netns(workload.netns) as pod:
        idx = pod.link_lookup(ifname=workload.ifname)
        if not idx:
            return None
        link = pod.get_links(idx[0])[0]
        addrs = tuple(
            IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in pod.get_addr(index=idx[0], family=2)
        )
        gw = None
        for r in pod.get_routes(family=2, table=254):
            if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") and \
                    r.get_attr("RTA_OIF") == idx[0]:
                gw = IPv4Address(r.get_attr("RTA_GATEWAY"))
        return PodInterface(
            workload.ifname, link.get_attr("IFLA_ADDRESS"), addrs, link.get_attr("IFLA_MTU"), gw
        )


def _existing(host: str, workload: Workload, address: IPv4Interface,
              sock: IPRoute | None = None) -> PodInterface | None:
    with contextlib.ExitStack() as stack:
        if sock is None:
            sock = stack.enter_context(ipr())
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
    """veth pair: pod side ``workload.ifname`` with ``address``, host side on ``bridge``.

    Few netlink round trips (an ADD's cost, docs/benchmarks.md): one host socket, the
    pair created enslaved and up in one request, the pod configured through one socket."""
    with ipr() as sock:
        found = _existing(host, workload, address, sock)
        if found is not None:
            return found
        br = sock.link_lookup(ifname=bridge)
        if not br:
            raise BackendError(f"bridge {bridge} does not exist")
        _create_veth(host, workload, mtu, master=br[0], sock=sock)
    try:
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
    with pod_netns(workload.netns) as pod:
        idx = pod.link_lookup(ifname=workload.ifname)
        if not idx:
            raise BackendError(f"{workload.ifname} vanished from {workload.netns}")
        netlink_call(f"pinning {gateway} in the pod", pod.neigh, "replace", dst=str(gateway),
                     lladdr=HOST_VETH_MAC, ifindex=idx[0], state="permanent")


def detach_veth(host: str, workload: Workload) -> None:
    """Delete the veth pair through its host side. Idempotent.

    The pod side is never deleted by name: a veth pair lives and dies together, so when
    the host side is gone an interface named CNI_IFNAME in the pod belongs to someone
    else (e.g. the attachment that made an ADD fail with "interface already exists")."""
    with ipr() as sock:
        idx = sock.link_lookup(ifname=host)
        if idx:
            netlink_call(f"deleting {host}", sock.link, "del", index=idx[0], ignore=(errno.ENODEV,))
