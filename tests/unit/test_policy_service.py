"""policy.* ops: whole-or-nothing apply, persistence, rollback on engine failure, explain."""

from __future__ import annotations

import json
import threading
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import attrs
import pytest
import yaml

from fabric.api import Endpoint, NetworkContext, NetworkSpec, Node, Workload
from fabric.errors import ConfigError, NotFound, PolicyError
from fabric.policy.allow_all import AllowAllPolicy
from fabric.policy.service import POLICY_FILE, handle_policy_op, load_saved

DOCS = list(yaml.safe_load_all("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: quiet}
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Egress]}
"""))


class FakeNetwork:
    def __init__(self, tmp: Path, engine=None) -> None:
        spec = NetworkSpec("pol", cidr=IPv4Network("10.9.0.0/16"),
                           backend="fake")
        self.ctx = NetworkContext(spec, Node("n1", IPv4Address("198.18.0.1"), "eth0", 1500), tmp)
        self.policy = engine or Recording(self.ctx)
        self.eps = [self._ep("db", "10.9.0.2", {"app": "db"}),
                    self._ep("web", "10.9.0.3", {"app": "web"})]
        # the agent's workload records, behind the seam fabric.agent.network offers
        self.lock = threading.RLock()
        self._workloads = {e.workload.handle.key(): {"labels": dict(e.workload.labels)}
                           for e in self.eps}
        self.saved = 0

    @staticmethod
    def _ep(name: str, ip: str, labels: dict[str, str]) -> Endpoint:
        wl = Workload(f"c-{name}-0000", "eth0", "/nonexistent", name, "default", labels)
        return Endpoint(wl, "", "", (IPv4Interface(f"{ip}/24"),), None, (), 1500)

    def endpoints(self) -> list[Endpoint]:
        return [attrs.evolve(e, workload=attrs.evolve(
            e.workload, labels=self._workloads[e.workload.handle.key()]["labels"]))
            for e in self.eps]

    def set_workload_labels(self, key: str, labels: dict[str, str]) -> dict[str, str]:
        old = self._workloads[key]["labels"]
        self._workloads[key]["labels"] = dict(labels)
        self.saved += 1
        return old


class Recording(AllowAllPolicy):
    """Keeps what it is given, like an enforcing engine would (no kernel)."""

    name = "recording"


class Refusing(Recording):
    def set_policies(self, policies) -> None:
        raise PolicyError("nft rejected the rules: boom")


def test_apply_list_delete_persist(tmp_path: Path) -> None:
    net = FakeNetwork(tmp_path)
    res = handle_policy_op(net, "policy.apply", {"documents": DOCS})
    assert res["created"] == ["NetworkPolicy default/db", "NetworkPolicy default/quiet"]
    assert len(net.policy._policies) == 2
    again = handle_policy_op(net, "policy.apply", {"documents": DOCS[:1]})
    assert again["unchanged"] == ["NetworkPolicy default/db"]
    saved = json.loads((tmp_path / POLICY_FILE).read_text())
    assert [d["metadata"]["name"] for d in saved] == ["db", "quiet"]
    assert [p.name for p in load_saved(tmp_path)] == ["db", "quiet"]
    rows = handle_policy_op(net, "policy.list", {})
    assert rows[0]["podSelector"] == "app=db" and rows[1]["policyTypes"] == ["Egress"]
    handle_policy_op(net, "policy.delete", {"name": "default/quiet"})
    assert [p.name for p in load_saved(tmp_path)] == ["db"]
    with pytest.raises(NotFound):
        handle_policy_op(net, "policy.delete", {"name": "quiet"})


def with_db_policy(tmp: Path) -> tuple[FakeNetwork, str]:
    """A network with DOCS[0] applied, and the saved policy file's text."""
    net = FakeNetwork(tmp)
    handle_policy_op(net, "policy.apply", {"documents": DOCS[:1]})
    return net, (tmp / POLICY_FILE).read_text()


def test_invalid_documents_change_nothing(tmp_path: Path) -> None:
    net, before = with_db_policy(tmp_path)
    bad = json.loads(json.dumps(DOCS[1]))
    bad["spec"]["podSelector"] = {"matchLabels": {"app": ["x"]}}
    with pytest.raises(PolicyError, match=r"spec\.podSelector\.matchLabels\.app"):
        handle_policy_op(net, "policy.apply", {"documents": [DOCS[0], bad]})
    assert (tmp_path / POLICY_FILE).read_text() == before
    with pytest.raises(ConfigError):
        handle_policy_op(net, "policy.apply", {"documents": "not a list"})


