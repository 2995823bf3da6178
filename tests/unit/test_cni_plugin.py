"""fabric-cni ADD, DEL and CHECK against a scripted agent socket: requests, results, codes.

The scripted agent (fabric.cni.testing.FakeAgent) is the plugin's peer process; the
real agent is exercised in test_cni_agent.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fabric.cni.testing import CLOSE, HANG, Raw, fail, ok
from tests.unit.cni_common import AGENT_RESULT, NETNS, Plugin, agent, assert_error


def test_add_sends_the_attachment_and_prints_a_1_1_result(plugin: Plugin) -> None:
    conf = plugin.conf(network="fk", args={"cni": {"labels": {"app": "web"},
                                                   "namespace": "prod"}})
    with agent(plugin, lambda r: ok(AGENT_RESULT)) as a:
        rc, out, _ = plugin("ADD", conf, env={
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=other"})
    assert rc == 0
    assert a.requests == [{
        "network": "fk", "op": "cni.add", "container_id": "c1", "ifname": "eth0",
        "netns": NETNS, "pod_name": "web-1", "pod_namespace": "prod", "labels": {"app": "web"},
    }]
    assert out == {"cniVersion": "1.1.0", **AGENT_RESULT}


def test_add_takes_namespace_from_cni_args_without_args_cni(plugin: Plugin) -> None:
    with agent(plugin, lambda r: ok(AGENT_RESULT)) as a:
        plugin("ADD", env={"CNI_ARGS": "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"})
    assert a.requests[0]["pod_namespace"] == "kube-system"
    assert a.requests[0]["pod_name"] == "dns" and a.requests[0]["network"] == ""


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_prints_the_requested_version_shape(plugin: Plugin, version: str) -> None:
    with agent(plugin, lambda r: ok(AGENT_RESULT)):
        rc, out, _ = plugin("ADD", plugin.conf(version))
    assert rc == 0 and out["cniVersion"] == version
    assert "mtu" not in out["interfaces"][1] and out["interfaces"][1]["sandbox"] == NETNS
    ip = out["ips"][0]
    if version == "0.4.0":
        assert ip == {"version": "4", **AGENT_RESULT["ips"][0]}
    else:
        assert ip == AGENT_RESULT["ips"][0]


def test_add_chained_appends_to_prev_result(plugin: Plugin) -> None:
    prev = {"cniVersion": "0.4.0",
            "interfaces": [{"name": "tap9", "sandbox": NETNS}],
            "ips": [{"version": "4", "address": "192.168.9.2/24", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16"}],
            "dns": {"search": ["lab.local"]}}
    conf = plugin.conf("0.4.0", prevResult=prev, dns={"nameservers": ["10.50.0.10"]})
    with agent(plugin, lambda r: ok(AGENT_RESULT)):
        rc, out, _ = plugin("ADD", conf)
    assert rc == 0
    assert [i["name"] for i in out["interfaces"]] == ["tap9", "fk.0a1b2c3d", "eth0"]
    assert [(ip["version"], ip["address"], ip["interface"]) for ip in out["ips"]] == [
        ("4", "192.168.9.2/24", 0), ("4", "10.50.1.2/24", 2)]
    assert out["routes"] == [{"dst": "192.168.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.50.1.1"}]
    assert out["dns"] == {"search": ["lab.local"], "nameservers": ["10.50.0.10"]}


def test_add_refuses_an_interface_a_previous_plugin_made(plugin: Plugin) -> None:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": []}
    with agent(plugin, lambda r: ok(AGENT_RESULT)) as a:
        rc, out, _ = plugin("ADD", plugin.conf(prevResult=prev))
    assert_error(rc, out, 100)
    assert a.requests == []


def test_add_malformed_prev_result_is_code_7_and_agent_untouched(plugin: Plugin) -> None:
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.1.1.1"}]}
    with agent(plugin, lambda r: ok(AGENT_RESULT)) as a:
        rc, out, _ = plugin("ADD", plugin.conf(prevResult=prev))
    assert_error(rc, out, 7)
    assert "prevResult.ips[0].address" in out["msg"] + out["details"]
    assert a.requests == []


@pytest.mark.parametrize("answer, code", [
    (fail("ConfigError", "this agent serves several networks; say which"), 7),
    (fail("NotFound", "network 'nope' is not served by this agent", "served: fk", "network"), 7),
    (fail("PoolExhausted", "no free address left in 10.50.1.0/24"), 104),
    (fail("IPAMError", "lease lost"), 103),
    (fail("BackendError", "veth creation failed"), 101),
    (fail("KernelFeatureMissing", "the running kernel lacks IPIP"), 102),
    (fail("PolicyError", "nft failed"), 105),
    (fail("AgentUnavailable", "network fk is not ready yet", "retry"), 11),
    (fail("StoreUnavailable", "etcd down"), 11),
    (fail("InternalError", "KeyError: 'x'"), 110),
    (fail("SomethingNew", "?"), 110),
    (ok({"ips": "not-a-list"}), 110),
    (ok({**AGENT_RESULT, "interfaces": [{"name": "eth0", "sandbox": "/run/netns/other"}],
         "ips": []}), 110),
    (Raw(b"garbage\n"), 11),
    (CLOSE, 11),
])
def test_add_agent_answers_map_to_codes(plugin: Plugin, answer, code: int) -> None:
    with agent(plugin, lambda r: answer):
        rc, out, _ = plugin("ADD")
    assert_error(rc, out, code)
    if isinstance(answer, dict) and not answer["ok"]:
        assert answer["error"]["message"] in out["details"]
        if answer["error"]["fix"]:
            assert answer["error"]["fix"] in out["details"]


def test_add_agent_unreachable_is_11(plugin: Plugin) -> None:
    rc, out, _ = plugin("ADD")
    assert_error(rc, out, 11)
    assert plugin.socket in out["details"]


def test_add_timeout_is_bounded_and_11(plugin: Plugin) -> None:
    with agent(plugin, lambda r: HANG):
        start = time.monotonic()
        rc, out, _ = plugin("ADD", plugin.conf(agentTimeout=0.3))
        elapsed = time.monotonic() - start
    assert_error(rc, out, 11)
    assert 0.25 <= elapsed < 2, elapsed
    assert "0.3 s" in out["details"] and "DEL" in out["details"]


def test_error_result_carries_the_config_version(plugin: Plugin) -> None:
    rc, out, _ = plugin("ADD", plugin.conf("0.4.0"))
    assert_error(rc, out, 11, version="0.4.0")


# -- DEL --

def test_del_sends_the_attachment_prints_nothing_and_ignores_prev_result(plugin: Plugin) -> None:
    with agent(plugin, lambda r: ok(None)) as a:
        rc1, out1, _ = plugin("DEL", plugin.conf(prevResult="not even an object"))
        rc2, out2, _ = plugin("DEL", env={"CNI_NETNS": None, "CNI_CONTAINERID": "never-added"})
    assert (rc1, out1, rc2, out2) == (0, None, 0, None)
    assert a.requests == [
        {"network": "", "op": "cni.del", "container_id": "c1", "ifname": "eth0", "netns": NETNS},
        {"network": "", "op": "cni.del", "container_id": "never-added", "ifname": "eth0",
         "netns": ""},
    ]


def test_del_agent_down_with_state_is_11(plugin: Plugin) -> None:
    (plugin.state / "agent.json").write_text("{}")
    rc, out, _ = plugin("DEL")
    assert_error(rc, out, 11)


def test_del_without_any_fabric_state_succeeds(plugin: Plugin) -> None:
    rc, out, err = plugin("DEL")
    assert (rc, out) == (0, None) and "nothing to release" in err


def test_del_stale_socket_without_state_succeeds(plugin: Plugin) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(plugin.socket)  # left behind by a crash, nobody listening
    try:
        rc, out, err = plugin("DEL")
    finally:
        s.close()
    assert (rc, out) == (0, None) and "nothing to release" in err


def test_del_broken_answer_is_11_even_without_state(plugin: Plugin) -> None:
    with agent(plugin, lambda r: CLOSE):
        rc, out, _ = plugin("DEL")
    assert_error(rc, out, 11)


def test_del_timeout_is_11_even_without_state(plugin: Plugin) -> None:
    with agent(plugin, lambda r: HANG):
        rc, out, _ = plugin("DEL", plugin.conf(agentTimeout=0.2))
    assert_error(rc, out, 11)


def test_del_of_a_network_the_agent_does_not_serve_succeeds(plugin: Plugin) -> None:
    gone = fail("NotFound", "network 'old' is not served by this agent", field="network")
    with agent(plugin, lambda r: gone):
        rc, out, err = plugin("DEL", plugin.conf(network="old"))
    assert (rc, out) == (0, None) and "nothing to release" in err


def test_del_agent_failure_is_reported(plugin: Plugin) -> None:
    with agent(plugin, lambda r: fail("BackendError", "cannot delete veth")):
        rc, out, _ = plugin("DEL")
    assert_error(rc, out, 101)


# -- CHECK --

def prev_result(version: str = "1.1.0") -> dict[str, Any]:
    res = {"cniVersion": version, **json.loads(json.dumps(AGENT_RESULT))}
    if version == "0.4.0":
        for ip in res["ips"]:
            ip["version"] = "4"
    return res


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_sends_expected_state_from_prev_result(plugin: Plugin, version: str) -> None:
    with agent(plugin, lambda r: ok(None)) as a:
        rc, out, _ = plugin("CHECK", plugin.conf(version, prevResult=prev_result(version)))
    assert (rc, out) == (0, None)
    assert a.requests == [{
        "network": "", "op": "cni.check", "container_id": "c1", "ifname": "eth0",
        "netns": NETNS, "expected": {"ips": ["10.50.1.2/24"], "mac": "0a:58:0a:32:01:02"},
    }]


@pytest.mark.parametrize("prev, field", [
    (None, "prevResult"),
    ({"cniVersion": "1.1.0", "interfaces": [{"name": "eth1", "sandbox": NETNS}]},
     "prevResult.interfaces"),
    ({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}]},
     "prevResult.interfaces"),
    ({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": []},
     "prevResult.ips"),
    ({"cniVersion": "1.1.0", "interfaces": "eth0"}, "prevResult.interfaces"),
])
def test_check_validates_prev_result(plugin: Plugin, prev, field: str) -> None:
    conf = plugin.conf() if prev is None else plugin.conf(prevResult=prev)
    with agent(plugin, lambda r: ok(None)) as a:
        rc, out, _ = plugin("CHECK", conf)
    assert_error(rc, out, 7)
    assert field in out["msg"] + out["details"]
    assert a.requests == []


@pytest.mark.parametrize("answer, code", [
    (fail("NotFound", "container c1 (eth0) is not attached"), 3),
    (fail("BackendError", "eth0 has address 10.9.9.9/24, expected 10.50.1.2/24"), 101),
    (fail("AgentUnavailable", "network fk is not ready yet"), 11),
])
def test_check_failures(plugin: Plugin, answer, code: int) -> None:
    with agent(plugin, lambda r: answer):
        rc, out, _ = plugin("CHECK", plugin.conf(prevResult=prev_result()))
    assert_error(rc, out, code)


def test_check_agent_unreachable_is_11(plugin: Plugin) -> None:
    rc, out, _ = plugin("CHECK", plugin.conf(prevResult=prev_result()))
    assert_error(rc, out, 11)
