"""PolicyEngine ``nftables``: NetworkPolicy enforced by one nftables table per network.

Runs in the agent, inside the node's network namespace. Every change (policy set,
pod added/removed, a remote pod's labels) recompiles the desired state and applies
only the difference in one ``nft -j -f -`` transaction; if nft fails, the previous
rules stay in force and the error is raised (and shown in status).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, ClassVar

from fabric.api import Endpoint, NetworkContext, PolicyEngine
from fabric.errors import FabricError, PolicyError
from fabric.policy.compile import (
    MARK_GENERATIONS,
    Compiled,
    EndpointInfo,
    compile_policies,
    table_name,
)
from fabric.policy.model import Namespace, NetworkPolicy, declared_ports
from fabric.policy.nftstate import NftState, delete_batch, diff_batch, list_counters, run_nft
from fabric.policy.nftstate import nft_binary as _nft_binary
from fabric.policy.peers import EndpointDirectory

__all__ = ["NftablesPolicy", "endpoint_info", "NO_STORE"]

NO_STORE = ("no datastore: selectors see this node's pods only; pods on other nodes match "
            "no podSelector/namespaceSelector (use an ipBlock for them)")


def _bridge_of(ifname: str) -> tuple[str, str]:
    """(bridge name, bridge MAC) the host interface is enslaved to, or ("", "")."""
    if not ifname:
        return "", ""
    try:
        from fabric.net.kernel import ipr

        with ipr() as sock:
            idx = sock.link_lookup(ifname=ifname)
            if not idx:
                return "", ""
            master = sock.get_links(idx[0])[0].get_attr("IFLA_MASTER")
            if not master:
                return "", ""
            br = sock.get_links(master)[0]
            info = br.get_attr("IFLA_LINKINFO")
            if not info or info.get_attr("IFLA_INFO_KIND") != "bridge":
                return "", ""
            return br.get_attr("IFLA_IFNAME"), br.get_attr("IFLA_ADDRESS")
    except Exception:  # kernel lookup failed: treat as routed
        return "", ""


def _sysctl(path: str) -> str:
    """A sysctl of the agent's network namespace ("" when absent)."""
    try:
        return (Path("/proc/sys") / path).read_text().strip()
    except OSError:
        return ""


def endpoint_info(ep: Endpoint, node: str = "") -> EndpointInfo:
    wl = ep.workload
    bridge, mac = _bridge_of(ep.host_ifname)
    return EndpointInfo(
        key=wl.handle.key(), addresses=tuple(a.ip for a in ep.addresses),
        namespace=wl.namespace or "default",
        labels=tuple(sorted((str(k), str(v)) for k, v in dict(wl.labels).items())),
        name=wl.name, host_ifname=ep.host_ifname, bridge=bridge, bridge_mac=mac, node=node)


