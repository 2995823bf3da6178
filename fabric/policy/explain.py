"""`fabric policy explain POD`: which policies select a pod and what they allow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fabric.errors import NotFound
from fabric.policy.compile import EndpointInfo, peer_addresses
from fabric.policy.model import Namespace, NetworkPolicy, PolicyPort
from fabric.policy.rules import resolve_port

__all__ = ["find_endpoint", "explain"]


def find_endpoint(pod: str, endpoints: Sequence[EndpointInfo]) -> EndpointInfo:
    """By ``namespace/name``, pod name, container id (prefix) or address."""
    ns, _, name = pod.rpartition("/")
    hits = [ep for ep in endpoints
            if (ep.name == name and (not ns or ep.namespace == ns)) or ep.key == pod
            or ep.key.startswith(pod) and len(pod) >= 6
            or any(str(a) == pod for a in ep.addresses)]
    if not hits:
        raise NotFound(f"no pod {pod!r} is attached on this node",
                       fix="give namespace/name, the pod name, its container id or address")
    if len(hits) > 1:
        raise NotFound(f"{pod!r} matches {len(hits)} pods: "
                       + ", ".join(ep.display for ep in hits), fix="use namespace/name")
    return hits[0]


def _port(port: PolicyPort, d: str, ep: EndpointInfo) -> str:
    if not port.name:
        return port.describe()
    if d == "egress":
        return f"{port.describe()} (the destination pod's port of that name)"
    number = resolve_port(port, ep.label_map)
    return f"{port.describe()} ({number})" if number else \
        f"{port.describe()} (not declared by this pod: matches nothing)"


def explain(pod: str, policies: Sequence[NetworkPolicy], namespaces: Mapping[str, Namespace],
            local: Sequence[EndpointInfo], remote: Sequence[EndpointInfo] = (),
            enforcing: bool = True, notes: Sequence[str] = ()) -> dict[str, Any]:
    """What applies to ``pod``; ``notes`` are the engine's words on how it enforces."""
    ep = find_endpoint(pod, local)
    out: dict[str, Any] = {"pod": ep.display, "key": ep.key,
                           "addresses": [str(a) for a in ep.addresses],
                           "labels": dict(ep.labels), "enforcing": enforcing,
                           "notes": list(notes)}
    everyone = [*local, *remote]
    for d, type_ in (("ingress", "Ingress"), ("egress", "Egress")):
        sel = [p for p in policies if type_ in p.policy_types
               and p.selects(ep.namespace, ep.label_map)]
        allowed = []
        for p in sel:
            for i, rule in enumerate(p.ingress if d == "ingress" else p.egress):
                peers = [peer.describe(p.namespace) for peer in rule.peers] or ["anywhere"]
                addrs = sorted({str(n) for peer in rule.peers for n in
                                peer_addresses(peer, p.namespace, everyone, namespaces)})
                allowed.append({"policy": p.key, "rule": i, "peers": peers,
                                "addresses": addrs if rule.peers else ["0.0.0.0/0"],
                                "ports": [_port(x, d, ep) for x in rule.ports] or ["all"]})
        out[d] = {
            "isolated": bool(sel),
            "policies": [p.key for p in sel],
            "allowed": allowed,
            "summary": ("not isolated: all traffic allowed" if not sel else
                        "isolated: only the listed traffic (and replies) is allowed"
                        if allowed else "isolated: everything denied (replies pass)"),
        }
    return out
