"""Policy model: Kubernetes ``networking.k8s.io/v1`` NetworkPolicy as frozen attrs values.

Semantics (as Kubernetes defines them):

* a policy selects pods of its own namespace with ``pod_selector``;
* for each direction in ``policy_types``, a selected pod is isolated (default deny)
  and the union of all selecting policies' rules says what is allowed;
* a rule with no peers matches every peer, a rule with no ports every port;
* a peer with only ``pod_selector`` means pods of the policy's namespace, with only
  ``namespace_selector`` every pod of the matching namespaces, with both the
  matching pods of the matching namespaces; ``ip_block`` is a CIDR minus ``except``;
* replies to allowed connections always pass (conntrack).

Named ports (``port: http``) mean what Kubernetes means: the container port of that
name declared by the destination pod. Pods declare them as labels
``port.netfabric.io/<name>: "<number>"`` (TCP) or ``"<number>-<PROTOCOL>"``; a pod that
declares no such port is matched by no named-port entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Network
from typing import Literal

import attrs

__all__ = [
    "Requirement",
    "LabelSelector",
    "IPBlock",
    "PolicyPeer",
    "PolicyPort",
    "PolicyRule",
    "NetworkPolicy",
    "Namespace",
    "NAMESPACE_NAME_LABEL",
    "PORT_LABEL_PREFIX",
    "namespace_labels",
    "declared_ports",
]

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PORT_LABEL_PREFIX = "port.netfabric.io/"  # + port name; value "<number>[-<PROTOCOL>]"
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
Protocol = Literal["TCP", "UDP", "SCTP"]


@attrs.frozen
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        present = self.key in labels and labels[self.key] in self.values
        return present if self.operator == "In" else not present


@attrs.frozen
class LabelSelector:
    """``matchLabels`` AND ``matchExpressions``; the empty selector selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("Exists", "DoesNotExist"):
                parts.append(("" if r.operator == "Exists" else "!") + r.key)
            else:
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
        return ", ".join(parts) or "<all>"


@attrs.frozen
class IPBlock:
    cidr: IPv4Network
    except_: tuple[IPv4Network, ...] = ()

    def networks(self) -> tuple[IPv4Network, ...]:
        """The block as disjoint prefixes: ``cidr`` minus every ``except``."""
        nets = [self.cidr]
        for ex in self.except_:
            out: list[IPv4Network] = []
            for n in nets:
                if ex.subnet_of(n):
                    out.extend(n.address_exclude(ex))
                elif not n.subnet_of(ex):
                    out.append(n)
            nets = out
        return tuple(sorted(nets))


@attrs.frozen
class PolicyPeer:
    """One ``from``/``to`` entry: selectors (None = not given) or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def describe(self, namespace: str) -> str:
        if self.ip_block is not None:
            ex = ", ".join(map(str, self.ip_block.except_))
            return f"ipBlock {self.ip_block.cidr}" + (f" except {ex}" if ex else "")
        pods = self.pod_selector.describe() if self.pod_selector else "<all>"
        if self.namespace_selector is None:
            return f"pods [{pods}] in namespace {namespace}"
        return f"pods [{pods}] in namespaces [{self.namespace_selector.describe()}]"


@attrs.frozen
class PolicyPort:
    """A port or range; ``port`` None = every port of the protocol."""

    protocol: Protocol = "TCP"
    port: int | None = None
    end_port: int | None = None
    name: str = ""  # a named port (then ``port`` is None): the destination pod's port

    def describe(self) -> str:
        if self.name:
            return f"{self.protocol}/{self.name}"
        if self.port is None:
            return f"{self.protocol}/*"
        p = f"{self.port}-{self.end_port}" if self.end_port else str(self.port)
        return f"{self.protocol}/{p}" + (f" ({self.name})" if self.name else "")


@attrs.frozen
class PolicyRule:
    """An ingress (peers = ``from``) or egress (peers = ``to``) rule."""

    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()

    @property
    def allows_all(self) -> bool:
        """No peer and no port restriction (``ingress: [{}]``, or ipBlock 0.0.0.0/0)."""
        return not self.ports and (not self.peers or any(
            p.ip_block is not None and p.ip_block.networks() == (IPv4Network("0.0.0.0/0"),)
            for p in self.peers))


@attrs.frozen
class NetworkPolicy:
    name: str
    namespace: str = "default"
    pod_selector: LabelSelector = LabelSelector()
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    policy_types: tuple[Literal["Ingress", "Egress"], ...] = ("Ingress",)
    source: Mapping[str, object] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return namespace == self.namespace and self.pod_selector.matches(labels)


@attrs.frozen
class Namespace:
    """A ``v1`` Namespace document: gives namespaceSelectors labels to match."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    source: Mapping[str, object] = attrs.field(factory=dict, eq=False, hash=False, repr=False)


def namespace_labels(name: str, namespaces: Mapping[str, Namespace]) -> dict[str, str]:
    """Labels of namespace ``name``; every namespace carries its name label."""
    ns = namespaces.get(name)
    labels = dict(ns.labels) if ns else {}
    labels[NAMESPACE_NAME_LABEL] = name
    return labels


def declared_ports(labels: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Named container ports a pod declares: name -> (protocol, number).

    Raises ValueError naming the label when a declaration is malformed."""
    out: dict[str, tuple[str, int]] = {}
    for key, value in labels.items():
        if not key.startswith(PORT_LABEL_PREFIX):
            continue
        name = key[len(PORT_LABEL_PREFIX):]
        if not _PORT_NAME.match(name):
            raise ValueError(f"label {key}: {name!r} is not a valid port name (1-15 of a-z, "
                             "0-9, '-', with a letter)")
        number, _, proto = str(value).partition("-")
        proto = proto.upper() or "TCP"
        if not number.isdigit() or not 1 <= int(number) <= 65535 \
                or proto not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"label {key}: {value!r} is not a port: use <number> (TCP) or "
                             "<number>-<TCP|UDP|SCTP>, e.g. 5432 or 53-UDP")
        out[name] = (proto, int(number))
    return out
