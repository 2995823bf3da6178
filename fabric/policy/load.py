"""Load and validate NetworkPolicy (and Namespace) documents from YAML or JSON.

Several documents per file (YAML ``---``, a JSON array, or a ``kind: List``).
Anything invalid raises :class:`~fabric.errors.PolicyError` naming the document
and the field path (``spec.ingress[0].from[1].ipBlock.cidr``); nothing is
returned half-parsed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml

from fabric.errors import PolicyError
from fabric.policy.model import (
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Requirement,
)

__all__ = ["load_file", "load_text", "parse_documents", "parse_policy", "parse_namespace",
           "parse_label_changes"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)$")
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class _Doc:
    """Error context: which document, for messages."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, path: str, reason: str, fix: str | None = None) -> PolicyError:
        return PolicyError(f"{self.label}: {path}: {reason}", fix=fix)


def load_file(path: str | Path) -> list[NetworkPolicy | Namespace]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {p}: {exc.strerror or exc}",
                          fix="check the path given to -f") from exc
    return load_text(text, source=str(p))


def load_text(text: str, source: str = "<input>") -> list[NetworkPolicy | Namespace]:
    """Parse every document of a YAML/JSON text; all valid or PolicyError."""
    try:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            data = json.loads(text)
            docs = data if isinstance(data, list) else [data]
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError(f"{source} is not valid YAML/JSON: {exc}",
                          fix="fix the syntax; several documents are separated by ---") from exc
    return parse_documents(docs, source)


def parse_documents(
    docs: Iterable[Any], source: str = "<input>"
) -> list[NetworkPolicy | Namespace]:
    out: list[NetworkPolicy | Namespace] = []
    flat: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items = doc.get("items")
            if not isinstance(items, list):
                raise PolicyError(f"{source}: a List document needs 'items' (a list)")
            flat.extend(items)
        else:
            flat.append(doc)
    if not flat:
        raise PolicyError(f"{source} holds no documents", fix="give NetworkPolicy documents")
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(flat):
        label = f"{source} document {i + 1}"
        if not isinstance(doc, dict):
            raise PolicyError(f"{label}: must be a mapping, not {type(doc).__name__}")
        kind = doc.get("kind")
        obj: NetworkPolicy | Namespace
        if kind == "NetworkPolicy":
            obj = parse_policy(doc, label)
            key = ("NetworkPolicy", obj.key)
        elif kind == "Namespace":
            obj = parse_namespace(doc, label)
            key = ("Namespace", obj.name)
        else:
            raise PolicyError(f"{label}: kind: {kind!r} is not supported",
                              fix="use kind NetworkPolicy (networking.k8s.io/v1) or Namespace (v1)")
        if key in seen:
            raise PolicyError(f"{label}: {key[0]} {key[1]} appears twice in {source}")
        seen.add(key)
        out.append(obj)
    return out


