"""In-memory ``fake`` backend and IPAM, for unit tests of the core only.

They touch no kernel and no datastore: the fake IPAM shares an in-process
"cluster" between instances with the same etcd prefix, so several fake agents
in one test process see each other as peers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from fabric.api import (
    IPAM,
    Allocation,
    Backend,
    Endpoint,
    Handle,
    NetworkContext,
    Peer,
    PeerEvent,
    PeersCallback,
    Route,
    Workload,
)
from fabric.errors import BackendError, ConfigError, IPAMError, PoolExhausted

__all__ = ["FakeBackend", "FakeIPAM", "reset_fake_cluster"]

_CLUSTER: dict[str, dict[IPv4Network, Peer]] = {}
_WATCHERS: dict[str, list[tuple[str, PeersCallback]]] = {}
_LOCK = threading.Lock()


def reset_fake_cluster() -> None:
    with _LOCK:
        _CLUSTER.clear()
        _WATCHERS.clear()


class FakeIPAM(IPAM):
    name = "fake"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self._chunk: IPv4Network | None = None
        self._allocs: dict[Handle, Allocation] = {}
        self._lock = threading.Lock()

    def start(self, backend_data: Mapping[str, Any]) -> tuple[IPv4Network, ...]:
        spec, node = self.ctx.spec, self.ctx.node
        with _LOCK:
            leases = _CLUSTER.setdefault(spec.prefix, {})
            mine = [s for s, p in leases.items() if p.name == node.name]
            if mine:
                self._chunk = mine[0]
            else:
                for sub in spec.cidr.subnets(new_prefix=spec.subnet_len):
                    if sub not in leases and sub.network_address != spec.cidr.network_address:
                        self._chunk = sub
                        break
                else:
                    raise PoolExhausted(f"no free subnet left in {spec.cidr}")
            peer = Peer(node.name, node.public_ip, (self._chunk,), spec.backend, dict(backend_data))
            leases[self._chunk] = peer
            watchers = list(_WATCHERS.get(spec.prefix, []))
        for name, cb in watchers:
            if name != node.name:
                cb([PeerEvent("added", peer)])
        return (self._chunk,)

    def subscribe(self, on_peers: PeersCallback, on_chunks=None) -> None:
        spec, node = self.ctx.spec, self.ctx.node
        with _LOCK:
            _WATCHERS.setdefault(spec.prefix, []).append((node.name, on_peers))
            peers = [p for p in _CLUSTER.get(spec.prefix, {}).values() if p.name != node.name]
        on_peers([PeerEvent("added", p) for p in peers])

    def chunks(self) -> tuple[IPv4Network, ...]:
        return (self._chunk,) if self._chunk else ()

    def allocate(self, handle: Handle, requested: IPv4Address | None = None) -> Allocation:
        with self._lock:
            have = self._allocs.get(handle)
            if have is not None and requested not in (None, have.ip):
                raise IPAMError(f"{handle.key()} already holds {have.ip}")
            if have is not None:
                return have
            assert self._chunk is not None, "start() first"
            used = {a.ip for a in self._allocs.values()}
            hosts = list(self._chunk.hosts())[1:]  # first host is the gateway
            if requested is not None:  # the same contract as the real IPAMs (fabric.api)
                if requested not in self._chunk:
                    raise ConfigError(f"requested address {requested} is outside this node's "
                                      f"chunks ({self._chunk})", field="ips")
                if requested not in hosts:
                    raise ConfigError(f"requested address {requested} is the network, gateway "
                                      f"or broadcast address of {self._chunk}", field="ips")
                holder = next((h for h, a in self._allocs.items() if a.ip == requested), None)
                if holder is not None:
                    raise IPAMError(f"requested address {requested} is in use by {holder.key()}")
                hosts = [requested]
            for ip in hosts:
                if ip not in used:
                    alloc = Allocation(handle, ip, self._chunk)
                    self._allocs[handle] = alloc
                    return alloc
            raise PoolExhausted(f"no free address left in {self._chunk}")

    def release(self, handle: Handle) -> Allocation | None:
        with self._lock:
            return self._allocs.pop(handle, None)

    def allocations(self) -> dict[Handle, Allocation]:
        with self._lock:
            return dict(self._allocs)

    def status(self) -> dict[str, Any]:
        return {"chunk": str(self._chunk), "allocations": len(self._allocs)}

    def teardown(self) -> None:
        spec, node = self.ctx.spec, self.ctx.node
        with _LOCK:
            leases = _CLUSTER.get(spec.prefix, {})
            peer = leases.pop(self._chunk, None) if self._chunk else None
            watchers = list(_WATCHERS.get(spec.prefix, []))
            _WATCHERS[spec.prefix] = [w for w in watchers if w[0] != node.name]
        if peer is not None:
            for name, cb in watchers:
                if name != node.name:
                    cb([PeerEvent("removed", peer)])
        self._allocs.clear()


class FakeBackend(Backend):
    name = "fake"
    default_ipam = "fake"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.peers: dict[str, Peer] = {}
        self.endpoints: dict[Handle, Endpoint] = {}
        self.chunks: tuple[IPv4Network, ...] = ()
        self.torn_down = False
        self._lock = threading.Lock()
        if "fail" in ctx.spec.backend_config:
            raise BackendError(f"fake backend told to fail: {ctx.spec.backend_config['fail']}")

    @property
    def mtu(self) -> int:
        return self.ctx.node.mtu

    def prepare(self) -> dict[str, Any]:
        return {"FakeMAC": "02:00:00:00:00:01"}

    def start(self, chunks: tuple[IPv4Network, ...]) -> None:
        if "config_error" in self.ctx.spec.backend_config:  # a fatal start error naming a field
            raise ConfigError("fake backend: bad option at start",
                              field=str(self.ctx.spec.backend_config["config_error"]))
        self.chunks = chunks

    def peers_changed(self, events: Sequence[PeerEvent]) -> None:
        with self._lock:
            for ev in events:
                if ev.kind == "added":
                    self.peers[ev.peer.name] = ev.peer
                else:
                    self.peers.pop(ev.peer.name, None)

    def attach(self, workload: Workload, allocation: Allocation) -> Endpoint:
        gateway = next(allocation.chunk.hosts())
        ep = Endpoint(
            workload=workload,
            host_ifname=f"fake{len(self.endpoints)}",
            mac="02:00:00:00:00:02",
            addresses=(IPv4Interface(f"{allocation.ip}/{allocation.chunk.prefixlen}"),),
            gateway=gateway,
            routes=(Route(IPv4Network("0.0.0.0/0"), IPv4Address(gateway)),),
            mtu=self.mtu,
        )
        with self._lock:
            self.endpoints[workload.handle] = ep
        return ep

    def detach(self, workload: Workload) -> None:
        with self._lock:
            self.endpoints.pop(workload.handle, None)

    def check(self, workload: Workload, allocation: Allocation) -> None:
        if workload.handle not in self.endpoints:
            raise BackendError(f"workload {workload.container_id} is not attached")

    def status(self) -> dict[str, Any]:
        return {"peers": sorted(self.peers), "endpoints": len(self.endpoints)}

    def teardown(self) -> None:
        self.torn_down = True
        self.endpoints.clear()
