"""Compilation to nftables state, and the incremental batches between states."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

from fabric.policy.compile import EndpointInfo, compile_policies, short_id
from fabric.policy.load import load_text
from fabric.policy.nftstate import diff_batch

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}, {namespaceSelector: {matchLabels: {t: b}}},
           {ipBlock: {cidr: 172.16.0.0/12, except: [172.16.0.0/16]}}]
    ports: [{port: 5432}, {protocol: UDP, port: 900, endPort: 910}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open}
spec:
  podSelector: {matchLabels: {app: open}}
  ingress: [{}]
---
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {t: b}}
"""


def ep(name: str, ip: str, labels: dict[str, str], ns: str = "default", node: str = "",
       br: str = "pol.br") -> EndpointInfo:
    return EndpointInfo(f"{name}/eth0", (IPv4Address(ip),), ns, tuple(sorted(labels.items())),
                        name, f"nfv{name}" if not node else "", br if not node else "",
                        "aa:bb:cc:dd:ee:ff" if not node else "", node)


def build(local, remote=()):
    objs = load_text(POLICIES)
    pols = [o for o in objs if o.__class__.__name__ == "NetworkPolicy"]
    nss = {o.name: o for o in objs if o.__class__.__name__ == "Namespace"}
    return compile_policies("pol", pols, nss, local, remote)


LOCAL = [ep("db", "10.9.0.2", {"app": "db"}), ep("web", "10.9.0.3", {"app": "web"}),
         ep("open", "10.9.0.4", {"app": "open"})]
REMOTE = [ep("web2", "10.9.1.2", {"app": "web"}, node="n2"),
          ep("x", "10.9.1.3", {"app": "x"}, ns="team", node="n2"),
          ep("y", "10.9.1.4", {"app": "web"}, ns="other", node="n2")]


def test_only_selected_pods_are_isolated() -> None:
    c = build(LOCAL, REMOTE)
    assert c.ingress["db/eth0"].isolated and c.ingress["db/eth0"].policies == ("default/db",)
    assert "web/eth0" not in c.ingress  # selected by nothing
    assert not c.ingress["open/eth0"].isolated  # selected, but a rule allows everything
    vmap = dict(c.state.sets[("inet", "ingress")].verdicts)
    assert vmap == {"10.9.0.2": f"in-{short_id('db/eth0')}"}
    assert c.state.sets[("bridge", f"iso-{short_id('pol.br', 8)}")].elements == {"10.9.0.2"}


def test_peer_set_holds_pods_of_every_node_and_blocks() -> None:
    c = build(LOCAL, REMOTE)
    (name,) = [k[1] for k in c.state.sets if k[0] == "inet" and k[1].startswith("p")]
    elems = c.state.sets[("inet", name)].elements
    # web (local), web2 (remote, same namespace), x (namespace team has t=b); not y (ns other)
    nets = [IPv4Network(e if isinstance(e, str) else f"{e[1]}/{e[2]}") for e in elems]

    def has(ip: str) -> bool:
        return any(IPv4Address(ip) in n for n in nets)

    assert all(has(a) for a in ("10.9.0.3", "10.9.1.2", "10.9.1.3", "172.17.0.1", "172.31.9.9"))
    assert not any(has(a) for a in ("10.9.1.4", "10.9.0.2", "172.16.3.4", "172.32.0.1"))


def test_chain_has_rule_per_port_then_counted_drop() -> None:
    c = build(LOCAL, REMOTE)
    rules = [json.loads(r) for r in c.state.chains[("inet", f"in-{short_id('db/eth0')}")].rules]
    assert len(rules) == 4
    assert rules[0][-1] == {"return": None} and rules[1][-1] == {"return": None}
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                      "right": {"range": [900, 910]}}} in rules[1]
    assert rules[3] == [{"counter": f"ed-{short_id('db/eth0')}-i"}, {"drop": None}]
    kinds = {v[0] for v in c.counters.values()}
    assert kinds == {"policy", "endpoint"}