def _mapping(d: _Doc, value: Any, path: str, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise d.fail(path, f"must be a mapping, not {type(value).__name__}")
    return value


def _list(d: _Doc, value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise d.fail(path, f"must be a list, not {type(value).__name__}")
    return value


def _check_keys(d: _Doc, value: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    for k in value:
        if k not in allowed:
            raise d.fail(f"{path}.{k}" if path else str(k), "unknown field",
                         fix=f"allowed here: {', '.join(allowed)}")


def _metadata(d: _Doc, doc: dict[str, Any]) -> dict[str, Any]:
    meta = _mapping(d, doc.get("metadata"), "metadata", required=True)
    name = meta.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        raise d.fail("metadata.name", f"{name!r} is not a valid name",
                     fix="lowercase letters, digits, '-' and '.', at most 253 characters")
    d.label = f"{d.label} ({doc.get('kind')} {name})"
    return meta


def _label_map(d: _Doc, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    m = _mapping(d, value, path)
    for k, v in m.items():
        name = str(k).rpartition("/")[2]
        if not isinstance(k, str) or not _LABEL_NAME.match(name):
            raise d.fail(f"{path}", f"label key {k!r} is invalid")
        if not isinstance(v, str) or not _LABEL_VALUE.match(v):
            raise d.fail(f"{path}.{k}", f"label value {v!r} is invalid",
                         fix="at most 63 letters, digits, '-', '_', '.' (quote numbers)")
    return tuple(sorted(m.items()))


def parse_label_changes(value: Any) -> dict[str, str | None]:
    """A relabel request: key -> new value, or None to remove the label."""
    d = _Doc("labels")
    m = _mapping(d, value, "labels", required=True)
    if not m:
        raise d.fail("labels", "no label to change", fix="give key=value or key- (remove)")
    _label_map(d, {k: v for k, v in m.items() if v is not None}, "labels")
    for k in m:
        if not isinstance(k, str) or not _LABEL_NAME.match(k.rpartition("/")[2]):
            raise d.fail("labels", f"label key {k!r} is invalid")
    return dict(m)


def parse_namespace(doc: dict[str, Any], label: str = "<document>") -> Namespace:
    d = _Doc(label)
    if doc.get("apiVersion") not in ("v1", None):
        raise d.fail("apiVersion", f"{doc.get('apiVersion')!r} is not v1")
    meta = _metadata(d, doc)
    if not _DNS_LABEL.match(meta["name"]):
        raise d.fail("metadata.name", f"{meta['name']!r} is not a valid namespace name")
    return Namespace(meta["name"], _label_map(d, meta.get("labels"), "metadata.labels"),
                     source=doc)


def _selector(d: _Doc, value: Any, path: str) -> LabelSelector:
    m = _mapping(d, value, path)
    _check_keys(d, m, path, ("matchLabels", "matchExpressions"))
    labels = _label_map(d, m.get("matchLabels"), f"{path}.matchLabels")
    reqs = []
    for i, e in enumerate(_list(d, m.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        e = _mapping(d, e, p, required=True)
        _check_keys(d, e, p, ("key", "operator", "values"))
        key, op = e.get("key"), e.get("operator")
        if not isinstance(key, str) or not key:
            raise d.fail(f"{p}.key", "is required (a label key)")
        if op not in _OPERATORS:
            raise d.fail(f"{p}.operator", f"{op!r} is not an operator",
                         fix=f"use one of {', '.join(_OPERATORS)}")
        values = _list(d, e.get("values"), f"{p}.values")
        if not all(isinstance(v, str) for v in values):
            raise d.fail(f"{p}.values", "must be strings (quote numbers)")
        if op in ("In", "NotIn") and not values:
            raise d.fail(f"{p}.values", f"must not be empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise d.fail(f"{p}.values", f"must be empty for operator {op}")
        reqs.append(Requirement(key, op, tuple(values)))
    return LabelSelector(labels, tuple(reqs))


def _cidr(d: _Doc, value: Any, path: str) -> IPv4Network:
    if not isinstance(value, str):
        raise d.fail(path, f"must be a CIDR string, not {type(value).__name__}")
    try:
        return IPv4Network(value, strict=False)
    except ValueError as exc:
        raise d.fail(path, f"{value!r} is not an IPv4 CIDR ({exc})",
                     fix="e.g. 10.0.0.0/8; IPv6 is not supported") from exc


def _peer(d: _Doc, value: Any, path: str) -> PolicyPeer:
    m = _mapping(d, value, path, required=True)
    _check_keys(d, m, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if "ipBlock" in m:
        if len(m) > 1:
            raise d.fail(path, "ipBlock cannot be combined with podSelector/namespaceSelector")
        b = _mapping(d, m["ipBlock"], f"{path}.ipBlock", required=True)
        _check_keys(d, b, f"{path}.ipBlock", ("cidr", "except"))
        if "cidr" not in b:
            raise d.fail(f"{path}.ipBlock.cidr", "is required")
        cidr = _cidr(d, b["cidr"], f"{path}.ipBlock.cidr")
        excepts = []
        for i, e in enumerate(_list(d, b.get("except"), f"{path}.ipBlock.except")):
            ep = f"{path}.ipBlock.except[{i}]"
            net = _cidr(d, e, ep)
            if not net.subnet_of(cidr) or net == cidr:
                raise d.fail(ep, f"{net} is not strictly inside {cidr}")
            excepts.append(net)
        return PolicyPeer(ip_block=IPBlock(cidr, tuple(excepts)))
    if not m:
        raise d.fail(path, "a peer needs podSelector, namespaceSelector or ipBlock")
    pod = _selector(d, m["podSelector"], f"{path}.podSelector") if "podSelector" in m else None
    ns = (_selector(d, m["namespaceSelector"], f"{path}.namespaceSelector")
          if "namespaceSelector" in m else None)
    return PolicyPeer(pod_selector=pod, namespace_selector=ns)


def _port_number(d: _Doc, value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise d.fail(path, f"{value!r} is not a port number", fix="use 1-65535 or a port name")
    return value


def _port(d: _Doc, value: Any, path: str) -> PolicyPort:
    m = _mapping(d, value, path, required=True)
    _check_keys(d, m, path, ("protocol", "port", "endPort"))
    proto = m.get("protocol", "TCP")
    if proto not in _PROTOCOLS:
        raise d.fail(f"{path}.protocol", f"{proto!r} is not supported",
                     fix=f"use one of {', '.join(_PROTOCOLS)}")
    port = m.get("port")
    if port is None:
        if "endPort" in m:
            raise d.fail(f"{path}.endPort", "needs port")
        return PolicyPort(proto)
    if isinstance(port, str):
        # a named port is the destination pod's container port of that name (resolved
        # per pod when compiling), never a service name from /etc/services
        if not _PORT_NAME.match(port):
            raise d.fail(f"{path}.port", f"{port!r} is not a valid port name",
                         fix="1-15 of a-z, 0-9 and '-', with at least one letter")
        if "endPort" in m:
            raise d.fail(f"{path}.endPort", "cannot be used with a named port")
        return PolicyPort(proto, None, None, port)
    port = _port_number(d, port, f"{path}.port")
    end = m.get("endPort")
    if end is not None:
        end = _port_number(d, end, f"{path}.endPort")
        if end < port:
            raise d.fail(f"{path}.endPort", f"{end} is below port {port}")
    return PolicyPort(proto, port, end)


def _rules(d: _Doc, value: Any, path: str, peers_key: str) -> tuple[PolicyRule, ...]:
    rules = []
    for i, r in enumerate(_list(d, value, path)):
        p = f"{path}[{i}]"
        r = _mapping(d, r, p)
        _check_keys(d, r, p, (peers_key, "ports"))
        peers = tuple(_peer(d, x, f"{p}.{peers_key}[{j}]")
                      for j, x in enumerate(_list(d, r.get(peers_key), f"{p}.{peers_key}")))
        ports = tuple(_port(d, x, f"{p}.ports[{j}]")
                      for j, x in enumerate(_list(d, r.get("ports"), f"{p}.ports")))
        rules.append(PolicyRule(peers, ports))
    return tuple(rules)


def parse_policy(doc: dict[str, Any], label: str = "<document>") -> NetworkPolicy:
    d = _Doc(label)
    if doc.get("apiVersion") != "networking.k8s.io/v1":
        raise d.fail("apiVersion", f"{doc.get('apiVersion')!r} is not networking.k8s.io/v1")
    _check_keys(d, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    meta = _metadata(d, doc)
    namespace = meta.get("namespace", "default")
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise d.fail("metadata.namespace", f"{namespace!r} is not a valid namespace")
    spec = _mapping(d, doc.get("spec"), "spec", required=True)
    _check_keys(d, spec, "spec", ("podSelector", "ingress", "egress", "policyTypes"))
    if "podSelector" not in spec:
        raise d.fail("spec.podSelector", "is required ({} selects every pod of the namespace)")
    pod_selector = _selector(d, spec["podSelector"], "spec.podSelector")
    ingress = _rules(d, spec.get("ingress"), "spec.ingress", "from")
    egress = _rules(d, spec.get("egress"), "spec.egress", "to")
    types = spec.get("policyTypes")
    if types is None:  # Kubernetes' default: Ingress, plus Egress if egress rules exist
        types = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    types = _list(d, types, "spec.policyTypes")
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            raise d.fail(f"spec.policyTypes[{i}]", f"{t!r} is not Ingress or Egress")
    if not types:
        raise d.fail("spec.policyTypes", "must not be empty")
    return NetworkPolicy(
        name=meta["name"], namespace=namespace, pod_selector=pod_selector, ingress=ingress,
        egress=egress, policy_types=tuple(t for t in ("Ingress", "Egress") if t in types),
        source=doc,
    )
