"""Compile policies + known endpoints into the nftables state of one network.

Layout of table ``netfabric-<network>`` (families ``inet`` and ``bridge``):

``inet`` chain ``forward`` (hook forward)::

    ct state established,related accept          # replies (only while a pod is isolated)
    ip saddr vmap @egress                         # local pod isolated for egress -> out-<ep>
    ip daddr vmap @ingress                        # local pod isolated for ingress -> in-<ep>

Per isolated endpoint, chain ``in-<ep>`` / ``out-<ep>``: one rule per (policy rule, port)
``ip saddr @p<pol>-i<n> [meta l4proto P th dport X] return``, then a counter per
selecting policy and ``counter ed-<ep>-in drop``. Sets ``p<pol>-i<n>`` hold the
addresses a rule's peers select (pods, on any node, and ipBlocks minus excepts), so a
pod coming or going only changes set elements.

Same-host pods on a bridge never reach the ``inet`` hooks (bridged, and br_netfilter
stays off; the kernel has no bridge conntrack). The ``bridge`` chain ``prerouting``
therefore hands IPv4 frames from local pods' ports to local pods, when one side is isolated, to the
host's IP stack: destination MAC set to the bridge's, pkttype host. They are routed
back onto the bridge through ``forward`` with conntrack, exactly like cross-host
traffic (TTL drops by one; ICMP redirects for them are suppressed in ``output``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, collapse_addresses
from typing import Any, Literal

import attrs

from fabric.policy.model import (
    Namespace,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    namespace_labels,
)
from fabric.policy.nftstate import ChainDef, NftState, SetDef

__all__ = ["EndpointInfo", "EndpointPlan", "Compiled", "compile_policies", "table_name",
           "short_id", "peer_addresses"]

Direction = Literal["ingress", "egress"]
_TYPE = {"ingress": "Ingress", "egress": "Egress"}
_D = {"ingress": "i", "egress": "e"}


def table_name(network: str) -> str:
    return f"netfabric-{network}"


def short_id(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


@attrs.frozen
class EndpointInfo:
    """A pod as policy sees it; local ones carry their host interface / bridge."""

    key: str  # handle key (container id/ifname)
    addresses: tuple[IPv4Address, ...]
    namespace: str = "default"
    labels: tuple[tuple[str, str], ...] = ()
    name: str = ""
    host_ifname: str = ""
    bridge: str = ""  # master bridge of the host veth, "" when routed
    bridge_mac: str = ""
    node: str = ""

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name or self.key}"


@attrs.frozen
class EndpointPlan:
    """What applies to one local endpoint in one direction."""

    policies: tuple[str, ...] = ()  # keys of selecting policies
    isolated: bool = False  # default deny in force (False also when a rule allows all)
    chain: str = ""


@attrs.frozen
class Compiled:
    state: NftState
    ingress: Mapping[str, EndpointPlan]  # endpoint key -> plan
    egress: Mapping[str, EndpointPlan]
    counters: Mapping[str, tuple[str, str, str]]  # counter -> (kind, key, direction)


def _rules_of(p: NetworkPolicy, d: Direction) -> tuple[PolicyRule, ...]:
    return p.ingress if d == "ingress" else p.egress


def peer_addresses(peer: PolicyPeer, policy_ns: str, endpoints: Iterable[EndpointInfo],
                   namespaces: Mapping[str, Namespace]) -> list[IPv4Network]:
    if peer.ip_block is not None:
        return list(peer.ip_block.networks())
    out = []
    for ep in endpoints:
        if peer.namespace_selector is None:
            if ep.namespace != policy_ns:
                continue
        elif not peer.namespace_selector.matches(namespace_labels(ep.namespace, namespaces)):
            continue
        if peer.pod_selector is not None and not peer.pod_selector.matches(ep.label_map):
            continue
        out += [IPv4Network(a) for a in ep.addresses]
    return out


def _elements(nets: Iterable[IPv4Network]) -> frozenset[Any]:
    out: set[Any] = set()
    for n in collapse_addresses(nets):
        out.add(str(n.network_address) if n.prefixlen == 32
                else ("prefix", str(n.network_address), n.prefixlen))
    return frozenset(out)


def _payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _port_match(port: PolicyPort) -> list[dict[str, Any]]:
    expr = [_match({"meta": {"key": "l4proto"}}, port.protocol.lower())]
    if port.port is not None:
        right: Any = {"range": [port.port, port.end_port]} if port.end_port else port.port
        expr.append(_match(_payload("th", "dport"), right))
    return expr


def _base(st: NftState, bridges: Mapping[str, tuple[str, set[str]]]) -> None:
    for name in ("ingress", "egress"):
        st.sets[("inet", name)] = SetDef("ipv4_addr", verdicts=())
    for name in ("in_iso", "eg_iso", "local"):
        st.sets[("bridge", name)] = SetDef("ipv4_addr")
    st.chains[("bridge", "prerouting")] = ChainDef(hook=("filter", "prerouting", 0))
    st.chains[("inet", "output")] = ChainDef(hook=("filter", "output", 0))
    for br, (mac, ports) in sorted(bridges.items()):
        port_set = f"ports-{short_id(br, 8)}"
        st.sets[("bridge", port_set)] = SetDef("ifname", frozenset(ports))
        to_host = [{"mangle": {"key": _payload("ether", "daddr"), "value": mac}},
                   {"mangle": {"key": {"meta": {"key": "pkttype"}}, "value": "host"}}]
        ibr = _match({"meta": {"key": "iifname"}}, f"@{port_set}")
        st.rule("bridge", "prerouting", [ibr, _match(_payload("ip", "daddr"), "@in_iso"),
                                         *to_host])
        st.rule("bridge", "prerouting", [ibr, _match(_payload("ip", "saddr"), "@eg_iso"),
                                         _match(_payload("ip", "daddr"), "@local"), *to_host])
        st.rule("inet", "output", [_match({"meta": {"key": "oifname"}}, br),
                                   _match(_payload("icmp", "type"), "redirect"), {"drop": None}])


def compile_policies(network: str, policies: Sequence[NetworkPolicy],
                     namespaces: Mapping[str, Namespace], local: Sequence[EndpointInfo],
                     remote: Sequence[EndpointInfo] = ()) -> Compiled:
    st = NftState(table_name(network))
    bridges: dict[str, tuple[str, set[str]]] = {}
    for ep in local:
        if ep.bridge and ep.bridge_mac and ep.host_ifname:
            bridges.setdefault(ep.bridge, (ep.bridge_mac, set()))[1].add(ep.host_ifname)
    _base(st, bridges)
    everyone = [*local, *remote]
    plans: dict[str, dict[str, EndpointPlan]] = {"ingress": {}, "egress": {}}
    counters: dict[str, tuple[str, str, str]] = {}
    made_sets: set[str] = set()
    st.sets[("bridge", "local")] = SetDef("ipv4_addr", frozenset(
        str(a) for ep in local for a in ep.addresses))
    iso: dict[str, set[str]] = {"ingress": set(), "egress": set()}
    for d in ("ingress", "egress"):
        field = "saddr" if d == "ingress" else "daddr"
        verdicts = []
        for ep in local:
            sel = [p for p in policies if _TYPE[d] in p.policy_types
                   and p.selects(ep.namespace, ep.label_map)]
            if not sel:
                continue
            keys = tuple(p.key for p in sel)
            if any(r.allows_all for p in sel for r in _rules_of(p, d)):
                plans[d][ep.key] = EndpointPlan(keys, False)
                continue
            eid = short_id(ep.key)
            chain = f"{'in' if d == 'ingress' else 'out'}-{eid}"
            plans[d][ep.key] = EndpointPlan(keys, True, chain)
            st.chains[("inet", chain)] = ChainDef()
            for p in sel:
                pid = short_id(p.key, 8)
                for ri, rule in enumerate(_rules_of(p, d)):
                    peer_expr: list[dict[str, Any]] = []
                    if rule.peers:
                        set_name = f"p{pid}-{_D[d]}{ri}"
                        if set_name not in made_sets:
                            made_sets.add(set_name)
                            nets = [n for peer in rule.peers
                                    for n in peer_addresses(peer, p.namespace, everyone,
                                                            namespaces)]
                            st.sets[("inet", set_name)] = SetDef("ipv4_addr", _elements(nets),
                                                                 interval=True)
                        peer_expr = [_match(_payload("ip", field), f"@{set_name}")]
                    for port in rule.ports or (None,):
                        pm = _port_match(port) if port is not None else []
                        st.rule("inet", chain, [*peer_expr, *pm, {"return": None}])
            for p in sel:
                cname = f"pd-{short_id(p.key, 8)}-{_D[d]}"
                st.counters.add(("inet", cname))
                counters[cname] = ("policy", p.key, d)
                st.rule("inet", chain, [{"counter": cname}])
            cname = f"ed-{eid}-{_D[d]}"
            st.counters.add(("inet", cname))
            counters[cname] = ("endpoint", ep.key, d)
            st.rule("inet", chain, [{"counter": cname}, {"drop": None}])
            for a in ep.addresses:
                verdicts.append((str(a), chain))
                iso[d].add(str(a))
        st.sets[("inet", d)] = SetDef("ipv4_addr", verdicts=tuple(sorted(verdicts)))
    # forward: conntrack only once some pod is isolated (no cost while nothing is)
    st.chains[("inet", "forward")] = ChainDef(hook=("filter", "forward", 0))
    if iso["ingress"] or iso["egress"]:
        st.rule("inet", "forward", [_match({"ct": {"key": "state"}},
                                           ["established", "related"], "in"), {"accept": None}])
    st.rule("inet", "forward", [{"vmap": {"key": _payload("ip", "saddr"), "data": "@egress"}}])
    st.rule("inet", "forward", [{"vmap": {"key": _payload("ip", "daddr"), "data": "@ingress"}}])
    st.sets[("bridge", "in_iso")] = SetDef("ipv4_addr", frozenset(iso["ingress"]))
    st.sets[("bridge", "eg_iso")] = SetDef("ipv4_addr", frozenset(iso["egress"]))
    return Compiled(st, plans["ingress"], plans["egress"], counters)
