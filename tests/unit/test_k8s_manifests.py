"""examples/kubernetes validates offline against the Kubernetes API models.

Every document is validated by the `kubernetes` package's model of its kind (pydantic
models since kubernetes 35: required fields, types, enums, and unknown fields refused,
as the API server does in strict field validation). Then what the fabric needs of a
DaemonSet is checked, and the agent's arguments are parsed by the real `fabric` parser.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

client = pytest.importorskip("kubernetes.client", reason="pip install kubernetes (test extra)")

from fabric.agent.config import network_from_mapping  # noqa: E402
from fabric.agent.flannel import net_conf_to_network  # noqa: E402
from fabric.cli import build_parser  # noqa: E402

DIR = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
FILES = sorted(DIR.glob("*.yaml"))
_GROUPS = {"v1": "V1", "apps/v1": "V1", "rbac.authorization.k8s.io/v1": "V1"}


def documents() -> Iterator[tuple[str, int, dict[str, Any]]]:
    for path in FILES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                yield path.name, i, doc


DOCS = list(documents())


def validate(doc: dict[str, Any]) -> Any:
    assert doc.get("apiVersion") in _GROUPS, f"unexpected apiVersion {doc.get('apiVersion')}"
    model = getattr(client, _GROUPS[doc["apiVersion"]] + doc["kind"])
    if not hasattr(model, "model_validate"):
        pytest.skip("kubernetes < 37: models do not refuse unknown fields; use >= 37")
    return model.model_validate(doc)


def test_every_manifest_file_is_found() -> None:
    assert {p.name for p in FILES} >= {"rbac.yaml", "netfabric-etcd.yaml",
                                       "netfabric-bgp.yaml", "netfabric-weave.yaml"}


@pytest.mark.parametrize(("name", "index", "doc"), DOCS,
                         ids=[f"{n}#{i}:{d.get('kind')}" for n, i, d in DOCS])
def test_document_validates_against_the_api_model(name: str, index: int, doc: dict) -> None:
    obj = validate(doc)
    assert obj.metadata.name


def test_the_validator_catches_what_it_should() -> None:
    ds = next(d for _, _, d in DOCS if d["kind"] == "DaemonSet")
    typo = json.loads(json.dumps(ds))
    typo["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(ValueError, match="hostNetwrok"):
        validate(typo)
    missing = json.loads(json.dumps(ds))
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        validate(missing)
    wrong = json.loads(json.dumps(ds))
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(ValueError, match="containerPort"):
        validate(wrong)


DAEMONSETS = [(n, d) for n, _, d in DOCS if d["kind"] == "DaemonSet"]


def test_one_daemonset_per_backend_family() -> None:
    families = {d["metadata"]["labels"]["family"] for _, d in DAEMONSETS}
    assert families == {"etcd", "bgp", "weave"}


@pytest.mark.parametrize(("name", "ds"), DAEMONSETS, ids=[n for n, _ in DAEMONSETS])
def test_daemonset_has_what_the_agent_needs(name: str, ds: dict, tmp_path: Path) -> None:
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    host = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert {"/run/netfabric", "/opt/cni/bin", "/etc/cni/net.d", "/run/netns"} <= host
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["fabric", "cni", "install"]
    args = build_parser().parse_args(init["command"][1:])
    assert str(args.bin_dir) == next(m["mountPath"] for m in init["volumeMounts"]
                                     if volumes[m["name"]]["hostPath"]["path"] == "/opt/cni/bin")
    (agent,) = pod["containers"]
    caps = agent["securityContext"].get("capabilities", {}).get("add", [])
    assert agent["securityContext"].get("privileged") or "NET_ADMIN" in caps
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for container in (init, agent):
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes, f"{container['name']}: no volume {mount['name']}"
    argv = agent["command"][1:] + agent["args"]
    up = build_parser().parse_args(argv)
    assert up.node_name == "$(NODE_NAME)" and up.metrics_addr
    assert "$(" not in "".join(a for a in agent["args"] if "NODE_" not in a
                               and "WEAVE_PEERS" not in a)  # only variables defined in env
    assert args.network == (up.name or up.backend)  # the conflist names the agent's network
    cms = {d["metadata"]["name"]: d for _, _, d in DOCS if d["kind"] == "ConfigMap"}
    if up.net_conf:  # the ConfigMap's net-conf.json is what the agent will read
        vol = next(v for v in volumes.values() if v.get("configMap"))
        data = cms[vol["configMap"]["name"]]["data"]["net-conf.json"]
        spec = network_from_mapping({**net_conf_to_network(json.loads(data)), "name": up.name})
        assert spec.backend == "vxlan"
    if up.etcd:
        assert all(u.startswith("https://") for u in up.etcd.split(","))
        assert up.etcd_cafile and up.etcd_certfile and up.etcd_keyfile


def test_rbac_binds_the_service_account_every_daemonset_uses() -> None:
    by_kind: dict[str, list[dict]] = {}
    for _, _, d in DOCS:
        by_kind.setdefault(d["kind"], []).append(d)
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"])
                for d in by_kind["ServiceAccount"]}
    bound = {(s["namespace"], s["name"]) for b in by_kind["ClusterRoleBinding"]
             for s in b["subjects"] if s["kind"] == "ServiceAccount"}
    roles = {r["metadata"]["name"] for r in by_kind["ClusterRole"]}
    assert all(b["roleRef"]["name"] in roles for b in by_kind["ClusterRoleBinding"])
    for _, ds in DAEMONSETS:
        sa = (ds["metadata"]["namespace"], ds["spec"]["template"]["spec"]["serviceAccountName"])
        assert sa in accounts and sa in bound
