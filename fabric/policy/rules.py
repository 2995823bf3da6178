"""nft expressions for one isolated endpoint's chains, original and reply direction.

An endpoint isolated for ingress gets ``in-<ep>`` (judges packets of connections as their
originator sent them) and ``rin-<ep>`` (judges a reply packet by the connection's original
direction: addresses swapped, the destination port read from the reply's source port).
Both hold the same (peer set, port) matches, so an established connection is re-judged
by exactly the rules that would admit it as new. Egress likewise with ``out``/``rout``.

Named ports resolve per destination pod: on ingress the isolated pod itself; on egress
every pod that declares the name, each with its own number (one address set per number).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from fabric.policy.model import PolicyPort, declared_ports

__all__ = ["Match", "payload", "match", "port_match", "named_destinations", "resolve_port",
           "rule_pairs"]

Direction = Literal["ingress", "egress"]
Match = list[dict[str, Any]]


def payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def port_match(protocol: str, port: int | None, end: int | None, reply: bool) -> Match:
    """``meta l4proto P [th dport X]``; a reply carries the original dport as its sport."""
    expr = [match({"meta": {"key": "l4proto"}}, protocol.lower())]
    if port is not None:
        right: Any = {"range": [port, end]} if end else port
        expr.append(match(payload("th", "sport" if reply else "dport"), right))
    return expr


def resolve_port(port: PolicyPort, labels: Mapping[str, str]) -> int | None:
    """The number a named port has on a pod with ``labels``; None if it declares none."""
    try:
        proto, number = declared_ports(labels).get(port.name, ("", 0))
    except ValueError:  # refused when the pod was added; never matches
        return None
    return number if proto == port.protocol and number else None


def named_destinations(port: PolicyPort, pods: Iterable[tuple[Sequence[IPv4Address],
                                                               Mapping[str, str]]],
                       within: Sequence[IPv4Network] | None) -> dict[int, list[IPv4Network]]:
    """Egress named port: number -> addresses of pods declaring it (inside ``within``)."""
    out: dict[int, list[IPv4Network]] = {}
    for addresses, labels in pods:
        number = resolve_port(port, labels)
        if number is None:
            continue
        for a in addresses:
            if within is None or any(a in n for n in within):
                out.setdefault(number, []).append(IPv4Network(a))
    return out


def rule_pairs(direction: Direction, peer_set: str | None, ports: Sequence[PolicyPort],
               own_labels: Mapping[str, str],
               named_set: Callable[[PolicyPort], dict[int, str]]) -> list[tuple[Match, Match]]:
    """(original, reply) match lists of one policy rule for one endpoint.

    ``peer_set``: name of the set of the rule's peers (None: any peer). ``named_set(port)``
    gives, for an egress named port, number -> name of the set of pods declaring it."""
    field, rfield = ("saddr", "daddr") if direction == "ingress" else ("daddr", "saddr")

    def pair(peer: str | None, proto: str | None = None, port: int | None = None,
             end: int | None = None) -> tuple[Match, Match]:
        def one(reply: bool) -> Match:
            expr = [match(payload("ip", rfield if reply else field), f"@{peer}")] if peer else []
            return expr + (port_match(proto, port, end, reply) if proto else [])
        return one(False), one(True)

    out: list[tuple[Match, Match]] = []
    for port in ports or (None,):
        if port is None:
            out.append(pair(peer_set))
        elif not port.name:
            out.append(pair(peer_set, port.protocol, port.port, port.end_port))
        elif direction == "ingress":  # the selected pod is the destination
            number = resolve_port(port, own_labels)
            if number is not None:
                out.append(pair(peer_set, port.protocol, number))
        else:  # one match per number the destination pods declare for the name
            for number, set_name in sorted(named_set(port).items()):
                out.append(pair(set_name, port.protocol, number))
    return out
