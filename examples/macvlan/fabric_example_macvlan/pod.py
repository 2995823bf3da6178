"""Netlink work on a pod's macvlan interface, with pyroute2 errors turned into BackendError.

The contract (``fabric.api``) says a backend raises ``fabric.errors`` types only; this is
the one place where pyroute2 is called, so the translation happens here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Interface
from typing import Any

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from fabric.errors import BackendError

__all__ = ["PodLink", "create", "delete", "read"]


@attrs.frozen
class PodLink:
    """What a pod's interface looks like in its namespace."""

    kind: str
    mac: str
    mtu: int
    addresses: tuple[IPv4Interface, ...]


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except NetlinkError as exc:
        raise BackendError(f"{what}: {exc.args[-1] if exc.args else exc} (errno {exc.code})",
                           fix="check `ip -d link` on the node and in the pod") from exc


@contextmanager
def _in_netns(path: str) -> Iterator[IPRoute]:
    try:
        sock = IPRoute(netns=path, flags=0)  # flags=0: never create a missing netns
    except (OSError, NetlinkError) as exc:
        raise BackendError(f"cannot enter the pod's network namespace {path}: {exc}",
                           fix="is the sandbox still running?") from exc
    try:
        yield sock
    finally:
        sock.close()


def create(parent: str, netns: str, ifname: str, mode: str, address: IPv4Interface,
           mtu: int) -> None:
    """A macvlan of ``parent`` created directly inside ``netns`` (no window in which it
    sits in the host namespace), addressed and up."""
    try:
        ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"cannot open the pod's network namespace {netns}: {exc}",
                           fix="is the sandbox still running?") from exc
    try:
        with IPRoute() as host:
            idx = host.link_lookup(ifname=parent)
            if not idx:
                raise BackendError(f"parent interface {parent} does not exist",
                                   fix="set the node's underlay interface (fabric up --iface)")
            _call(f"creating macvlan {ifname} on {parent}", host.link, "add", ifname=ifname,
                  kind="macvlan", link=idx[0], macvlan_mode=mode, mtu=mtu, net_ns_fd=ns_fd)
    finally:
        os.close(ns_fd)
    with _in_netns(netns) as pod:
        i = pod.link_lookup(ifname=ifname)[0]
        try:
            _call(f"addressing {ifname}", pod.addr, "add", index=i, address=str(address.ip),
                  prefixlen=address.network.prefixlen)
            _call(f"setting {ifname} up", pod.link, "set", index=i, state="up")
            lo = pod.link_lookup(ifname="lo")
            if lo:
                _call("setting lo up", pod.link, "set", index=lo[0], state="up")
        except BackendError:
            pod.link("del", index=i)  # half-built: a retried ADD must find nothing
            raise


@contextmanager
def _netns_if_present(path: str) -> Iterator[IPRoute | None]:
    try:
        sock = IPRoute(netns=path, flags=0)  # flags=0: never create a missing netns
    except (OSError, NetlinkError):
        yield None  # the namespace is gone: so is everything in it
        return
    try:
        yield sock
    finally:
        sock.close()


def read(netns: str, ifname: str) -> PodLink | None:
    """The pod's interface, or None when it (or the namespace) is gone."""
    with _netns_if_present(netns) as pod:
        idx = pod.link_lookup(ifname=ifname) if pod is not None else []
        if pod is None or not idx:
            return None
        link = pod.get_links(idx[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
        addrs = tuple(IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                      for a in pod.get_addr(index=idx[0], family=2))
        return PodLink(kind or "", link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU"),
                       addrs)


def delete(netns: str, ifname: str) -> None:
    """Remove the pod's interface; a missing interface or namespace is already done."""
    with _netns_if_present(netns) as pod:
        idx = pod.link_lookup(ifname=ifname) if pod is not None else []
        if pod is None or not idx:
            return
        try:
            pod.link("del", index=idx[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise BackendError(f"deleting {ifname} in {netns}: {exc}") from exc
