"""The agent core with the in-memory fake backend and IPAM (no root, no kernel changes)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fabric.agent.config import AgentConfig, network_from_mapping
from fabric.agent.daemon import Agent
from fabric.errors import AgentUnavailable, ConfigError, NotFound
from tests.unit.agent_util import running, start_in_thread


def make_agent(tmp_path: Path, name: str = "n1", nets=None) -> Agent:
    nets = nets or [{"backend": "fake", "network": "10.50.0.0/16", "name": "fk"}]
    cfg = AgentConfig.from_json({
        "node": {"name": name, "iface": "lo"},
        "stateDir": str(tmp_path / name),
        "networks": nets,
    })
    return Agent(cfg)


def exchange(path: Path, line: bytes) -> dict:
    """One raw line to the control socket; its decoded answer, an error or not."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n") and (chunk := s.recv(65536)):
            data += chunk
    return json.loads(data)


def call(path: Path, req: dict) -> dict:
    return exchange(path, json.dumps(req).encode() + b"\n")


def add_req(cid: str, netns: str = "/proc/self/ns/net") -> dict:
    return {"op": "cni.add", "container_id": cid, "ifname": "eth0", "netns": netns,
            "labels": {"app": "web"}, "pod_namespace": "prod"}


def test_add_is_idempotent_and_del_twice_succeeds(tmp_path: Path) -> None:
    with running(make_agent(tmp_path)) as agent:
        first = agent.dispatch(add_req("c1"))
        again = agent.dispatch(add_req("c1"))
        assert first["ips"] == again["ips"]
        other = agent.dispatch(add_req("c2"))
        assert other["ips"][0]["address"] != first["ips"][0]["address"]
        agent.dispatch({"op": "cni.check", "container_id": "c1", "ifname": "eth0"})
        agent.dispatch({"op": "cni.del", "container_id": "c1", "ifname": "eth0"})
        agent.dispatch({"op": "cni.del", "container_id": "c1", "ifname": "eth0"})
        agent.dispatch({"op": "cni.del", "container_id": "never-seen", "ifname": "eth0"})
        with pytest.raises(NotFound):
            agent.dispatch({"op": "cni.check", "container_id": "c1", "ifname": "eth0"})


