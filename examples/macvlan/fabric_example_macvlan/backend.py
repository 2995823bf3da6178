"""macvlan backend: each pod gets a macvlan sub-interface of the node's underlay interface.

An example of a backend written outside netfabric, against the contract in
``fabric.api`` only (plus ``fabric.errors``). Pods sit directly on the underlay's L2
segment with an address from their node's subnet (the ``subnet`` IPAM: one lease per
node in etcd) and the whole network's prefix, so every pod reaches every other pod
on-link: no routes, no bridge, no encapsulation, nothing to do when peers come and go.

Limits, as for the CNI macvlan plugin: all nodes share one L2 segment (``needs_l2``);
a node cannot reach its own pods through the parent interface (the kernel does not
switch between a macvlan and its parent); the underlay must accept several MACs per
port.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from fabric.api import (
    Allocation,
    Backend,
    Capabilities,
    Endpoint,
    NetworkContext,
    Peer,
    PeerEvent,
    Workload,
)
from fabric.errors import BackendError
from fabric_example_macvlan import pod
from fabric_example_macvlan.options import MacvlanOptions

__all__ = ["MacvlanBackend"]


class MacvlanBackend(Backend):
    """``fabric up --backend macvlan [--backend-opt Mode=vepa]``."""

    name = "macvlan"
    default_ipam = "subnet"
    capabilities = Capabilities(needs_l2=True)

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.options = MacvlanOptions.parse(ctx.spec.backend_config)  # fails at `fabric up`
        self.chunks: tuple[IPv4Network, ...] = ()
        self.peers: dict[str, Peer] = {}  # by public IP, for status only
        self._lock = threading.Lock()  # peers_changed arrives from a control-plane thread

    @property
    def mtu(self) -> int:
        return self.ctx.spec.mtu or self.ctx.node.mtu  # no encapsulation: the parent's MTU

    def prepare(self) -> dict[str, Any]:
        return {"Mode": self.options.mode}  # published with this node's lease

    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        self.chunks = chunks

    def chunks_changed(self, chunks: tuple[IPv4Network, ...]) -> None:
        self.chunks = chunks

    def peers_changed(self, events: Sequence[PeerEvent]) -> None:
        # Pods of other nodes are on-link: a peer needs no kernel state, only bookkeeping.
        with self._lock:
            for ev in events:
                if ev.kind == "added":
                    self.peers[str(ev.peer.public_ip)] = ev.peer
                else:
                    self.peers.pop(str(ev.peer.public_ip), None)

    def _address(self, allocation: Allocation) -> IPv4Interface:
        # the network's prefix, not the node's chunk: other nodes' pods are on-link
        return IPv4Interface(f"{allocation.ip}/{self.ctx.spec.cidr.prefixlen}")

    def _endpoint(self, workload: Workload, link: pod.PodLink) -> Endpoint:
        return Endpoint(workload=workload, host_ifname=self.ctx.node.iface, mac=link.mac,
                        addresses=link.addresses, gateway=None, routes=(), mtu=link.mtu)

    def attach(self, workload: Workload, allocation: Allocation) -> Endpoint:
        address = self._address(allocation)
        link = pod.read(workload.netns, workload.ifname)
        if link is None:
            pod.create(self.ctx.node.iface, workload.netns, workload.ifname,
                       self.options.mode, address, self.mtu)
            link = pod.read(workload.netns, workload.ifname)
            if link is None:
                raise BackendError(f"macvlan {workload.ifname} vanished from {workload.netns}")
        elif link.kind != "macvlan" or address not in link.addresses:
            # CNI code 100 in `fabric-cni`: a BackendError whose field is "ifname"
            raise BackendError(f"interface {workload.ifname} already exists in "
                               f"{workload.netns}", field="ifname",
                               fix="choose another CNI_IFNAME, or DEL the attachment that made it")
        return self._endpoint(workload, link)  # an ADD retried finds its own interface

    def detach(self, workload: Workload) -> None:
        pod.delete(workload.netns, workload.ifname)

    def check(self, workload: Workload, allocation: Allocation) -> None:
        link = pod.read(workload.netns, workload.ifname)
        if link is None or link.kind != "macvlan":
            raise BackendError(f"no macvlan {workload.ifname} in {workload.netns}",
                               fix="DEL and ADD the pod again")
        if self._address(allocation) not in link.addresses:
            raise BackendError(f"{workload.ifname} lacks {self._address(allocation)}",
                               fix="DEL and ADD the pod again")

    def status(self) -> dict[str, Any]:
        return {"parent": self.ctx.node.iface, "mode": self.options.mode,
                "chunks": [str(c) for c in self.chunks], "peers": sorted(self.peers)}

    def stop(self) -> None:
        """Nothing runs in the background; pods keep their interfaces."""

    def teardown(self) -> None:
        """No node-level devices; each pod's macvlan goes with its DEL or its namespace."""
