"""TUN (L3) and TAP (L2) devices with virtio-net offloads, or a detected per-packet fallback.

With ``IFF_VNET_HDR`` + ``TUNSETOFFLOAD`` (CSUM, TSO4/6, USO4/6) the
kernel hands over ~64 KB super-packets with partial checksums; without them
every read is one MTU-sized packet with a complete checksum. Which one was
negotiated, and why not the other, is in :attr:`TunDevice.offload`.
Python 3.11 lacks the ioctl numbers, so they are defined here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import attrs

from fabric.errors import BackendError, KernelFeatureMissing

__all__ = ["TunDevice", "Offload", "open_tun", "TUN_F_CSUM", "TUN_F_TSO4", "TUN_F_USO4"]

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
# gso_max_size stays at the kernel default: capping it makes the kernel segment forwarded
# 64 KB GSO packets (from pods) in software before the device, one packet per read.
# Super-packets larger than one UDP send are split into several sends instead.


@attrs.frozen
class Offload:
    """What the device negotiated: ``vnet_hdr`` and the TUNSETOFFLOAD flags, or why not."""

    vnet_hdr: bool
    flags: int = 0
    reason: str = ""  # why offloads are off or reduced (empty when all are on)

    @property
    def tso(self) -> bool:
        return bool(self.flags & TUN_F_TSO4)

    @property
    def uso(self) -> bool:
        return bool(self.flags & TUN_F_USO4)

    def as_dict(self) -> dict:
        return {"vnet_hdr": self.vnet_hdr, "csum": bool(self.flags & TUN_F_CSUM),
                "tso4": self.tso, "uso4": self.uso, "reason": self.reason}


@attrs.define
class TunDevice:
    fd: int
    name: str
    tap: bool
    offload: Offload
    mtu: int = 1500

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def open_tun(name: str, *, tap: bool = False, offload: bool = True, persist: bool = False,
             uso: bool = True) -> TunDevice:
    """Create (or attach to a persistent) TUN/TAP device ``name`` in the caller's namespace.

    ``offload=False`` forces the per-packet fallback. Offload flags the kernel
    refuses are dropped one by one (USO first, then TSO) and the reason recorded.
    """
    if len(name.encode()) > 15:
        raise BackendError(f"device name {name!r} is longer than 15 characters")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise KernelFeatureMissing("TUN/TAP (/dev/net/tun)") from exc
    except OSError as exc:
        raise BackendError(f"cannot open /dev/net/tun: {exc}") from exc
    base = (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI
    reason = ""
    try:
        vnet = False
        if offload:
            try:
                fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, base | IFF_VNET_HDR))
                vnet = True
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EBUSY):
                    raise
                reason = f"IFF_VNET_HDR refused ({os.strerror(exc.errno)})"
        else:
            reason = "offloads disabled by configuration"
        if not vnet:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, base))
        flags = 0
        if vnet:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
            wanted = [TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
                      TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM]
            if not uso:
                wanted = wanted[1:]
            for cand in wanted:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, cand)
                    flags = cand
                    break
                except OSError as exc:
                    reason = f"TUNSETOFFLOAD {cand:#x} refused ({os.strerror(exc.errno)})"
            if flags and flags == wanted[0]:
                reason = ""
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        raise BackendError(f"cannot create {'TAP' if tap else 'TUN'} device {name}: {exc}",
                           fix="run as root (CAP_NET_ADMIN) with a free device name") from exc
    os.set_blocking(fd, False)
    return TunDevice(fd, name, tap, Offload(vnet, flags, reason))


def unpersist(name: str, tap: bool = False) -> None:
    """Remove a persistent TUN/TAP device by attaching and clearing TUNSETPERSIST."""
    dev = open_tun(name, tap=tap, offload=False)
    try:
        fcntl.ioctl(dev.fd, TUNSETPERSIST, 0)
    finally:
        dev.close()


__all__.append("unpersist")
