"""pyroute2 access with errors translated into fabric.errors.

Every helper in ``fabric.net`` works in the network namespace of the calling
process unless given a namespace path; the agent runs inside its host's netns.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from fabric.errors import BackendError, KernelFeatureMissing

__all__ = [
    "ipr",
    "netns",
    "netlink_call",
    "sysctl_set",
    "kernel_supports",
    "require_kind",
    "NetlinkError",
]


@contextlib.contextmanager
def ipr() -> Iterator[IPRoute]:
    """An IPRoute socket on the caller's namespace, closed afterwards."""
    sock = IPRoute()
    try:
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def netns(path: str) -> Iterator[IPRoute]:
    """An IPRoute-like socket inside the namespace at ``path`` (e.g. CNI_NETNS)."""
    if not os.path.exists(path):
        raise BackendError(f"network namespace {path} does not exist")
    try:
        sock = NetNS(path)
    except OSError as exc:
        raise BackendError(f"cannot enter network namespace {path}: {exc}") from exc
    try:
        yield sock
    finally:
        sock.close()


def netlink_call(what: str, fn, *args, ignore: tuple[int, ...] = (), **kwargs):
    """Run one netlink request; translate errors, ignoring errnos in ``ignore``."""
    try:
        return fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code in ignore:
            return None
        raise BackendError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})") from exc


def sysctl_set(key: str, value: str | int) -> None:
    """Write a sysctl of the caller's namespace, e.g. ``net/ipv4/ip_forward``."""
    path = Path("/proc/sys") / key
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        raise BackendError(f"cannot set sysctl {key}={value}: {exc}") from exc


_KIND_FEATURE = {
    "ipip": "IPIP tunnels (ipip module)",
    "geneve": "GENEVE tunnels (geneve module)",
    "wireguard": "WireGuard (wireguard module)",
    "vxlan": "VXLAN (vxlan module)",
    "bridge": "Linux bridges",
    "tun": "TUN/TAP (/dev/net/tun)",
}


def kernel_supports(kind: str) -> bool:
    """True if the kernel can create links of ``kind`` (probes with a throw-away device).

    The probe device lives only in the caller's namespace and is removed at once.
    """
    if kind == "tun":
        return os.path.exists("/dev/net/tun")
    probe = f"nfprobe{os.getpid() % 100000}"
    with ipr() as sock:
        try:
            if kind == "vxlan":
                sock.link("add", ifname=probe, kind="vxlan", vxlan_id=4242, vxlan_port=4789)
            else:
                sock.link("add", ifname=probe, kind=kind)
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.EAFNOSUPPORT):
                return False
            if exc.code == errno.EEXIST:
                return True
            raise BackendError(f"probing kernel support for {kind}: {exc}") from exc
        sock.link("del", ifname=probe)
        return True


def require_kind(kind: str) -> None:
    """Raise KernelFeatureMissing with a clear message if ``kind`` links cannot be created."""
    if not kernel_supports(kind):
        raise KernelFeatureMissing(_KIND_FEATURE.get(kind, kind))
