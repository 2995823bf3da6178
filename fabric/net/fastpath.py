"""eBPF forwarding fast path for pod-to-pod IPv4 (opt-in per network).

A tc ingress program (``sched_cls``, direct action) on the devices where pod
traffic enters a node — each pod's host-side veth and the uplink (underlay
interface or overlay device) — forwards packets addressed to the pod network
itself: ``bpf_fib_lookup`` on the node's own routing and neighbour tables, TTL
decrement with checksum fix-up, MAC rewrite, ``bpf_redirect`` to the egress
device. The packet skips the host's IP input, netfilter, forwarding and (for a
bridge backend) the bridge input path. The routes stay what the backend
programs; the program only follows them.

Anything it cannot decide goes up the normal stack unchanged: non-IPv4, IPv4
options, TTL <= 1, destinations outside the pod network, local addresses,
unresolved neighbours (the stack resolves them; later packets take the fast
path), packets too big for the egress MTU. Because netfilter is skipped for
pod-to-pod forwarding, a network whose policy engine filters in netfilter must
not use it (the agent refuses that combination).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import zlib
from ipaddress import IPv4Network
from typing import Any

from fabric.errors import BackendError, ConfigError, KernelFeatureMissing
from fabric.net.ebpf import FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, BpfError, Program
from fabric.net.ebpf import load_sched_cls as _load
from fabric.net.kernel import NetlinkError, ipr

__all__ = ["FastPath", "build_program", "fast_path_from_config", "fast_path_status",
           "sync_fast_path", "remove_fast_path", "probe"]
_INGRESS = "ffff:fff2"  # clsact ingress (TC_H_MIN_INGRESS under TC_H_CLSACT)
_ETH_HLEN = 14
_IPH = -96  # stack: copy of the IPv4 header (20 bytes)
_SCRATCH = -72  # stack: 2-byte scratch for the new TTL
_FIB = -64  # stack: struct bpf_fib_lookup (64 bytes)
_AF_INET = 2
_SKB_PROTOCOL, _SKB_IFINDEX = 16, 40  # offsets in struct __sk_buff
_FIB_NO_NEIGH = 7  # BPF_FIB_LKUP_RET_NO_NEIGH: route found, neighbour not resolved


def _le32(net: IPv4Network) -> tuple[int, int]:
    """(address, mask) as the program sees a network-order word loaded little-endian."""
    addr = struct.unpack("<i", net.network_address.packed)[0]
    mask = struct.unpack("<i", net.netmask.packed)[0]
    return addr, mask


def build_program(pods: IPv4Network, exclude: IPv4Network | None = None,
                  source_iif: int | None = None) -> bytes:
    """Bytecode forwarding packets to ``pods`` (except ``exclude``, e.g. a bridged
    node's own subnet, which stays switched by the bridge).

    ``source_iif`` (pod-facing programs) adds strict reverse-path filtering, as
    ``rp_filter`` would do on the stack path the program skips: the route back to
    the source must leave through that interface (0: the one the packet came in
    on, for routed pods; a bridge's index for bridged pods). Failing packets go up
    the stack, where the node's own rp_filter setting decides.
    """
    p = Program()
    p.mov(R6, R1)
    p.ldx(4, R2, R6, _SKB_PROTOCOL)
    p.jmpi("!=", R2, socket.htons(0x0800), "pass")
    _skb_bytes(p, "skb_load_bytes", _ETH_HLEN, _IPH, 20)
    p.jmpi("!=", R0, 0, "pass")
    p.ldx(1, R2, FP, _IPH)  # version 4, header length 5 words (no options)
    p.jmpi("!=", R2, 0x45, "pass")
    p.ldx(1, R2, FP, _IPH + 8)
    p.jmpi("<", R2, 2, "pass")  # TTL would expire here: the stack answers with ICMP
    for net, cond in ((pods, "!="), (exclude, "==")):
        if net is not None:
            addr, mask = _le32(net)
            p.ldx(4, R2, FP, _IPH + 16)
            p.alui("&", R2, mask, bits=32)
            p.jmpi(cond, R2, addr, "pass", bits=32)
    if source_iif is not None:
        _fib_lookup(p, src=_IPH + 16, dst=_IPH + 12)  # the route back to the source
        p.jmpi("==", R0, 0, "rpf")
        p.jmpi("!=", R0, _FIB_NO_NEIGH, "pass")
        p.label("rpf")
        p.ldx(4, R2, FP, _FIB + 8)
        if source_iif:
            p.jmpi("!=", R2, source_iif, "pass", bits=32)
        else:
            p.ldx(4, R3, R6, _SKB_IFINDEX)
            p.jmp_reg("!=", R2, R3, "pass")
    _fib_lookup(p, src=_IPH + 12, dst=_IPH + 16)
    p.jmpi("!=", R0, 0, "pass")  # not BPF_FIB_LKUP_RET_SUCCESS
    # TTL and protocol share one 16-bit word; TTL is its first byte (low on little-endian)
    p.ldx(2, R7, FP, _IPH + 8)
    p.mov(R8, R7)
    p.alui("-", R8, 1)
    p.stx(2, FP, _SCRATCH, R8)
    _skb_bytes(p, "skb_store_bytes", _ETH_HLEN + 8, _SCRATCH, 2)
    p.mov(R1, R6)
    p.movi(R2, _ETH_HLEN + 10)  # IPv4 header checksum
    p.mov(R3, R7)
    p.mov(R4, R8)
    p.movi(R5, 2)
    p.call("l3_csum_replace")
    _skb_bytes(p, "skb_store_bytes", 0, _FIB + 58, 6)  # destination MAC (fib dmac)
    _skb_bytes(p, "skb_store_bytes", 6, _FIB + 52, 6)  # source MAC (fib smac)
    p.ldx(4, R1, FP, _FIB + 8)  # egress ifindex
    p.movi(R2, 0)
    p.call("redirect")
    p.exit()
    p.label("pass")
    p.movi(R0, -1)  # TC_ACT_UNSPEC: next tc filter, then the normal stack
    p.exit()
    return p.assemble()


def _fib_lookup(p: Program, *, src: int, dst: int) -> None:
    """bpf_fib_lookup for the header copy's addresses at ``src``/``dst``; result in R0."""
    for off in range(_FIB, 0, 8):
        p.st(8, FP, off, 0)
    p.st(1, FP, _FIB, _AF_INET)
    for from_off, size, to_off in ((_IPH + 9, 1, _FIB + 1),  # l4 protocol
                                   (_IPH + 1, 1, _FIB + 12),  # tos
                                   (src, 4, _FIB + 16),
                                   (dst, 4, _FIB + 32)):
        p.ldx(size, R2, FP, from_off)
        p.stx(size, FP, to_off, R2)
    p.ldx(4, R2, R6, _SKB_IFINDEX)
    p.stx(4, FP, _FIB + 8, R2)  # input interface for the lookup
    p.mov(R1, R6)
    p.mov(R2, FP)
    p.alui("+", R2, _FIB)
    p.movi(R3, 64)
    p.movi(R4, 0)
    p.call("fib_lookup")


def _skb_bytes(p: Program, helper: str, pkt_off: int, stack_off: int, size: int) -> None:
    """Copy ``size`` bytes between the packet and the stack with ``helper``
    (skb_load_bytes or skb_store_bytes; the latter's flags argument is 0)."""
    p.mov(R1, R6)
    p.movi(R2, pkt_off)
    p.mov(R3, FP)
    p.alui("+", R3, stack_off)
    p.movi(R4, size)
    p.movi(R5, 0)
    p.call(helper)


def probe() -> str | None:
    """Why this kernel cannot run the fast path (None when it loads both programs)."""
    fast = FastPath(IPv4Network("10.0.0.0/8"), IPv4Network("10.1.0.0/24"), name="probe")
    try:
        fast.check()
    except KernelFeatureMissing as exc:
        return str(exc).split("\n")[0]
    finally:
        fast.close(detach=False)
    return None


def fast_path_status(fast: FastPath | None) -> dict[str, Any]:
    """The ``fast_path`` entry of a backend's status."""
    return fast.status() if fast is not None else {"enabled": False}


def fast_path_from_config(ctx: Any, key: str = "FastPath") -> FastPath | None:
    """The network's fast path if its backend options ask for one (``key: true``)."""
    value = ctx.spec.backend_config.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{ctx.spec.backend} backend: {key} must be true or false, "
                          f"got {value!r}", fix=f"set {key}: true or false", field=key)
    if not value:
        return None
    if ctx.spec.policy != "none":
        raise ConfigError(
            f"{ctx.spec.backend} backend: {key} forwards pod-to-pod traffic past netfilter, "
            f"so the {ctx.spec.policy!r} policy engine could not see it",
            fix=f"turn {key} off on networks with a policy engine", field=key)
    return FastPath(ctx.spec.cidr, name=ctx.spec.name)


def sync_fast_path(fast: FastPath | None, ctx: Any, uplinks: list[str],
                   pods: list[str]) -> None:
    """At start: attach ``fast`` to the uplinks and existing pod veths or, when the
    option is off (``fast`` None), remove filters an earlier run left behind."""
    if fast is None:
        remove_fast_path(ctx, uplinks + pods)
        return
    fast.check()
    for dev in uplinks:
        fast.attach(dev, "uplink")
    for dev in pods:
        fast.attach(dev, "pod")


def remove_fast_path(ctx: Any, devices: list[str]) -> None:
    """Remove this network's filter from ``devices`` (no program is loaded for that)."""
    off = FastPath(ctx.spec.cidr, name=ctx.spec.name)
    for dev in devices:
        off.detach(dev)


class FastPath:
    """Loads the two program variants once and attaches them to devices.

    ``uplink`` devices (underlay interface, overlay device) get the program
    for the whole pod network; ``pod`` devices (host-side veths) get the one
    that leaves ``local`` (a bridged node subnet) to the bridge. Each network
    has its own filter priority, so networks sharing an uplink chain their
    filters (a program passes what is not its network's to the next one).
    """

    def __init__(self, pods: IPv4Network, local: IPv4Network | None = None, *,
                 name: str = "net") -> None:
        self.pods, self.local = pods, local
        self.source_iif = 0  # reverse-path check on pod devices: 0 = the pod's own veth
        self.filter_name = f"netfabric-{name}"
        self.prio = 0x4000 + (zlib.crc32(name.encode()) & 0x0FFF)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.attached: set[str] = set()

    def _fd(self, role: str) -> int:
        with self._lock:
            if role not in self._fds:
                pod = role == "pod"
                code = build_program(self.pods, self.local if pod else None,
                                     self.source_iif if pod else None)
                try:
                    self._fds[role] = _load(code, f"nf_fast_{role}")
                except BpfError as exc:
                    detail = f"\n{exc.log.strip()[-2000:]}" if exc.log else ""
                    raise KernelFeatureMissing(
                        "the eBPF tc fast path", f"{exc}{detail}") from exc
            return self._fds[role]

    def check(self) -> None:
        """Load both programs now, so an unsupported kernel is reported at start."""
        self._fd("uplink")
        self._fd("pod")

    def attach(self, ifname: str, role: str) -> None:
        """Attach (or replace) our ingress filter on ``ifname``; ``role`` is uplink|pod."""
        fd = self._fd(role)
        with ipr() as sock:
            found = sock.link_lookup(ifname=ifname)
            if not found:
                return
            index = found[0]
            try:
                try:
                    sock.tc("add", "clsact", index)
                except NetlinkError as exc:
                    if exc.code != 17:  # EEXIST: the hook is already there
                        raise
                _delete_filter(sock, index, self.prio)
                sock.tc("add-filter", "bpf", index, ":1", fd=fd, name=self.filter_name,
                        parent=_INGRESS, classid=1, direct_action=True, prio=self.prio)
            except NetlinkError as exc:
                raise BackendError(
                    f"cannot attach the fast path to {ifname}: {exc}",
                    fix="check `tc qdisc show dev IF` (a plain ingress qdisc blocks clsact), "
                        "or turn FastPath off") from exc
        self.attached.add(ifname)

    def forget(self, ifname: str) -> None:
        """``ifname`` was deleted (with its filter)."""
        self.attached.discard(ifname)

    def detach(self, ifname: str) -> None:
        """Remove our filter from ``ifname`` (other tc filters stay)."""
        self.attached.discard(ifname)
        with ipr() as sock:
            found = sock.link_lookup(ifname=ifname)
            if found:
                _delete_filter(sock, found[0], self.prio)

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "filter": self.filter_name, "devices": sorted(self.attached)}

    def close(self, *, detach: bool = True) -> None:
        """Release the programs; with ``detach`` also remove our filters (the
        attached filters keep the programs alive otherwise, so pods keep working)."""
        for ifname in sorted(self.attached) if detach else ():
            self.detach(ifname)
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _delete_filter(sock: Any, index: int, prio: int) -> None:
    try:
        sock.tc("del-filter", "bpf", index, ":1", parent=_INGRESS, prio=prio)
    except NetlinkError as exc:
        if exc.code not in (2, 22):  # ENOENT, EINVAL: nothing of ours there
            raise