def test_workloads_are_persisted_and_gc_releases(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    t = start_in_thread(agent)
    ip1 = agent.dispatch(add_req("c1"))["ips"][0]["address"]
    agent.dispatch(add_req("c2"))
    rec = json.loads((tmp_path / "n1/networks/fk/workloads.json").read_text())
    assert rec["c1/eth0"]["labels"] == {"app": "web"} and rec["c1/eth0"]["namespace"] == "prod"
    assert rec["c1/eth0"]["ip"] == ip1.split("/")[0]
    res = agent.dispatch({"op": "cni.gc", "valid": [{"container_id": "c1", "ifname": "eth0"}]})
    assert res == {"released": ["c2/eth0"]}
    agent.request_stop()
    t.join(5)
    assert not (tmp_path / "n1/agent.sock").exists()


def test_control_socket_errors_are_answers(tmp_path: Path) -> None:
    with running(make_agent(tmp_path)):
        sock = tmp_path / "n1/agent.sock"
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        ok = call(sock, {"op": "status"})
        assert ok["ok"] and ok["result"]["networks"][0]["ready"] is True
        bad = call(sock, {"op": "frobnicate"})
        assert bad["ok"] is False and bad["error"]["kind"] == "ConfigError"
        assert bad["error"]["message"] == "unknown op 'frobnicate'"
        assert "cni.add" in bad["error"]["fix"] and "policy.*" in bad["error"]["fix"]
        answer = exchange(sock, b"{not json\n")
        assert answer["ok"] is False and answer["error"]["kind"] == "ConfigError"
        missing = call(sock, {"op": "cni.add", "container_id": "", "ifname": "eth0"})
        assert missing["error"]["kind"] == "ConfigError"
        wrong_net = call(sock, {**add_req("c9"), "network": "nope"})
        assert wrong_net["error"]["kind"] == "NotFound"
        assert call(sock, {"op": "status"})["ok"]  # still serving


def test_two_agents_see_each_other_as_peers(tmp_path: Path) -> None:
    a, b = make_agent(tmp_path, "n1"), make_agent(tmp_path, "n2")
    ta, tb = start_in_thread(a), start_in_thread(b)
    try:
        backend_a = a.networks["fk"].backend
        assert "n2" in backend_a.peers
        b.request_stop(teardown=True)
        tb.join(5)
        assert "n2" not in backend_a.peers
    finally:
        a.request_stop()
        ta.join(5)


def test_several_networks_need_a_name(tmp_path: Path) -> None:
    with running(make_agent(tmp_path, nets=[
        {"backend": "fake", "network": "10.50.0.0/16", "name": "one"},
        {"backend": "fake", "network": "10.51.0.0/16", "name": "two"},
    ])) as agent:
        with pytest.raises(ConfigError, match="several networks"):
            agent.dispatch(add_req("c1"))
        res = agent.dispatch({**add_req("c1"), "network": "two"})
        assert res["ips"][0]["address"].startswith("10.51.")


def test_not_ready_network_says_try_again(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    with pytest.raises(AgentUnavailable):
        agent.dispatch(add_req("c1"))


@pytest.mark.parametrize("bad, field", [
    ({"backend": "fake"}, "network is required"),
    ({"backend": "fake", "network": "10.0.0.1/8"}, "not an IPv4 network"),
    ({"backend": "fake", "network": "10.0.0.0/8", "bogus": 1}, "unknown key"),
    ({"backend": "fake", "network": "10.0.0.0/8", "name": "Bad_Name"}, "network name"),
    ({"backend": "fake", "network": "10.0.0.0/16", "subnetLen": 8}, "SubnetLen"),
    ({"network": "10.0.0.0/8"}, "backend is required"),
])
def test_bad_network_config_names_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        network_from_mapping(bad)


def test_overlapping_networks_refused() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        AgentConfig.from_json({"networks": [
            {"backend": "fake", "network": "10.0.0.0/16", "name": "a"},
            {"backend": "fake", "network": "10.0.1.0/24", "name": "b"},
        ]})


def test_check_compares_what_the_runtime_expects(tmp_path: Path) -> None:
    from fabric.errors import BackendError

    with running(make_agent(tmp_path)) as agent:
        res = agent.dispatch(add_req("c1"))
        ip = res["ips"][0]["address"]
        base = {"op": "cni.check", "container_id": "c1", "ifname": "eth0"}
        agent.dispatch({**base, "expected": {"ips": [ip], "mac": res["interfaces"][1]["mac"]}})
        with pytest.raises(BackendError, match="expects addresses"):
            agent.dispatch({**base, "expected": {"ips": ["10.50.99.99/24"]}})
        with pytest.raises(BackendError, match="expects MAC"):
            agent.dispatch({**base, "expected": {"mac": "02:00:00:00:00:99"}})
        with pytest.raises(ConfigError):
            agent.dispatch({**base, "expected": ["not", "a", "mapping"]})


def test_add_fails_and_rolls_back_when_policy_cannot_protect_the_pod(tmp_path: Path) -> None:
    from fabric.errors import PolicyError

    with running(make_agent(tmp_path)) as agent:
        net = agent.networks["fk"]

        def refuse(_ep):
            raise PolicyError("nft failed: simulated")

        net.policy.endpoint_added = refuse
        with pytest.raises(PolicyError):
            agent.dispatch(add_req("c1"))
        assert net.ipam.allocations() == {}
        assert net.backend.endpoints == {}
        rec = json.loads((tmp_path / "n1/networks/fk/workloads.json").read_text())
        assert "c1/eth0" not in rec


def test_a_fatal_start_error_keeps_the_field_at_fault(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, nets=[{"backend": "fake", "network": "10.50.0.0/16",
                                        "name": "fk", "backendConfig": {"config_error": "VNI"}}])
    assert agent.run() == 1
    assert isinstance(agent._fatal, ConfigError)
    assert agent._fatal.field == "VNI" and "network fk" in agent._fatal.message
