"""`fabric policy` against a scripted agent socket: requests sent, output, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric.cli import main
from fabric.cni.testing import FakeAgent, fail, ok

POLICY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db}
spec: {podSelector: {matchLabels: {app: db}}}
"""


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "agent.sock"


def test_apply_sends_validated_documents(sock: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    with FakeAgent(sock, lambda req: ok({"created": ["NetworkPolicy default/db"]})) as agent:
        assert main(["policy", "apply", "-f", str(f), "--socket", str(sock),
                     "--network", "pods"]) == 0
    (req,) = agent.requests
    assert req["op"] == "policy.apply" and req["network"] == "pods"
    assert req["documents"][0]["metadata"]["name"] == "db"
    assert "NetworkPolicy default/db created" in capsys.readouterr().out


def test_bad_file_never_reaches_the_agent(sock: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY.replace("app: db", "app: [db]"))
    with FakeAgent(sock, lambda req: ok()) as agent:
        assert main(["policy", "apply", "-f", str(f), "--socket", str(sock)]) == 1
    assert agent.requests == []
    err = capsys.readouterr().err
    assert "spec.podSelector.matchLabels.app" in err and "Traceback" not in err


def test_agent_error_is_one_line(sock: Path, capsys) -> None:
    with FakeAgent(sock, lambda req: fail("NotFound", "NetworkPolicy 'x' does not exist",
                                          "see fabric policy list")):
        assert main(["policy", "delete", "x", "--socket", str(sock)]) == 1
    assert capsys.readouterr().err.strip() == (
        "fabric: error: NetworkPolicy 'x' does not exist (see fabric policy list)")


def test_list_and_explain_render(sock: Path, capsys) -> None:
    rows = [{"kind": "NetworkPolicy", "name": "db", "namespace": "default",
             "podSelector": "app=db", "policyTypes": ["Ingress"], "ingressRules": 1,
             "egressRules": 0}, {"kind": "Namespace", "name": "team", "labels": {"t": "b"}}]
    explained = {"pod": "default/db", "key": "c/eth0", "addresses": ["10.0.0.2"],
                 "labels": {"app": "db"}, "enforcing": True, "drops": {"ingress": 3},
                 "ingress": {"isolated": True, "policies": ["default/db"], "allowed": [],
                             "summary": "isolated: everything denied (replies pass)"},
                 "egress": {"isolated": False, "policies": [], "allowed": [],
                            "summary": "not isolated: all traffic allowed"}}
    answers = {"policy.list": rows, "policy.explain": explained}
    with FakeAgent(sock, lambda req: ok(answers[req["op"]])) as agent:
        assert main(["policy", "list", "--socket", str(sock)]) == 0
        out = capsys.readouterr().out
        assert "default/db" in out and "t=b" in out
        assert main(["policy", "explain", "db", "--socket", str(sock)]) == 0
        out = capsys.readouterr().out
        assert "ingress: isolated: everything denied" in out and "dropped packets: 3" in out
        assert main(["policy", "list", "--json", "--socket", str(sock)]) == 0
        assert json.loads(capsys.readouterr().out) == rows
    assert agent.requests[1] == {"op": "policy.explain", "pod": "db"}


@pytest.mark.parametrize("argv, msg", [
    (["policy", "list", "--host", "h1"], "--host needs --lab"),
    (["policy", "list", "--lab", "x", "--socket", "/s"], "exclude each other"),
])
def test_target_errors(argv: list[str], msg: str, capsys) -> None:
    assert main(argv) == 1
    assert msg in capsys.readouterr().err


def test_unreachable_agent(tmp_path: Path, capsys) -> None:
    assert main(["policy", "list", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "fabric: error:" in capsys.readouterr().err
