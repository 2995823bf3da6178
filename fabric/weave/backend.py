"""``WeaveBackend``: what weave-sleeve and weave-fastdp share, as a public base class.

The lifecycle, in the agent's order (see :mod:`fabric.api`):

``prepare``  start the gossip mesh (:class:`~fabric.weave.control.WeaveControl`) and hand it
             to the ``ring`` IPAM through ``ctx.mesh`` — no datastore anywhere
``start``    the node bridge with its pinned MAC; the ``expose`` address (a node-owned
             IPAM handle, so the ring never gives it to a pod); the overlays (subclass:
             :meth:`start_overlays`); weaveDNS on the bridge address
``attach``   a veth bridged to the node bridge, address in the network's one flat subnet,
             gateway = this node's expose address; the pod's DNS name is registered
``stop``     overlays and mesh stop; bridge, pods and TAP devices stay for the next start
``teardown`` everything removed, mesh state forgotten

A subclass provides the data path(s): :meth:`start_overlays`, :meth:`overlay_overhead`,
:meth:`overlay_status`, :meth:`stop_overlays`, :meth:`teardown_overlays`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from fabric.api import (
    NODE_CONTAINER_ID,
    Allocation,
    Backend,
    Capabilities,
    Endpoint,
    Handle,
    NetworkContext,
    PeerEvent,
    Route,
    Workload,
)
from fabric.errors import BackendError, ConfigError
from fabric.mesh.names import fmt_name, parse_name
from fabric.net import attach_bridged, check_pod, detach_veth, host_ifname, sysctl_set
from fabric.weave.bridge import WeaveBridge, stable_mac
from fabric.weave.control import WeaveControl
from fabric.weave.options import WeaveOptions

__all__ = ["WeaveBackend", "EXPOSE_HANDLE"]

EXPOSE_HANDLE = Handle(NODE_CONTAINER_ID, "expose")


class WeaveBackend(Backend):
    default_ipam = "ring"
    default_network = "10.32.0.0/12"  # weave's default IP allocation range
    capabilities = Capabilities(encryption=True, multicast=True, userspace=True)
    veth_prefix = "nfw"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.opts = WeaveOptions.parse(ctx.spec.backend_config, ctx.device_name("br"))
        self.control = WeaveControl(ctx, self.opts)
        self.bridge = WeaveBridge(self.opts.bridge,
                                  stable_mac("weave-bridge", ctx.spec.name, ctx.node.name))
        self.dns: Any = None
        self.expose_ip: IPv4Address | None = None
        self.ipam_peers: dict[str, Any] = {}
        self._lock = threading.RLock()

    # ---- subclass hooks ---------------------------------------------------------------
    def overlay_overhead(self) -> int:
        """Bytes of encapsulation on the underlay for the worst path a pod frame may take."""
        raise NotImplementedError

    def start_overlays(self) -> None:
        raise NotImplementedError

    def overlay_status(self) -> dict[str, Any]:
        return {}

    def connection_modes(self) -> dict[int, str]:
        """Peer name -> data-path mode (``sleeve``, ``fastdp``...) and state, for status."""
        return {}

    def stop_overlays(self) -> None: ...

    def teardown_overlays(self) -> None: ...

    # ---- lifecycle --------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        return self.ctx.spec.mtu or self.ctx.node.mtu - self.overlay_overhead()

    def prepare(self) -> dict[str, Any]:
        self.ctx.mesh = self.control.start()
        return {}

    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        sysctl_set("net/ipv4/ip_forward", 1)  # host-to-pod and ipMasq traffic is routed
        self.bridge.ensure(self.mtu)
        if self.ctx.ipam is None:
            raise BackendError("the weave backend needs the network's IPAM for its expose address")
        alloc = self.ctx.ipam.allocate(EXPOSE_HANDLE)
        self.expose_ip = alloc.ip
        self.bridge.expose(alloc.ip, self.ctx.spec.cidr.prefixlen)
        self.start_overlays()
        if self.opts.dns:
            self.dns = self._start_dns(alloc.ip)

    def _start_dns(self, ip: IPv4Address) -> Any:
        from fabric.weave.dns_glue import start_dns

        return start_dns(self, ip)

    def peers_changed(self, events: Sequence[PeerEvent]) -> None:
        # The mesh view drives the data path (WeaveControl.subscribe); the IPAM's peer
        # events (ring ranges per peer) are kept for status only.
        with self._lock:
            for ev in events:
                if ev.kind == "removed":
                    self.ipam_peers.pop(ev.peer.name, None)
                else:
                    self.ipam_peers[ev.peer.name] = [str(s) for s in ev.peer.subnets]

    # ---- workloads --------------------------------------------------------------------
    def _address(self, ip: IPv4Address) -> IPv4Interface:
        return IPv4Interface(f"{ip}/{self.ctx.spec.cidr.prefixlen}")

    def attach(self, workload: Workload, allocation: Allocation) -> Endpoint:
        if allocation.ip not in self.ctx.spec.cidr:
            raise BackendError(f"address {allocation.ip} is outside {self.ctx.spec.cidr}")
        gateway = self.expose_ip
        address = self._address(allocation.ip)
        host = host_ifname(self.veth_prefix, workload)
        if gateway is None:
            raise BackendError("the node bridge has no address yet", fix="retry")
        pod = attach_bridged(workload, bridge=self.bridge.name, host=host, address=address,
                             gateway=gateway, mtu=self.mtu)
        dns: dict[str, Any] = {}
        if self.dns is not None:
            dns = self.dns.register(workload, allocation.ip)
        return Endpoint(workload=workload, host_ifname=host, mac=pod.mac, addresses=(address,),
                        gateway=gateway, routes=(Route(IPv4Network("0.0.0.0/0"), gateway),),
                        mtu=self.mtu, dns=dns)

    def detach(self, workload: Workload) -> None:
        detach_veth(host_ifname(self.veth_prefix, workload), workload)
        if self.dns is not None:
            self.dns.unregister(workload)

    def check(self, workload: Workload, allocation: Allocation) -> None:
        if self.expose_ip is None:
            raise BackendError("the node bridge has no address")
        check_pod(workload, self._address(allocation.ip), self.expose_ip)

    # ---- status and operations --------------------------------------------------------
    def status(self) -> dict[str, Any]:
        if self.control.node is None:
            return {"running": False}
        mesh = self.control.describe()
        modes = self.connection_modes()
        for conn in mesh["connections"]:
            if conn.get("peer"):
                mode = modes.get(parse_name(conn["peer"]))
                if mode:
                    conn["mode"] = mode
        out: dict[str, Any] = {
            "router": "weave",
            "bridge": self.bridge.name,
            "expose": str(self.bridge.address()),
            "mtu": self.mtu,
            "mtu_reason": self.mtu_reason(),
            "mesh": mesh,
            "overlay": self.overlay_status(),
            "ipam_peers": dict(self.ipam_peers),
        }
        if self.dns is not None:
            out["dns"] = self.dns.status()
        return out

    def mtu_reason(self) -> str:
        if self.ctx.spec.mtu:
            return f"forced to {self.ctx.spec.mtu} by the network config"
        return (f"underlay {self.ctx.node.mtu} - {self.overlay_overhead()} bytes of "
                f"encapsulation")

    def operations(self) -> Mapping[str, Callable[[Mapping[str, Any]], Any]]:
        ops: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "connect": lambda a: {"targets": self.control.connect(_hosts(a))},
            "forget": lambda a: {"targets": self.control.forget(_hosts(a))},
            "rmpeer": self._rmpeer,
        }
        if self.dns is not None:
            ops.update(self.dns.operations())
        return ops

    def _rmpeer(self, args: Mapping[str, Any]) -> Any:
        name = args.get("peer")
        if not isinstance(name, str):
            raise ConfigError("rmpeer needs a peer name", field="peer",
                              fix="fabric weave rmpeer aa:bb:cc:dd:ee:ff (see fabric weave status)")
        peer = parse_name(name)
        rmpeer = getattr(self.ctx.ipam, "rmpeer", None)
        freed = rmpeer(fmt_name(peer)) if rmpeer is not None else 0
        if self.dns is not None:
            self.dns.remove_peer(peer)
        return {"peer": fmt_name(peer), "addresses_reclaimed": freed}

    def stop(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        self.stop_overlays()
        self.control.stop()

    def teardown(self) -> None:
        if self.dns is not None:
            self.dns.teardown()
            self.dns = None
        # also on a fresh instance (offline teardown): weaveDNS's saved records go too
        (self.ctx.state_dir / "dns.json").unlink(missing_ok=True)
        self.teardown_overlays()
        self.bridge.teardown()
        self.control.teardown()


def _hosts(args: Mapping[str, Any]) -> list[str]:
    hosts = args.get("hosts")
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ConfigError("give one or more hosts (HOST or HOST:PORT)", field="hosts")
    return hosts
