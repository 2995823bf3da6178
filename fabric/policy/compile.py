"""Compile policies + known endpoints into the nftables state of one network.

Layout of table ``netfabric-<network>`` (families ``inet`` and ``bridge``):

``inet`` chain ``forward`` (hook forward; the ct rules only while some pod is isolated)::

    ct state related accept
    ct state established jump gen                  # ct mark holds this generation: accept
    ct state established ct direction reply jump reply-check ; ... goto mark
    ct state new tcp (not a SYN) jump reply-check  # mid-stream: both directions must pass
    ip saddr vmap @egress                          # local pod isolated for egress -> out-<ep>
    ip daddr vmap @ingress                         # local pod isolated for ingress -> in-<ep>
    ip saddr|daddr <pod cidr> goto mark            # allowed: ct mark = this generation

``reply-check`` judges a reply by the connection's original direction through the maps
``egress_r``/``ingress_r`` and chains ``rout-<ep>``/``rin-<ep>`` (:mod:`.rules`). So a rule
change (new generation) re-judges every established connection at its next packet.

Per isolated endpoint, chain ``in-<ep>`` / ``out-<ep>``: one rule per (policy rule, port)
``ip saddr @p<pol>-i<n> [meta l4proto P th dport X] return``, then a counter per
selecting policy and ``counter ed-<ep>-in drop``. Sets ``p<pol>-i<n>`` hold the
addresses a rule's peers select (pods, on any node, and ipBlocks minus excepts), so a
pod coming or going only changes set elements.

Same-host pods on a bridge never reach the ``inet`` hooks unless bridge netfilter is on,
and this kernel has no bridge conntrack. The ``bridge`` chain ``prerouting`` therefore
hands every IPv4 frame to an isolated pod (from any port) or from one to the host's IP
stack (destination MAC set to the bridge's, pkttype host), so both directions. They are
routed back onto the bridge through ``forward`` with conntrack, exactly like cross-host
traffic (TTL drops by one; ICMP redirects for them are dropped in ``output``). With
bridge netfilter on, the same frames are seen by the same rules: the outcome is equal.
The ``bridge`` chain ``forward`` drops whatever else the bridge would forward to an
ingress-isolated or from an egress-isolated pod's port (IPv6 link-local, broadcast,
multicast), ARP excepted.
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
from fabric.policy.rules import match, named_destinations, payload, rule_pairs

__all__ = ["EndpointInfo", "EndpointPlan", "Compiled", "compile_policies", "table_name",
           "short_id", "peer_addresses", "MARK_MASK", "MARK_SHIFT",
           "MARK_GENERATIONS"]

Direction = Literal["ingress", "egress"]
# ct mark bits holding the rule generation a connection was last judged under (the low
# 20 bits stay free for others); generations wrap after 4095 changes
MARK_MASK = 0xFFF00000
MARK_SHIFT = 20
MARK_GENERATIONS = 4096
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


def _to_host(mac: str) -> list[dict[str, Any]]:
    return [{"mangle": {"key": payload("ether", "daddr"), "value": mac}},
            {"mangle": {"key": {"meta": {"key": "pkttype"}}, "value": "host"}}]


def _base(st: NftState, bridges: Mapping[str, tuple[str, set[str]]]) -> None:
    for name in ("ingress", "egress", "ingress_r", "egress_r"):
        st.sets[("inet", name)] = SetDef("ipv4_addr", verdicts=())
    st.chains[("bridge", "prerouting")] = ChainDef(hook=("filter", "prerouting", 0))
    # What the bridge still forwards to or from an isolated pod's port is not IPv4 unicast
    # (that went to the host below): IPv6 (every pod has a link-local address), broadcast,
    # multicast, other EtherTypes. Only ARP may pass: fail closed.
    st.chains[("bridge", "forward")] = ChainDef(hook=("filter", "forward", 0))
    not_arp = match(payload("ether", "type"), "arp", "!=")
    for key, port_set in (("oifname", "in_ports"), ("iifname", "eg_ports")):
        st.sets[("bridge", port_set)] = SetDef("ifname")
        st.rule("bridge", "forward", [match({"meta": {"key": key}}, f"@{port_set}"), not_arp,
                                      {"counter": None}, {"drop": None}])
    st.chains[("inet", "output")] = ChainDef(hook=("filter", "output", 0))
    for br, (mac, ports) in sorted(bridges.items()):
        bid = short_id(br, 8)
        st.sets[("bridge", f"ports-{bid}")] = SetDef("ifname", frozenset(ports))
        st.sets[("bridge", f"iso-{bid}")] = SetDef("ipv4_addr")
        # Every IPv4 frame to or from an isolated pod goes through the host, in both
        # directions, so conntrack sees each connection from its first packet: bridge
        # netfilter (net.bridge.bridge-nf-call-iptables) is neither needed nor harmful.
        # "To" from any port: a non-pod port (an L2 overlay's) is policed the same way.
        st.rule("bridge", "prerouting", [match(payload("ip", "daddr"), f"@iso-{bid}"),
                                         *_to_host(mac)])
        st.rule("bridge", "prerouting", [match({"meta": {"key": "iifname"}}, f"@ports-{bid}"),
                                         match(payload("ip", "saddr"), f"@iso-{bid}"),
                                         *_to_host(mac)])
        st.rule("inet", "output", [match({"meta": {"key": "oifname"}}, br),
                                   match(payload("icmp", "type"), "redirect"), {"drop": None}])


def _forward(st: NftState, isolated: bool, generation: int,
             cidr: IPv4Network | None) -> None:
    """The forward hook; with a pod isolated, conntrack plus the generation mark.

    Connections allowed under the rules of generation G carry G in their ct mark and pass
    on the fast path; after any change (G+1) each one is re-judged once, at its next
    packet, by its original direction: forbidden ones stop there."""
    fwd = ("inet", "forward")
    st.chains[fwd] = ChainDef(hook=("filter", "forward", 0))
    for name in ("gen", "mark", "reply-check"):
        st.chains[("inet", name)] = ChainDef()
    ct_state = {"ct": {"key": "state"}}
    mark = {"ct": {"key": "mark"}}
    value = (generation % MARK_GENERATIONS or 1) << MARK_SHIFT

    def to_mark(*expr: dict[str, Any]) -> None:
        """goto mark, for pod traffic only: other forwarded flows keep their ct marks."""
        if cidr is None:
            st.rule("inet", "forward", [*expr, {"goto": {"target": "mark"}}])
            return
        net = {"prefix": {"addr": str(cidr.network_address), "len": cidr.prefixlen}}
        for field in ("saddr", "daddr"):
            st.rule("inet", "forward", [*expr, match(payload("ip", field), net),
                                        {"goto": {"target": "mark"}}])
    if isolated:
        est = match(ct_state, ["established"], "in")
        reply = match({"ct": {"key": "direction"}}, "reply")
        st.rule("inet", "forward", [match(ct_state, ["related"], "in"), {"accept": None}])
        st.rule("inet", "forward", [est, {"jump": {"target": "gen"}}])
        st.rule("inet", "forward", [est, reply, {"jump": {"target": "reply-check"}}])
        to_mark(est, reply)
        # a TCP segment that opens no connection (tracking started mid-stream, e.g. it
        # predates isolation): its originator is unknown, so both directions must be allowed
        st.rule("inet", "forward", [match(ct_state, ["new"], "in"),
                                    match({"meta": {"key": "l4proto"}}, "tcp"),
                                    match({"&": [payload("tcp", "flags"), ["syn", "ack"]]},
                                          "syn", "!="),
                                    {"jump": {"target": "reply-check"}}])
        st.rule("inet", "gen", [match({"&": [mark, MARK_MASK]}, value), {"accept": None}])
        st.rule("inet", "mark", [{"mangle": {"key": mark, "value": {
            "|": [{"&": [mark, MARK_MASK ^ 0xFFFFFFFF]}, value]}}}, {"accept": None}])
    st.rule("inet", "reply-check", [{"vmap": {"key": payload("ip", "daddr"),
                                              "data": "@egress_r"}}])
    st.rule("inet", "reply-check", [{"vmap": {"key": payload("ip", "saddr"),
                                              "data": "@ingress_r"}}])
    st.rule("inet", "forward", [{"vmap": {"key": payload("ip", "saddr"), "data": "@egress"}}])
    st.rule("inet", "forward", [{"vmap": {"key": payload("ip", "daddr"), "data": "@ingress"}}])
    if isolated:
        to_mark()


def compile_policies(network: str, policies: Sequence[NetworkPolicy],
                     namespaces: Mapping[str, Namespace], local: Sequence[EndpointInfo],
                     remote: Sequence[EndpointInfo] = (), generation: int = 1,
                     cidr: IPv4Network | None = None) -> Compiled:
    """The whole desired state; ``cidr`` (the pod network) limits ct marking to pod flows."""
    st = NftState(table_name(network))
    bridges: dict[str, tuple[str, set[str]]] = {}
    for ep in local:
        if ep.bridge and ep.bridge_mac and ep.host_ifname:
            bridges.setdefault(ep.bridge, (ep.bridge_mac, set()))[1].add(ep.host_ifname)
    _base(st, bridges)
    everyone = [*local, *remote]
    plans: dict[str, dict[str, EndpointPlan]] = {"ingress": {}, "egress": {}}
    counters: dict[str, tuple[str, str, str]] = {}
    iso: set[str] = set()
    iso_ports: dict[str, set[str]] = {"ingress": set(), "egress": set()}
    iso_on: dict[str, set[str]] = {br: set() for br in bridges}  # bridge -> isolated pods

    def peer_set(name: str, nets: Iterable[IPv4Network]) -> str:
        if ("inet", name) not in st.sets:
            st.sets[("inet", name)] = SetDef("ipv4_addr", _elements(nets), interval=True)
        return name

    for d in ("ingress", "egress"):
        verdicts: list[tuple[str, str]] = []
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
            st.chains[("inet", f"r{chain}")] = ChainDef()
            for p in sel:
                pid = short_id(p.key, 8)
                for ri, rule in enumerate(_rules_of(p, d)):
                    base = f"p{pid}-{_D[d]}{ri}"
                    nets = ([n for peer in rule.peers
                             for n in peer_addresses(peer, p.namespace, everyone, namespaces)]
                            if rule.peers else None)

                    def named(port: PolicyPort, base: str = base,
                              nets: list[IPv4Network] | None = nets) -> dict[int, str]:
                        dests = named_destinations(
                            port, ((e.addresses, e.label_map) for e in everyone), nets)
                        return {num: peer_set(f"{base}-{port.protocol.lower()}-{num}", addrs)
                                for num, addrs in dests.items()}

                    pset = peer_set(base, nets) if nets is not None else None
                    for orig, rep in rule_pairs(d, pset, rule.ports, ep.label_map, named):
                        st.rule("inet", chain, [*orig, {"return": None}])
                        st.rule("inet", f"r{chain}", [*rep, {"return": None}])
            for c in (chain, f"r{chain}"):
                for p in sel:
                    cname = f"pd-{short_id(p.key, 8)}-{_D[d]}"
                    st.counters.add(("inet", cname))
                    counters[cname] = ("policy", p.key, d)
                    st.rule("inet", c, [{"counter": cname}])
                cname = f"ed-{eid}-{_D[d]}"
                st.counters.add(("inet", cname))
                counters[cname] = ("endpoint", ep.key, d)
                st.rule("inet", c, [{"counter": cname}, {"drop": None}])
            for a in ep.addresses:
                verdicts.append((str(a), chain))
                iso.add(str(a))
            if ep.bridge in bridges:
                iso_ports[d].add(ep.host_ifname)
                iso_on[ep.bridge].update(str(a) for a in ep.addresses)
        st.sets[("inet", d)] = SetDef("ipv4_addr", verdicts=tuple(sorted(verdicts)))
        st.sets[("inet", f"{d}_r")] = SetDef("ipv4_addr", verdicts=tuple(sorted(
            (a, f"r{c}") for a, c in verdicts)))
    _forward(st, bool(iso), generation, cidr)
    for br, addrs in iso_on.items():
        st.sets[("bridge", f"iso-{short_id(br, 8)}")] = SetDef("ipv4_addr", frozenset(addrs))
    st.sets[("bridge", "in_ports")] = SetDef("ifname", frozenset(iso_ports["ingress"]))
    st.sets[("bridge", "eg_ports")] = SetDef("ifname", frozenset(iso_ports["egress"]))
    return Compiled(st, plans["ingress"], plans["egress"], counters)
