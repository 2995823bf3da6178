"""One network inside the agent: its Backend, IPAM and PolicyEngine, and its workloads."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs

from fabric.agent.records import (
    endpoint_from_record,
    endpoint_record,
    endpoint_to_result,
    workload_from_record,
)
from fabric.api import (
    IPAM,
    NODE_CONTAINER_ID,
    Backend,
    Endpoint,
    Handle,
    NetworkContext,
    Node,
    PeerEvent,
    PolicyEngine,
    Workload,
)
from fabric.errors import AgentUnavailable, BackendError, ConfigError, FabricError, NotFound
from fabric.fsutil import atomic_write
from fabric.net.workload import take_default_route
from fabric.plugins import load_plugin

__all__ = ["Network", "endpoint_to_result", "atomic_write_json", "network_context"]

log = logging.getLogger("fabric.agent")


def atomic_write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Replace ``path`` atomically (a crashed agent leaves the old or the new file);
    ``durable`` also survives a power loss (fsync: ~3 ms on this VM's ext4 /run)."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True), durable=durable)


class Network:
    """Lifecycle: ``start()`` -> add/delete/check/gc ... -> ``stop()`` or ``teardown()``."""

    def __init__(self, ctx: NetworkContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        backend_cls = load_plugin("backend", ctx.spec.backend)
        ipam_name = ctx.spec.ipam or backend_cls.default_ipam
        ipam_cls = load_plugin("ipam", ipam_name)
        policy_cls = load_plugin("policy", ctx.spec.policy)
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self.backend: Backend = backend_cls(ctx)
        self.ipam: IPAM = ipam_cls(ctx)
        self.policy: PolicyEngine = policy_cls(ctx)
        ctx.ipam = self.ipam  # backends may allocate node addresses (weave expose)
        self.ipam_name = ipam_name
        self.ready = False
        self.started_at: float | None = None
        self.last_peer_error: str | None = None
        self.peer_events = 0
        self._lock = threading.RLock()
        self._workloads_path = ctx.state_dir / "workloads.json"
        self._workloads: dict[str, dict[str, Any]] = self._load_workloads()

    # -- persistence of attached workloads (for CHECK, GC, policy, restarts) --
    def _load_workloads(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._workloads_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("network %s: ignoring unreadable %s: %s", self.spec.name,
                      self._workloads_path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_workloads(self) -> None:
        # No fsync (~3 ms per ADD under the lock): kill -9 keeps it (atomic rename); a power
        # loss ends every pod too, and the IPAM's own state is durable (no address twice).
        atomic_write_json(self._workloads_path, self._workloads, durable=False)

    # -- lifecycle --
    def start(self) -> None:
        data = self.backend.prepare()
        chunks = self.ipam.start(data)
        self.backend.start(chunks)
        self.policy.start()
        for rec in self._workloads.values():
            ep = endpoint_from_record(rec)
            if ep is not None:
                self._guard("policy endpoint_added", self.policy.endpoint_added, ep)
        if self.spec.ipmasq:
            from fabric.agent.masq import apply_masquerade

            apply_masquerade(self.spec.name, self.spec.cidr)
        self.ipam.subscribe(self._on_peers, self._on_chunks)
        self.ready = True
        self.started_at = time.time()
        self._write_subnet_env(chunks)

    def _write_subnet_env(self, chunks: tuple[IPv4Network, ...]) -> None:
        if not chunks or self.ipam_name == "ring":  # weave ranges are no per-node subnet
            return
        from fabric.ipam.subnet_env import write_subnet_env

        write_subnet_env(
            self.ctx.state_dir / "subnet.env",
            network=self.spec.cidr,
            subnet=chunks[0],
            mtu=self.mtu,
            ipmasq=self.spec.ipmasq,
        )

    @property
    def mtu(self) -> int:
        return self.spec.mtu or self.backend.mtu

    def _guard(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except FabricError as exc:
            log.error("network %s: %s failed: %s", self.spec.name, what, exc)
        except Exception:
            log.exception("network %s: %s failed", self.spec.name, what)

    def _on_peers(self, events: Sequence[PeerEvent]) -> None:
        self.peer_events += len(events)
        try:
            self.backend.peers_changed(events)
            self.last_peer_error = None
        except Exception as exc:  # a bad peer must not kill the watch thread
            self.last_peer_error = str(exc)
            log.error("network %s: applying peer events failed: %s", self.spec.name, exc)

    def _on_chunks(self, chunks: tuple[IPv4Network, ...]) -> None:
        self._guard("chunks_changed", self.backend.chunks_changed, chunks)

    def stop(self) -> None:
        """Graceful: threads stop, kernel state and leases stay."""
        self.ready = False
        for what, fn in (("policy", self.policy.stop), ("ipam", self.ipam.stop),
                         ("backend", self.backend.stop)):
            self._guard(f"{what} stop", fn)

    def teardown(self) -> None:
        """Remove workloads, rules, devices and give the chunks back."""
        self.ready = False
        for rec in list(self._workloads.values()):
            wl = workload_from_record(rec)
            self._guard("detach", self.backend.detach, wl)
        self._workloads.clear()
        self._save_workloads()
        for what, fn in (("policy", self.policy.teardown), ("ipam", self.ipam.teardown),
                         ("backend", self.backend.teardown)):
            self._guard(f"{what} teardown", fn)
        if self.spec.ipmasq:
            from fabric.agent.masq import remove_masquerade

            self._guard("masquerade removal", remove_masquerade, self.spec.name)
        (self.ctx.state_dir / "subnet.env").unlink(missing_ok=True)

    # -- CNI operations --
    def _require_ready(self) -> None:
        if not self.ready:
            raise AgentUnavailable(f"network {self.spec.name} is not ready yet", fix="retry")

    def add(self, workload: Workload, *, requested: IPv4Address | None = None,
            kernel_netns: str = "", default_route: bool = False) -> dict[str, Any]:
        """CNI ADD. ``requested``: static address; ``kernel_netns``: the agent's path to the
        pod's netns (a passed descriptor); ``default_route``: take it from other interfaces."""
        self._require_ready()
        kwl = _in_netns(workload, kernel_netns)
        with self._lock:
            alloc = self.ipam.allocate(workload.handle, *([requested] if requested else []))
            try:
                ep = self.backend.attach(kwl, alloc)
                if default_route and ep.gateway is not None:
                    ep = take_default_route(kwl, ep)
            except BaseException:
                if workload.handle.key() not in self._workloads:
                    self.ipam.release(workload.handle)
                raise
            ep = attrs.evolve(ep, workload=workload)  # results name the runtime's path
            self._workloads[workload.handle.key()] = endpoint_record(ep, alloc)
            self._save_workloads()
            try:
                # A pod that policy should isolate must not come up open: fail the ADD.
                self.policy.endpoint_added(ep)
            except BaseException:
                self._workloads.pop(workload.handle.key(), None)
                self._save_workloads()
                self._guard("rollback detach", self.backend.detach, kwl)
                self.ipam.release(workload.handle)
                raise
        return endpoint_to_result(ep)

    def delete(self, workload: Workload, *, kernel_netns: str = "") -> None:
        self._require_ready()
        with self._lock:
            rec = self._workloads.get(workload.handle.key())
            if rec is not None and not workload.netns:
                workload = workload_from_record(rec)
            self.backend.detach(_in_netns(workload, kernel_netns))
            self.ipam.release(workload.handle)
            if rec is not None:
                del self._workloads[workload.handle.key()]
                self._save_workloads()
        if rec is not None:
            ep = endpoint_from_record(rec)
            if ep is not None:
                self._guard("policy endpoint_removed", self.policy.endpoint_removed, ep)

    def check(self, workload: Workload, expected: dict[str, Any] | None = None, *,
              kernel_netns: str = "") -> None:
        """CNI CHECK: the record, the IPAM and the kernel agree (and match ``expected``)."""
        self._require_ready()
        rec = self._workloads.get(workload.handle.key())
        alloc = self.ipam.allocations().get(workload.handle)
        if rec is None or alloc is None:
            raise NotFound(f"container {workload.container_id} ({workload.ifname}) is not attached")
        if expected:
            want_ips = sorted(str(a) for a in expected.get("ips") or [])
            if want_ips and want_ips != sorted(rec["addresses"]):
                raise BackendError(f"runtime expects addresses {', '.join(want_ips)} but "
                                   f"{workload.ifname} has {', '.join(rec['addresses'])}")
            mac = expected.get("mac")
            if mac and rec.get("mac") and mac.lower() != rec["mac"].lower():
                raise BackendError(f"runtime expects MAC {mac} but {workload.ifname} has "
                                   f"{rec['mac']}")
        if str(alloc.ip) != rec.get("ip"):
            raise BackendError(f"IPAM holds {alloc.ip} for {workload.handle.key()} but the "
                               f"workload was given {rec.get('ip')}")
        self.backend.check(_in_netns(workload, kernel_netns), alloc)

    def gc(self, valid: set[Handle]) -> list[str]:
        """Release every attachment not in ``valid`` (CNI GC)."""
        self._require_ready()
        released = []
        with self._lock:
            known = {Handle.from_key(k) for k in self._workloads} | {
                h for h in self.ipam.allocations() if h.container_id != NODE_CONTAINER_ID}
            for handle in sorted(known - valid, key=lambda h: h.key()):
                rec = self._workloads.get(handle.key())
                wl = workload_from_record(rec) if rec else Workload(
                    handle.container_id, handle.ifname, ""
                )
                try:
                    self.backend.detach(wl)
                except BackendError as exc:
                    log.warning("gc: detaching %s: %s", handle.key(), exc)
                self.ipam.release(handle)
                self._workloads.pop(handle.key(), None)
                released.append(handle.key())
            self._save_workloads()
        return released

    def backend_op(self, name: str, req: dict[str, Any]) -> Any:
        """Run one of the backend's named operations (:meth:`Backend.operations`)."""
        self._require_ready()
        ops = self.backend.operations()
        fn = ops.get(name)
        if fn is None:
            raise ConfigError(
                f"backend {self.spec.backend} of network {self.spec.name} has no operation "
                f"{name!r}", fix=f"its operations: {', '.join(sorted(ops)) or 'none'}")
        args = req.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError("args must be a mapping")
        return fn(args)

    @property
    def lock(self) -> threading.RLock:
        """Held by every change to this network's workloads (CNI ops, relabels)."""
        return self._lock

    def set_workload_labels(self, key: str, labels: dict[str, str]) -> dict[str, str]:
        """Replace an attached workload's labels in its persisted record (a Kubernetes-style
        relabel); returns the previous labels. NotFound when it is not attached here."""
        with self._lock:
            rec = self._workloads.get(key)
            if rec is None:
                raise NotFound(f"pod {key} is not attached on this node")
            old = dict(rec.get("labels") or {})
            rec["labels"] = dict(labels)
            self._save_workloads()
            return old

    def endpoints(self) -> list[Endpoint]:
        return [ep for r in self._workloads.values() if (ep := endpoint_from_record(r))]

    def status(self) -> dict[str, Any]:
        def safe(fn):
            try:
                return fn()
            except Exception as exc:  # status must always answer
                return {"error": str(exc)}

        backend_status = safe(self.backend.status)
        ipam_status = safe(self.ipam.status)
        return {
            "name": self.spec.name,
            "backend": self.spec.backend,
            "ipam": self.ipam_name,
            "policy": self.spec.policy,
            "network": str(self.spec.cidr),
            "ready": self.ready,
            "mtu": safe(lambda: self.mtu),
            "chunks": [str(c) for c in safe(self.ipam.chunks) or ()] if self.ready else [],
            "workloads": len(self._workloads),
            "peer_events": self.peer_events,
            "last_peer_error": self.last_peer_error,
            # datastore records / peers kept from the kernel as invalid, with the reason
            "refused": [r for st in (ipam_status, backend_status) if isinstance(st, dict)
                        for k in ("refused", "refused_peers") for r in st.get(k) or []],
            "backend_status": backend_status,
            "ipam_status": ipam_status,
            "policy_status": safe(self.policy.status),
        }


def _in_netns(workload: Workload, kernel_netns: str) -> Workload:
    """``workload`` as the kernel helpers must see it (the agent's path to its netns)."""
    same = not kernel_netns or kernel_netns == workload.netns
    return workload if same else attrs.evolve(workload, netns=kernel_netns)


def network_context(spec, node: Node, state_dir: Path, store) -> NetworkContext:
    return NetworkContext(
        spec=spec,
        node=node,
        state_dir=state_dir / "networks" / spec.name,
        store=store,
        log=logging.getLogger(f"fabric.net.{spec.name}"),
    )