class NftablesPolicy(PolicyEngine):
    name: ClassVar[str] = "nftables"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.table = table_name(ctx.spec.name)
        self.policies: tuple[NetworkPolicy, ...] = ()
        self.namespaces: dict[str, Namespace] = {}
        self.local: dict[str, EndpointInfo] = {}
        self.remote: dict[str, EndpointInfo] = {}
        self.applied: NftState | None = None
        self.compiled: Compiled | None = None
        self.last_error: str | None = None
        self.last_apply_ms: float | None = None
        self.transactions = 0
        # rule generation stamped into ct marks; random start so marks left by a previous
        # agent run never pass for current ones
        self.generation = secrets.randbelow(MARK_GENERATIONS - 1) + 1
        self._lock = threading.RLock()
        self._directory: EndpointDirectory | None = None

    # -- lifecycle --
    def start(self) -> None:
        _nft_binary()
        from fabric.policy.service import load_saved

        with self._lock:
            self._split(load_saved(self.ctx.state_dir))
            self._preload_workloads()
            self.applied = None  # whatever is in the kernel is replaced in one go
            self.apply()
        if self.ctx.store is not None:
            self._directory = EndpointDirectory(self.ctx.store, self.ctx.spec.prefix,
                                                self.ctx.node.name, self._remote_changed)
            self._directory.start(set(self.local))
            for ep in self.local.values():
                self._directory.publish(ep)

    def _preload_workloads(self) -> None:
        """Endpoints the agent persisted: the first transaction already covers them."""
        path = self.ctx.state_dir / "workloads.json"
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        for key, rec in (records.items() if isinstance(records, dict) else ()):
            try:
                bridge, mac = _bridge_of(rec.get("host_ifname", ""))
                self.local[key] = EndpointInfo(
                    key=key, addresses=tuple(IPv4Address(a.split("/")[0])
                                             for a in rec["addresses"]),
                    namespace=rec.get("namespace") or "default",
                    labels=tuple(sorted(dict(rec.get("labels") or {}).items())),
                    name=rec.get("name", ""), host_ifname=rec.get("host_ifname", ""),
                    bridge=bridge, bridge_mac=mac)
            except (KeyError, ValueError, TypeError, AttributeError):
                self.ctx.log.warning("policy: ignoring workload record %s", key)

    def stop(self) -> None:
        if self._directory is not None:
            self._directory.stop()

    def teardown(self) -> None:
        self.stop()
        if self._directory is not None:
            for key in list(self.local):
                self._directory.unpublish(key)
        with self._lock:
            run_nft(delete_batch(self.table))
            self.applied = None
            self.local.clear()

    # -- changes --
    def _split(self, objects: Sequence[Any]) -> None:
        self.policies = tuple(o for o in objects if isinstance(o, NetworkPolicy))
        self.namespaces = {o.name: o for o in objects if isinstance(o, Namespace)}

    def apply(self) -> None:
        """Compile and apply the difference in one transaction (caller holds the lock)."""
        with self._lock:
            compiled = self._compile(self.generation)
            if self.applied is not None and compiled.state == self.applied:
                self.compiled = compiled
                return
            # anything changed: a new generation, so established connections are re-judged
            generation = self.generation % (MARK_GENERATIONS - 1) + 1
            compiled = self._compile(generation)
            t0 = time.perf_counter()
            try:
                try:
                    run_nft(diff_batch(self.applied, compiled.state))
                except PolicyError:
                    if self.applied is None:
                        raise
                    # the kernel drifted from what we think (table removed by hand...): rebuild
                    run_nft(diff_batch(None, compiled.state))
            except FabricError as exc:
                self.last_error = str(exc)
                raise
            self.generation = generation
            self.last_apply_ms = round((time.perf_counter() - t0) * 1000, 2)
            self.transactions += 1
            self.last_error = None
            self.applied = compiled.state
            self.compiled = compiled

    def _compile(self, generation: int) -> Compiled:
        return compile_policies(self.ctx.spec.name, self.policies, self.namespaces,
                                sorted(self.local.values(), key=lambda e: e.key),
                                sorted(self.remote.values(), key=lambda e: e.key), generation,
                                self.ctx.spec.cidr)

    def set_policies(self, policies: Sequence[Any]) -> None:
        with self._lock:
            old = (self.policies, self.namespaces)
            self._split(policies)
            try:
                self.apply()
            except FabricError:
                self.policies, self.namespaces = old
                raise

    def endpoint_added(self, endpoint: Endpoint) -> None:
        """A pod attached, re-attached or relabelled: (re)compile with it."""
        try:
            declared_ports(endpoint.workload.labels)
        except ValueError as exc:
            raise PolicyError(f"pod {endpoint.workload.name or endpoint.workload.container_id}"
                              f": {exc}", fix="fix the pod's port.netfabric.io/ labels") from exc
        info = endpoint_info(endpoint, self.ctx.node.name)
        with self._lock:
            self.local[info.key] = info
            self.apply()
        if self._directory is not None:
            self._directory.publish(info)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        key = endpoint.workload.handle.key()
        with self._lock:
            if self.local.pop(key, None) is None:
                return
            self.apply()
        if self._directory is not None:
            self._directory.unpublish(key)

    def _remote_changed(self, remote: dict[str, EndpointInfo]) -> None:
        with self._lock:
            self.remote = remote
            try:
                self.apply()
            except FabricError as exc:
                self.ctx.log.error("policy: applying remote endpoint change: %s", exc)

    # -- reporting --
    def explain_notes(self) -> list[str]:
        """How this engine enforces, in words ``policy explain`` shows (kept true by tests)."""
        brnf = _sysctl("net/bridge/bridge-nf-call-iptables")
        return [
            "same-host traffic to or from an isolated pod is routed through this node's "
            "forward hook with conntrack, so replies pass whatever "
            f"net.bridge.bridge-nf-call-iptables is (here {brnf or 'absent'})",
            "policy changes apply to established connections too: each is re-checked by its "
            "original direction at its next packet and dropped if the rules now forbid it "
            "(a TCP connection tracked only from mid-stream, e.g. open before the pod was "
            "isolated, must be allowed in both directions)",
        ] + ([NO_STORE] if self.ctx.store is None else [])

    def drop_counters(self) -> dict[str, Any]:
        """Drops per policy and per endpoint, by direction."""
        compiled = self.compiled
        out: dict[str, Any] = {"policies": {}, "endpoints": {}}
        if compiled is None:
            return out
        names = {k: ep.display for k, ep in self.local.items()}
        for cname, c in list_counters(self.table).items():
            meta = compiled.counters.get(cname)
            if meta is None:
                continue
            kind, key, direction = meta
            label = key if kind == "policy" else names.get(key, key)
            group = "policies" if kind == "policy" else "endpoints"
            out[group].setdefault(label, {})[direction] = c["packets"]
        return out

    def status(self) -> dict[str, Any]:
        compiled = self.compiled
        isolated = {d: sum(1 for p in (plans or {}).values() if p.isolated) for d, plans in
                    (("ingress", compiled and compiled.ingress),
                     ("egress", compiled and compiled.egress))}
        st: dict[str, Any] = {
            "engine": "nftables", "enforcing": True, "table": f"inet/bridge {self.table}",
            "policies": len(self.policies), "namespaces": len(self.namespaces),
            "endpoints": len(self.local), "remote_endpoints": len(self.remote),
            "isolated": isolated, "transactions": self.transactions,
            "last_apply_ms": self.last_apply_ms, "last_error": self.last_error,
            "rules": sum(len(c.rules) for c in self.applied.chains.values())
            if self.applied else 0,
        }
        if self.ctx.store is None:
            st.setdefault("warnings", []).append(NO_STORE)
        if self._directory is not None and self._directory.error:
            st["directory_error"] = self._directory.error
        try:
            st["drops"] = self.drop_counters()
        except FabricError as exc:
            st["drops"] = {"error": str(exc)}
        return st