def test_pod_arrival_changes_set_elements_only() -> None:
    a = build(LOCAL, REMOTE)
    b = build(LOCAL, [*REMOTE, ep("web3", "10.9.2.9", {"app": "web"}, node="n3")])
    batch = diff_batch(a.state, b.state)
    ops = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in batch]
    assert ("add", "element") in ops
    assert set(ops) == {("add", "table"), ("add", "element")}  # no chain/rule is touched


def test_identical_state_has_nothing_but_table_adds() -> None:
    a, b = build(LOCAL, REMOTE), build(LOCAL, REMOTE)
    assert a.state == b.state
    assert all("table" in c["add"] for c in diff_batch(a.state, b.state))


def test_removing_a_pod_unhooks_before_deleting_its_chain() -> None:
    a = build(LOCAL)
    b = build(LOCAL[1:])
    batch = diff_batch(a.state, b.state)
    text = [json.dumps(c) for c in batch]
    chain = f"in-{short_id('db/eth0')}"
    unmap = next(i for i, t in enumerate(text) if '"delete": {"element"' in t
                 and '"ingress"' in t)
    flush = text.index(json.dumps({"flush": {"chain": {"family": "inet", "table": "netfabric-pol",
                                                        "name": chain}}}))
    delete = text.index(json.dumps({"delete": {"chain": {"family": "inet",
                                                         "table": "netfabric-pol",
                                                         "name": chain}}}))
    assert unmap < flush < delete
    assert any('"delete": {"counter"' in t for t in text)


def test_first_batch_replaces_whatever_is_there() -> None:
    batch = diff_batch(None, build(LOCAL).state)
    assert batch[:4] == [
        {"add": {"table": {"family": "inet", "name": "netfabric-pol"}}},
        {"delete": {"table": {"family": "inet", "name": "netfabric-pol"}}},
        {"add": {"table": {"family": "bridge", "name": "netfabric-pol"}}},
        {"delete": {"table": {"family": "bridge", "name": "netfabric-pol"}}}]


def test_thousand_rules_compile_to_one_batch() -> None:
    ports = ", ".join(f"{{port: {p}}}" for p in range(1000, 2000))
    text = f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: big}}
spec:
  podSelector: {{}}
  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{ports}]}}]
