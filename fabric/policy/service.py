"""What the agent runs for the ``policy.*`` control ops, and where policies are persisted.

Documents are validated whole, written to ``<network state dir>/policies.json``
(write-temp + fsync + rename), then handed to the engine's ``set_policies``; if the
engine refuses them, the previous file is restored: nothing is half-applied.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from fabric.errors import ConfigError, FabricError, NotFound, PolicyError
from fabric.fsutil import atomic_write
from fabric.policy.compile import EndpointInfo
from fabric.policy.explain import explain
from fabric.policy.load import parse_documents, parse_label_changes
from fabric.policy.model import Namespace, NetworkPolicy, declared_ports

__all__ = ["POLICY_FILE", "load_saved", "save_documents", "PolicyService", "handle_policy_op"]

POLICY_FILE = "policies.json"
_OPS_LOCK = threading.Lock()  # one policy change at a time per agent
Obj = NetworkPolicy | Namespace

if TYPE_CHECKING:  # the agent calls us; we only name its type
    from fabric.agent.network import Network


def _path(state_dir: Path) -> Path:
    return Path(state_dir) / POLICY_FILE


def _saved_docs(state_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(_path(state_dir).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{_path(state_dir)} is unreadable: {exc}",
                          fix="fix or remove the file, then re-apply the policies") from exc
    return data if isinstance(data, list) else []


def load_saved(state_dir: Path) -> list[Obj]:
    docs = _saved_docs(state_dir)
    return parse_documents(docs, str(_path(state_dir))) if docs else []


def save_documents(state_dir: Path, docs: list[dict[str, Any]]) -> None:
    atomic_write(_path(state_dir), json.dumps(docs, indent=1, sort_keys=True))


def _ident(obj: Obj) -> tuple[str, str]:
    return ("NetworkPolicy", obj.key) if isinstance(obj, NetworkPolicy) else ("Namespace",
                                                                              obj.name)


class PolicyService:
    """Policy ops for one agent network (``network.ctx``, ``.policy``, ``.endpoints()``)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.state_dir = Path(network.ctx.state_dir)

    def current(self) -> list[Obj]:
        return load_saved(self.state_dir)

    def _commit(self, objs: list[Obj], old_docs: list[dict[str, Any]]) -> None:
        save_documents(self.state_dir, [dict(o.source) for o in objs])
        try:
            self.network.policy.set_policies(objs)
        except FabricError:
            save_documents(self.state_dir, old_docs)
            raise
        except Exception as exc:
            save_documents(self.state_dir, old_docs)
            raise PolicyError(f"the policy engine failed: {exc}") from exc

    def apply(self, documents: Any, source: str = "request") -> dict[str, Any]:
        if getattr(self.network.policy, "name", "") == "none":
            # accepting would read as "in force" while every pod stays open
            raise PolicyError(
                f"network {self.network.ctx.spec.name} runs the policy engine 'none', which "
                "enforces nothing: the policies were not applied",
                fix="run the network with --policy nftables (policy: nftables in the agent "
                    "config), then apply them again")
        if not isinstance(documents, list):
            raise ConfigError("documents must be a list of NetworkPolicy/Namespace objects")
        new = parse_documents(documents, source)  # whole set valid, or PolicyError
        old_docs = _saved_docs(self.state_dir)
        merged = {_ident(o): o for o in self.current()}
        created, configured, unchanged = [], [], []
        for o in new:
            ident = _ident(o)
            prev = merged.get(ident)
            label = f"{ident[0]} {ident[1]}"
            (unchanged if prev == o else configured if prev else created).append(label)
            merged[ident] = o
        self._commit(list(merged.values()), old_docs)
        return {"created": created, "configured": configured, "unchanged": unchanged}

    def list(self) -> list[dict[str, Any]]:
        out = []
        for o in self.current():
            if isinstance(o, NetworkPolicy):
                out.append({"kind": "NetworkPolicy", "name": o.name, "namespace": o.namespace,
                            "podSelector": o.pod_selector.describe(),
                            "policyTypes": list(o.policy_types),
                            "ingressRules": len(o.ingress), "egressRules": len(o.egress)})
            else:
                out.append({"kind": "Namespace", "name": o.name, "labels": dict(o.labels)})
        return out

    def delete(self, name: str, namespace: str | None = None, kind: str = "NetworkPolicy",
               ) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise ConfigError("policy.delete needs a name")
        objs = self.current()
        if "/" in name and namespace is None:
            namespace, name = name.split("/", 1)
        hits = [o for o in objs if _ident(o)[0] == kind and o.name == name
                and (namespace is None or getattr(o, "namespace", None) in (namespace, None))]
        if not hits:
            raise NotFound(f"{kind} {name!r} does not exist", fix="see fabric policy list")
        if len(hits) > 1:
            raise ConfigError(f"{name!r} exists in several namespaces",
                              fix="give namespace/name")
        old_docs = _saved_docs(self.state_dir)
        self._commit([o for o in objs if o is not hits[0]], old_docs)
        return {"deleted": f"{kind} {_ident(hits[0])[1]}"}

    def explain(self, pod: str) -> dict[str, Any]:
        if not isinstance(pod, str) or not pod:
            raise ConfigError("policy.explain needs a pod")
        from fabric.policy.engine import endpoint_info

        engine = self.network.policy
        local = getattr(engine, "local", None)
        if local is None:
            local = {e.workload.handle.key(): endpoint_info(e) for e in
                     self.network.endpoints()}
        objs = self.current()
        policies = [o for o in objs if isinstance(o, NetworkPolicy)]
        namespaces = {o.name: o for o in objs if isinstance(o, Namespace)}
        remote: list[EndpointInfo] = list(getattr(engine, "remote", {}).values())
        notes = getattr(engine, "explain_notes", None)
        out = explain(pod, policies, namespaces, list(local.values()), remote,
                      enforcing=getattr(engine, "name", "") != "none",
                      notes=notes() if notes is not None else ())
        drops = getattr(engine, "drop_counters", None)
        if drops is not None:
            try:
                counts = drops()["endpoints"].get(out["pod"], {})
            except FabricError:
                counts = {}
            out["drops"] = counts
        return out


    def label(self, pod: str, changes: Any) -> dict[str, Any]:
        """Change a running pod's labels (``None`` removes one), as Kubernetes relabels do.

        The agent's workload record is updated (restarts keep it), then the engine
        recompiles and republishes the endpoint: rules follow in one transaction."""
        if not isinstance(pod, str) or not pod:
            raise ConfigError("policy.label needs a pod")
        changes = parse_label_changes(changes)
        from fabric.policy.engine import endpoint_info
        from fabric.policy.explain import find_endpoint

        net = self.network
        with net.lock:  # one change to this network's workloads at a time (as ADD/DEL)
            eps = {e.workload.handle.key(): e for e in net.endpoints()}
            key = find_endpoint(pod, [endpoint_info(e) for e in eps.values()]).key
            ep = eps[key]
            labels = {k: v for k, v in {**dict(ep.workload.labels), **changes}.items()
                      if v is not None}
            try:
                declared_ports(labels)
            except ValueError as exc:
                raise ConfigError(str(exc), field="labels") from exc
            new = attrs.evolve(ep, workload=attrs.evolve(ep.workload, labels=labels))
            old_labels = net.set_workload_labels(key, labels)
            try:
                net.policy.endpoint_added(new)
            except BaseException:
                net.set_workload_labels(key, old_labels)
                raise
        return {"pod": endpoint_info(new).display, "labels": labels}


def handle_policy_op(network: Network, op: str, req: dict[str, Any]) -> Any:
    with _OPS_LOCK:
        return _handle(PolicyService(network), op, req)


_HANDLERS: dict[str, Callable[[PolicyService, dict[str, Any]], Any]] = {
    "policy.apply": lambda svc, req: svc.apply(req.get("documents"),
                                               str(req.get("source") or "request")),
    "policy.list": lambda svc, req: svc.list(),
    "policy.delete": lambda svc, req: svc.delete(req.get("name", ""), req.get("namespace"),
                                                 str(req.get("kind") or "NetworkPolicy")),
    "policy.explain": lambda svc, req: svc.explain(req.get("pod", "")),
    "policy.label": lambda svc, req: svc.label(req.get("pod", ""), req.get("labels")),
}


def _handle(svc: PolicyService, op: str, req: dict[str, Any]) -> Any:
    handler = _HANDLERS.get(op)
    if handler is None:
        raise ConfigError(f"unknown op {op!r}", fix=", ".join(_HANDLERS))
    return handler(svc, req)
