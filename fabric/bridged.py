"""Base class for backend authors (public API): flannel-style backends with a node bridge, a
veth per pod and routes per peer.

A subclass says how to reach one peer (:meth:`BridgeBackend.program_peer` /
:meth:`unprogram_peer`); this class keeps the peer table, the bridge, the pod
veths (:class:`fabric.net.podveths.PodVeths`), status and teardown. (flannel's
``route_network.go`` idea: route-only backends share one helper.) Used by hostgw, vxlan
and flannel-udp.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from fabric.api import (
    Allocation,
    Backend,
    Endpoint,
    NetworkContext,
    Peer,
    PeerEvent,
    Route,
    Workload,
)
from fabric.errors import BackendError
from fabric.net.kernel import ipr, sysctl_set
from fabric.net.links import bridge_ports, delete_link, ensure_bridge, link_index, set_address
from fabric.net.podveths import PodVeths
from fabric.net.routes import delete_route, fabric_routes, replace_route
from fabric.net.validate import peer_problem
from fabric.net.workload import attach_bridged, check_pod

__all__ = ["BridgeBackend", "Watchdog", "route_is_direct"]


class Watchdog:
    """A daemon thread calling ``tick()`` every ``period`` s until stopped: ``tick`` checks a
    node device (or engine) and repairs it, returning True when it did. A BackendError from
    it is logged and tried again next period; ``repairs`` counts the repairs (for status)."""

    def __init__(self, name: str, period: float, tick: Callable[[], bool],
                 log: logging.Logger) -> None:
        self.name, self.period, self.tick, self.log = name, period, tick, log
        self.repairs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread (no-op while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                if self.tick():
                    self.repairs += 1
            except BackendError as exc:
                self.log.error("%s: repair failed: %s", self.name, exc)


def route_is_direct(dst: IPv4Address) -> bool:
    """True if ``dst`` is reachable on-link (same L2 segment), not through a router."""
    with ipr() as sock:
        try:
            routes = sock.route("get", dst=str(dst))
        except Exception as exc:  # unreachable: certainly not on-link
            raise BackendError(f"no route to {dst}: {exc}") from exc
    return not any(r.get_attr("RTA_GATEWAY") for r in routes)


class BridgeBackend(Backend):
    """Bridge ``<network>.br`` holding the first address of the node's subnet."""

    veth_prefix = "nfv"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.bridge = ctx.device_name("br")
        self.chunks: tuple[IPv4Network, ...] = ()
        self.peers: dict[IPv4Network, Peer] = {}
        self.peer_state: dict[IPv4Network, str] = {}
        self.refused: dict[IPv4Network, str] = {}  # peer records refused before the kernel
        self._lock = threading.RLock()
        self.pods = PodVeths(ctx, self.veth_prefix)
        self.fast = self.pods.fast  # option FastPath (fabric.net.fastpath)

    # -- subclass hooks --
    def program_peer(self, peer: Peer, subnet: IPv4Network) -> None:
        raise NotImplementedError

    def unprogram_peer(self, peer: Peer, subnet: IPv4Network) -> None:
        delete_route(subnet, gateway=peer.public_ip, dev=self.ctx.node.iface)

    def peer_problem(self, peer: Peer, subnet: IPv4Network) -> str | None:
        """Why this peer record must not reach the kernel (None: it may). Subclasses add
        their own BackendData checks."""
        return peer_problem((subnet,), peer.public_ip, peer.data, self.ctx.spec.cidr,
                            own=self.ctx.node.public_ip)

    def uplinks(self) -> list[str]:
        """Devices where pod traffic from other nodes arrives (for the fast path)."""
        return [self.ctx.node.iface]

    # -- node --
    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        if not chunks:
            raise BackendError("no subnet was assigned to this node")
        self.chunks = chunks
        sysctl_set("net/ipv4/ip_forward", 1)
        ensure_bridge(self.bridge, self.mtu)
        chunk = chunks[0]
        set_address(self.bridge, IPv4Interface(f"{next(chunk.hosts())}/{chunk.prefixlen}"))
        self._start_fast_path(chunk)
        # After a restart, peers that left meanwhile still have routes: once the IPAM has
        # delivered the current peers, remove what no longer belongs to one.
        timer = threading.Timer(self.reconcile_delay, self.reconcile)
        timer.daemon = True
        timer.start()

    reconcile_delay = 3.0

    def chunks_changed(self, chunks: tuple[IPv4Network, ...]) -> None:
        """The IPAM moved this node to another subnet (its lease went to another node): the
        bridge gets the new gateway so new pods work; the old gateway stays on the bridge
        so existing pods keep local connectivity until they are re-created."""
        if not chunks or chunks == self.chunks:
            return
        with self._lock:
            old, self.chunks = self.chunks, chunks
            chunk = chunks[0]
            set_address(self.bridge, IPv4Interface(f"{next(chunk.hosts())}/{chunk.prefixlen}"),
                        exclusive=False)
            if self.fast is not None:
                self.fast.local = chunk
        self.ctx.log.warning(
            "node subnet moved from %s to %s: new pods get %s (gateway %s); pods of %s keep "
            "only local connectivity until re-created", ", ".join(map(str, old)), chunk, chunk,
            next(chunk.hosts()), ", ".join(map(str, old)))

    def _start_fast_path(self, chunk: IPv4Network) -> None:
        if self.fast is not None:
            self.fast.local = chunk  # same-node pods stay switched by the bridge
            bridge = link_index(self.bridge)
            self.fast.source_iif = bridge or 0  # pods' sources route back via the bridge
        self.pods.start(self.uplinks(), bridge_ports(self.bridge))

    def reconcile(self) -> None:
        """Delete our routes into the network that match no current peer."""
        with self._lock:
            wanted = set(self.peers)
            try:
                for r in fabric_routes():
                    dst = r["dst"]
                    if dst.subnet_of(self.ctx.spec.cidr) and dst not in wanted and (
                        dst not in self.chunks and r["type"] != 6
                    ):
                        self.ctx.log.info("removing stale route %s", dst)
                        delete_route(dst, gateway=r["gateway"], dev=r["dev"])
            except BackendError as exc:
                self.ctx.log.warning("reconcile failed: %s", exc)

    def peers_changed(self, events: Sequence[PeerEvent]) -> None:
        with self._lock:
            for ev in events:
                for subnet in ev.peer.subnets:
                    if subnet in self.chunks:
                        continue  # our own lease, seen through the watch
                    if ev.kind == "removed":
                        old = self.peers.pop(subnet, None)
                        self.peer_state.pop(subnet, None)
                        self.refused.pop(subnet, None)
                        if old is not None:
                            self.unprogram_peer(old, subnet)
                        continue
                    if why := self.peer_problem(ev.peer, subnet):
                        # refused before the kernel; a previously valid peer stays programmed
                        if self.refused.get(subnet) != why:
                            self.ctx.log.error("peer %s (%s) refused: %s", ev.peer.public_ip,
                                               subnet, why)
                        self.refused[subnet] = why
                        continue
                    self.refused.pop(subnet, None)
                    old = self.peers.get(subnet)
                    if old is not None and old != ev.peer:
                        self.unprogram_peer(old, subnet)
                    self.peers[subnet] = ev.peer
                    try:
                        self.program_peer(ev.peer, subnet)
                        self.peer_state[subnet] = "ok"
                    except BackendError as exc:
                        self.peer_state[subnet] = f"refused: {exc}"
                        self.ctx.log.error("peer %s (%s): %s", ev.peer.public_ip, subnet, exc)

    def reprogram_all(self) -> None:
        with self._lock:
            for subnet, peer in self.peers.items():
                try:
                    self.program_peer(peer, subnet)
                    self.peer_state[subnet] = "ok"
                except BackendError as exc:
                    self.peer_state[subnet] = f"refused: {exc}"

    # -- workloads --
    def attach(self, workload: Workload, allocation: Allocation) -> Endpoint:
        chunk = allocation.chunk
        gateway = next(chunk.hosts())
        address = IPv4Interface(f"{allocation.ip}/{chunk.prefixlen}")
        host, pod = self.pods.plug(workload, lambda host: attach_bridged(
            workload, bridge=self.bridge, host=host, address=address, gateway=gateway,
            mtu=self.mtu))
        return Endpoint(
            workload=workload, host_ifname=host, mac=pod.mac, addresses=(address,),
            gateway=gateway, mtu=self.mtu,
            # no default route when another interface of the pod owns it (fabric.net.workload)
            routes=(Route(IPv4Network("0.0.0.0/0"), gateway),) if pod.default_gateway else (),
        )

    def detach(self, workload: Workload) -> None:
        self.pods.unplug(workload)

    def check(self, workload: Workload, allocation: Allocation) -> None:
        want = IPv4Interface(f"{allocation.ip}/{allocation.chunk.prefixlen}")
        check_pod(workload, want, next(allocation.chunk.hosts()))
        with ipr() as sock:
            host = sock.link_lookup(ifname=self.pods.host(workload))
            bridge = sock.link_lookup(ifname=self.bridge)
            if not host or not bridge:
                raise BackendError("host-side veth or bridge is missing")
            if sock.get_links(host[0])[0].get_attr("IFLA_MASTER") != bridge[0]:
                raise BackendError(f"host veth is not on bridge {self.bridge}")

    # -- status and teardown --
    def status(self) -> dict[str, Any]:
        with self._lock:
            peers = [
                {"name": p.name, "public_ip": str(p.public_ip), "subnets": [str(s)],
                 "state": self.peer_state.get(s, "?")}
                for s, p in sorted(self.peers.items())
            ]
            refused = [{"subnet": str(s), "reason": why} for s, why in sorted(self.refused.items())]
        return {"bridge": self.bridge, "peers": peers, "refused_peers": refused,
                "fast_path": self.pods.status()}

    def remove_routes(self) -> None:
        """Delete every route we installed into this network's CIDR (also after a crash)."""
        for r in fabric_routes():
            if r["dst"].subnet_of(self.ctx.spec.cidr) and r["type"] != 6:
                delete_route(r["dst"], gateway=r["gateway"], dev=r["dev"])

    def stop(self) -> None:
        self.pods.stop()

    def teardown(self) -> None:
        self.pods.teardown(self.uplinks())
        self.remove_routes()
        delete_link(self.bridge)

    def onlink_route(self, dst: IPv4Network, gateway: IPv4Address, dev: str) -> None:
        replace_route(dst, gateway=gateway, dev=dev, onlink=True, within=self.ctx.spec.cidr)