def test_engine_failure_restores_previous_policies(tmp_path: Path) -> None:
    net, before = with_db_policy(tmp_path)
    net.policy = Refusing(net.ctx)
    with pytest.raises(PolicyError, match="boom"):
        handle_policy_op(net, "policy.apply", {"documents": DOCS[1:]})
    assert (tmp_path / POLICY_FILE).read_text() == before


def test_explain(tmp_path: Path) -> None:
    net = FakeNetwork(tmp_path)
    handle_policy_op(net, "policy.apply", {"documents": DOCS})
    out = handle_policy_op(net, "policy.explain", {"pod": "default/db"})
    assert out["enforcing"] is True
    assert out["ingress"]["policies"] == ["default/db"] and out["ingress"]["isolated"]
    (rule,) = out["ingress"]["allowed"]
    assert rule["addresses"] == ["10.9.0.3/32"] and rule["ports"] == ["TCP/5432"]
    assert out["egress"]["summary"].startswith("isolated: everything denied")
    web = handle_policy_op(net, "policy.explain", {"pod": "10.9.0.3"})
    assert not web["ingress"]["isolated"] and web["pod"] == "default/web"
    with pytest.raises(NotFound):
        handle_policy_op(net, "policy.explain", {"pod": "nobody"})
    with pytest.raises(ConfigError):
        handle_policy_op(net, "policy.nope", {})


def test_engine_none_refuses_apply(tmp_path: Path) -> None:
    net = FakeNetwork(tmp_path, engine=AllowAllPolicy(FakeNetwork(tmp_path).ctx))
    with pytest.raises(PolicyError, match="enforces nothing") as err:
        handle_policy_op(net, "policy.apply", {"documents": DOCS})
    assert "--policy nftables" in (err.value.fix or "")
    assert not (tmp_path / POLICY_FILE).exists()
    assert handle_policy_op(net, "policy.list", {}) == []


class Failing(Recording):
    def endpoint_added(self, endpoint) -> None:
        raise PolicyError("nft rejected the rules: boom")


def test_label_changes_record_and_engine(tmp_path: Path) -> None:
    net = FakeNetwork(tmp_path)
    handle_policy_op(net, "policy.apply", {"documents": DOCS})
    res = handle_policy_op(net, "policy.label", {"pod": "web", "labels": {
        "app": "db", "tier": "front", "port.netfabric.io/pg": "5432"}})
    assert res == {"pod": "default/web", "labels": {"app": "db", "tier": "front",
                                                    "port.netfabric.io/pg": "5432"}}
    assert net._workloads["c-web-0000/eth0"]["labels"]["app"] == "db" and net.saved == 1
    assert net.policy._endpoints["c-web-0000/eth0"].workload.labels["tier"] == "front"
    out = handle_policy_op(net, "policy.explain", {"pod": "web"})
    assert out["ingress"]["policies"] == ["default/db"]  # now selected as app=db
    res = handle_policy_op(net, "policy.label", {"pod": "web", "labels": {"tier": None}})
    assert "tier" not in res["labels"]


@pytest.mark.parametrize("labels, match", [
    ({"app": "no spaces"}, "label value"),
    ({"bad key!": "x"}, "label key"),
    ({}, "no label to change"),
    ({"port.netfabric.io/pg": "huge"}, "is not a port"),
])
def test_label_refuses_bad_input(tmp_path: Path, labels, match) -> None:
    net = FakeNetwork(tmp_path)
    with pytest.raises((PolicyError, ConfigError), match=match):
        handle_policy_op(net, "policy.label", {"pod": "web", "labels": labels})
    assert net._workloads["c-web-0000/eth0"]["labels"] == {"app": "web"} and net.saved == 0


def test_label_rolls_back_when_the_engine_refuses(tmp_path: Path) -> None:
    net = FakeNetwork(tmp_path)
    net.policy = Failing(net.ctx)
    with pytest.raises(PolicyError, match="boom"):
        handle_policy_op(net, "policy.label", {"pod": "web", "labels": {"app": "x"}})
    assert net._workloads["c-web-0000/eth0"]["labels"] == {"app": "web"}
    with pytest.raises(NotFound):
        handle_policy_op(net, "policy.label", {"pod": "nobody", "labels": {"a": "b"}})
