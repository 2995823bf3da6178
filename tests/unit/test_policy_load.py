"""Loading NetworkPolicy documents: Kubernetes defaults, and bad input named by field."""

from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest

from fabric.errors import PolicyError
from fabric.policy.load import load_file, load_text
from fabric.policy.model import Namespace, NetworkPolicy

GOOD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector:
    matchLabels: {app: db}
    matchExpressions: [{key: tier, operator: In, values: [a, b]}]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: x}}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 5432}, {protocol: UDP, port: 53}, {port: http}, {port: 8000, endPort: 8010},
            {protocol: SCTP}]
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
"""


def pol(spec: str, meta: str = "{name: p}") -> str:
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {meta}\nspec: {spec}"


def test_good_documents() -> None:
    p, ns = load_text(GOOD)
    assert isinstance(p, NetworkPolicy) and isinstance(ns, Namespace)
    assert p.key == "prod/db" and p.policy_types == ("Ingress",)
    peers = p.ingress[0].peers
    assert peers[0].namespace_selector is None and peers[1].namespace_selector is not None
    assert peers[2].ip_block.except_ == (IPv4Network("10.1.0.0/16"),)
    ports = [x.describe() for x in p.ingress[0].ports]
    # a named port stays a name: the destination pod's port of that name, not /etc/services
    assert ports == ["TCP/5432", "UDP/53", "TCP/http", "TCP/8000-8010", "SCTP/*"]
    assert ns.labels == (("env", "prod"),)


def test_policy_types_default_like_kubernetes() -> None:
    (a,) = load_text(pol("{podSelector: {}}"))
    assert a.policy_types == ("Ingress",) and a.ingress == ()
    (b,) = load_text(pol("{podSelector: {}, egress: [{}]}"))
    assert b.policy_types == ("Ingress", "Egress")
    (c,) = load_text(pol("{podSelector: {}, policyTypes: [Egress]}"))
    assert c.policy_types == ("Egress",)


def test_json_and_list_forms(tmp_path) -> None:
    docs = [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": f"p{i}"}, "spec": {"podSelector": {}}} for i in range(3)]
    f = tmp_path / "p.json"
    f.write_text(json.dumps(docs))
    assert [p.name for p in load_file(f)] == ["p0", "p1", "p2"]
    f.write_text(json.dumps({"kind": "List", "items": docs}))
    assert len(load_file(f)) == 3


@pytest.mark.parametrize("spec, field", [
    ("{}", "spec.podSelector"),
    ("{podSelector: {matchLabels: {app: 3}}}", "spec.podSelector.matchLabels.app"),
    ("{podSelector: {matchLabels: {'bad key!': x}}}", "spec.podSelector.matchLabels"),
    ("{podSelector: {matchExpressions: [{key: a, operator: Like, values: [x]}]}}",
     "spec.podSelector.matchExpressions[0].operator"),
    ("{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
     "spec.podSelector.matchExpressions[0].values"),
    ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
     "spec.ingress[0].from[0].ipBlock.cidr"),
    ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/9]}}]}]}",
     "spec.ingress[0].from[0].ipBlock.except[0]"),
    ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
     "spec.ingress[0].from[0]"),
    ("{podSelector: {}, ingress: [{ports: [{port: Not_A_Name}]}]}",
     "spec.ingress[0].ports[0].port"),
    ("{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}",
     "spec.ingress[0].ports[0].endPort"),
    ("{podSelector: {}, egress: [{ports: [{port: 70000}]}]}", "spec.egress[0].ports[0].port"),
    ("{podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}]}",
     "spec.egress[0].ports[0].endPort"),
    ("{podSelector: {}, egress: [{ports: [{protocol: ICMP}]}]}",
     "spec.egress[0].ports[0].protocol"),
    ("{podSelector: {}, ingress: {from: []}}", "spec.ingress"),
    ("{podSelector: {}, policyTypes: [Both]}", "spec.policyTypes[0]"),
    ("{podSelector: {}, ingres: []}", "spec.ingres"),
    ("{podSelector: {}, ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]"),
    ("{podSelector: {}, ingress: [{to: []}]}", "spec.ingress[0].to"),
])
def test_bad_field_is_named(spec: str, field: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_text(pol(spec))
    assert f": {field}:" in str(err.value) or f": {field} " in str(err.value), str(err.value)
    assert "(NetworkPolicy p)" in str(err.value)


def test_one_bad_document_rejects_the_whole_file() -> None:
    text = GOOD + "---\n" + pol("{podSelector: {}, egress: [{ports: [{port: 0}]}]}")
    with pytest.raises(PolicyError, match="document 3"):
        load_text(text)


@pytest.mark.parametrize("text, what", [
    ("a: [", "not valid YAML/JSON"),
    ("", "no documents"),
    ("- 1\n", "must be a mapping"),
    ("kind: Pod\n", "kind: 'Pod' is not supported"),
    (pol("{podSelector: {}}", "{name: Bad_Name}"), "metadata.name"),
    (pol("{podSelector: {}}", "{name: a, namespace: 'x y'}"), "metadata.namespace"),
    (pol("{podSelector: {}}") + "\n---\n" + pol("{podSelector: {}}"), "appears twice"),
    ("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {}",
     "apiVersion"),
])
def test_bad_documents(text: str, what: str) -> None:
    with pytest.raises(PolicyError, match=what.replace("(", r"\(").replace(")", r"\)")):
        load_text(text)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_file(tmp_path / "nope.yaml")