"""
    pols = load_text(text)
    c = compile_policies("pol", pols, {}, LOCAL[:1])
    chain = c.state.chains[("inet", f"in-{short_id('db/eth0')}")]
    assert len(chain.rules) == 1002
    assert len([x for x in diff_batch(None, c.state) if "rule" in x.get("add", {})]) > 1000


def test_combined_selectors_are_anded() -> None:
    from fabric.policy.compile import peer_addresses
    from fabric.policy.model import LabelSelector, Namespace, PolicyPeer, Requirement

    nss = {"team": Namespace("team", (("t", "b"),))}
    everyone = [*LOCAL, *REMOTE, ep("z", "10.9.1.9", {"app": "web"}, ns="team", node="n2")]
    both = PolicyPeer(pod_selector=LabelSelector((("app", "web"),)),
                      namespace_selector=LabelSelector((("t", "b"),)))
    assert [str(n) for n in peer_addresses(both, "default", everyone, nss)] == ["10.9.1.9/32"]
    by_name = PolicyPeer(namespace_selector=LabelSelector(match_expressions=(
        Requirement("kubernetes.io/metadata.name", "In", ("other",)),)))
    assert [str(n) for n in peer_addresses(by_name, "default", everyone, nss)] == ["10.9.1.4/32"]
    not_web = PolicyPeer(pod_selector=LabelSelector(match_expressions=(
        Requirement("app", "NotIn", ("web",)),)))
    assert {str(n) for n in peer_addresses(not_web, "default", everyone, nss)} == {
        "10.9.0.2/32", "10.9.0.4/32"}


def _rules(c, chain: str) -> list[list[dict]]:
    return [json.loads(r) for r in c.state.chains[("inet", chain)].rules]


def test_same_host_flows_of_isolated_pods_go_through_the_host_both_ways() -> None:
    pre = [json.loads(r) for r in build(LOCAL, REMOTE).state.chains[("bridge", "prerouting")]
           .rules]
    iso = f"@iso-{short_id('pol.br', 8)}"

    def has(rule: list, field: str) -> bool:
        return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}},
                          "right": iso}} in rule

    to_iso, from_iso = [r for r in pre if has(r, "daddr")], [r for r in pre if has(r, "saddr")]
    assert len(to_iso) == 1 and len(from_iso) == 1  # into and out of an isolated pod
    assert "iifname" not in json.dumps(to_iso)  # from any port: an overlay's too
    assert all({"mangle": {"key": {"meta": {"key": "pkttype"}}, "value": "host"}} in r
               for r in pre)


def test_reply_chain_mirrors_the_original_with_swapped_fields() -> None:
    c = build(LOCAL, REMOTE)
    eid = short_id("db/eth0")
    orig, reply = _rules(c, f"in-{eid}"), _rules(c, f"rin-{eid}")
    assert len(orig) == len(reply) == 4
    assert json.dumps(orig[0]).replace('"saddr"', '"daddr"').replace('"dport"', '"sport"') \
        == json.dumps(reply[0])
    assert dict(c.state.sets[("inet", "ingress_r")].verdicts) == {"10.9.0.2": f"rin-{eid}"}


def test_generation_marks_established_connections() -> None:
    a = compile_policies("pol", load_text(POLICIES)[:1], {}, LOCAL, generation=7)
    fwd = _rules(a, "forward")
    assert fwd[0][-1] == {"accept": None}  # related
    assert any({"jump": {"target": "reply-check"}} in r for r in fwd)
    assert fwd[-1] == [{"goto": {"target": "mark"}}]
    (gen,) = _rules(a, "gen")
    assert gen[0]["match"]["right"] == 7 << 20
    b = compile_policies("pol", load_text(POLICIES)[:1], {}, LOCAL, generation=8)
    changed = {k for k in a.state.chains if a.state.chains[k] != b.state.chains[k]}
    assert changed == {("inet", "gen"), ("inet", "mark")}  # one generation, two rules
    pods = compile_policies("pol", load_text(POLICIES)[:1], {}, LOCAL, generation=7,
                            cidr=IPv4Network("10.9.0.0/16"))
    marking = [r for r in _rules(pods, "forward") if {"goto": {"target": "mark"}} in r]
    assert len(marking) == 4 and all('"10.9.0.0", "len": 16' in json.dumps(r) for r in marking)
    none = compile_policies("pol", [], {}, LOCAL)
    assert not any("ct" in json.dumps(r) for r in _rules(none, "forward"))


NAMED = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: pg}, {protocol: UDP, port: dns}]}]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: pg}]}]
"""


def test_named_ports_resolve_per_destination_pod() -> None:
    db = ep("db", "10.9.0.2", {"app": "db", "port.netfabric.io/pg": "5432",
                               "port.netfabric.io/dns": "53-UDP"})
    db2 = ep("db2", "10.9.1.2", {"app": "db", "port.netfabric.io/pg": "6432"}, node="n2")
    other = ep("x", "10.9.1.3", {"app": "x", "port.netfabric.io/pg": "7000"}, node="n2")
    web = ep("web", "10.9.0.3", {"app": "web"})
    c = compile_policies("pol", load_text(NAMED), {}, [db, web], [db2, other])
    db_in = json.dumps(_rules(c, f"in-{short_id('db/eth0')}"))
    assert '"right": 5432' in db_in and '"right": 53' in db_in and '"udp"' in db_in
    web_in = _rules(c, f"in-{short_id('web/eth0')}")
    assert len(web_in) == 2  # web declares no port: only the counters and the drop
    web_out = _rules(c, f"out-{short_id('web/eth0')}")
    sets = {r[0]["match"]["right"][1:]: r[2]["match"]["right"] for r in web_out[:-2]}
    assert sorted(sets.values()) == [5432, 6432]  # x declares pg but is not app=db
    for name, port in sets.items():
        want = {"10.9.0.2"} if port == 5432 else {"10.9.1.2"}
        assert c.state.sets[("inet", name)].elements == want
