"""fabric-cni's verbs against a scripted agent socket: requests sent, results, error codes.

The scripted agent (fabric.cni.fake_agent) is the plugin's peer process; the real
agent is exercised in test_cni_agent.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from fabric.cni import main as cni_main
from fabric.cni.fake_agent import CLOSE, HANG, FakeAgent, Raw, fail, ok

NETNS = "/proc/self/ns/net"  # exists; nothing is created in it (the agent is scripted)
AGENT_RESULT = {
    "interfaces": [{"name": "fk.0a1b2c3d"},
                   {"name": "eth0", "mac": "0a:58:0a:32:01:02", "sandbox": NETNS, "mtu": 1450}],
    "ips": [{"address": "10.50.1.2/24", "gateway": "10.50.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.50.1.1"}],
    "dns": {},
}


class Plugin:
    """Runs fabric-cni in-process with a given environment and stdin."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.socket = str(state / "agent.sock")

    def conf(self, version: str = "1.1.0", **kw: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "netfabric", "type": "fabric-cni",
                "agentSocket": self.socket, **kw}

    def __call__(self, verb: str, conf: Any = None, env: dict[str, str] | None = None,
                 stdin: bytes | None = None) -> tuple[int, Any, str]:
        environ = {"CNI_COMMAND": verb, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
                   "CNI_NETNS": NETNS, "CNI_PATH": "/usr/lib/cni"}
        environ.update(env or {})
        environ = {k: v for k, v in environ.items() if v is not None}
        data = stdin if stdin is not None else json.dumps(
            conf if conf is not None else self.conf()).encode()
        out, err = io.StringIO(), io.StringIO()
        rc = cni_main.run(environ, io.BytesIO(data), out, err)
        text = out.getvalue()
        assert text.count("\n") <= 1  # one JSON document at most
        return rc, json.loads(text) if text else None, err.getvalue()


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    state = tmp_path / "state"
    state.mkdir()
    return Plugin(state)


def agent(plugin: Plugin, reply) -> FakeAgent:
    return FakeAgent(plugin.socket, reply)


def assert_error(rc: int, out: Any, code: int, version: str = "1.1.0") -> None:
    assert rc == 1, out
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == code, out
    assert out["cniVersion"] == version
    assert isinstance(out["msg"], str) and out["msg"] and isinstance(out["details"], str)


# -- ADD --

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
    (fail("NotFound", "network 'nope' is not served by this agent", "served: fk"), 7),
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


def test_del_timeout_is_11_even_without_state(plugin: Plugin) -> None:
    with agent(plugin, lambda r: HANG):
        rc, out, _ = plugin("DEL", plugin.conf(agentTimeout=0.2))
    assert_error(rc, out, 11)


def test_del_of_a_network_the_agent_does_not_serve_succeeds(plugin: Plugin) -> None:
    with agent(plugin, lambda r: fail("NotFound", "network 'old' is not served by this agent")):
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


# -- STATUS --

def test_status_ok_prints_nothing(plugin: Plugin) -> None:
    with agent(plugin, lambda r: ok(None)) as a:
        rc, out, _ = plugin("STATUS", plugin.conf(network="fk"),
                            env={"CNI_CONTAINERID": None, "CNI_IFNAME": None,
                                 "CNI_NETNS": None, "CNI_PATH": None})
    assert (rc, out) == (0, None)
    assert a.requests == [{"network": "fk", "op": "cni.status"}]


@pytest.mark.parametrize("answer, code", [
    (None, 50),  # no agent at all
    (fail("AgentUnavailable", "network fk is not ready"), 50),
    (fail("StoreUnavailable", "etcd unreachable"), 51),
    (fail("BackendError", "vxlan device missing"), 51),
    (fail("NotFound", "network 'zz' is not served by this agent"), 7),
    (HANG, 50),
])
def test_status_failures(plugin: Plugin, answer, code: int) -> None:
    conf = plugin.conf(agentTimeout=0.3)
    if answer is None:
        rc, out, _ = plugin("STATUS", conf)
    else:
        with agent(plugin, lambda r: answer):
            rc, out, _ = plugin("STATUS", conf)
    assert_error(rc, out, code)


@pytest.mark.parametrize("verb", ["STATUS", "GC"])
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_status_and_gc_need_1_1(plugin: Plugin, verb: str, version: str) -> None:
    conf = plugin.conf(version, **{"cni.dev/valid-attachments": []})
    with agent(plugin, lambda r: ok(None)) as a:
        rc, out, _ = plugin(verb, conf)
    assert_error(rc, out, 1, version=version)
    assert a.requests == []


# -- GC --

def test_gc_sends_valid_attachments(plugin: Plugin) -> None:
    valid = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]
    with agent(plugin, lambda r: ok({"released": ["c3/eth0"]})) as a:
        rc, out, err = plugin("GC", plugin.conf(**{"cni.dev/valid-attachments": valid}),
                              env={"CNI_CONTAINERID": None, "CNI_IFNAME": None,
                                   "CNI_NETNS": None})
    assert (rc, out) == (0, None) and "c3/eth0" in err
    assert a.requests == [{"network": "", "op": "cni.gc", "valid": [
        {"container_id": "c1", "ifname": "eth0"}, {"container_id": "c2", "ifname": "net1"}]}]


@pytest.mark.parametrize("valid", [None, {"containerID": "c1"}, [{"containerID": "c1"}],
                                   [{"containerID": 1, "ifname": "eth0"}]])
def test_gc_refuses_a_missing_or_malformed_list(plugin: Plugin, valid) -> None:
    conf = plugin.conf() if valid is None else plugin.conf(**{"cni.dev/valid-attachments": valid})
    with agent(plugin, lambda r: ok({"released": []})) as a:
        rc, out, _ = plugin("GC", conf)
    assert_error(rc, out, 7)
    assert "cni.dev/valid-attachments" in out["msg"]
    assert a.requests == []  # a missing list must never release everything


def test_gc_needs_cni_path(plugin: Plugin) -> None:
    rc, out, _ = plugin("GC", plugin.conf(**{"cni.dev/valid-attachments": []}),
                        env={"CNI_PATH": None})
    assert_error(rc, out, 4)
    assert "CNI_PATH" in out["msg"]


def test_gc_agent_down(plugin: Plugin) -> None:
    conf = plugin.conf(**{"cni.dev/valid-attachments": []})
    rc, out, err = plugin("GC", conf)
    assert (rc, out) == (0, None) and "nothing to release" in err
    (plugin.state / "agent.json").write_text("{}")
    rc, out, _ = plugin("GC", conf)
    assert_error(rc, out, 11)


# -- VERSION --

@pytest.mark.parametrize("stdin, version", [
    (b'{"cniVersion": "1.0.0"}', "1.0.0"),
    (b'{"cniVersion": "0.4.0"}', "0.4.0"),
    (b"", "1.1.0"),
    (b"{not json", "1.1.0"),
    (b'{"cniVersion": "soon"}', "1.1.0"),
])
def test_version(plugin: Plugin, stdin: bytes, version: str) -> None:
    rc, out, _ = plugin("VERSION", stdin=stdin, env={
        "CNI_CONTAINERID": None, "CNI_IFNAME": None, "CNI_NETNS": None, "CNI_PATH": None})
    assert rc == 0
    assert out == {"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


# -- input errors common to all verbs --

@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
@pytest.mark.parametrize("stdin, code", [
    (b"", 6),
    (b"   \n", 6),
    (b"{not json", 6),
    (b'{"cniVersion": "1.1.0", "name": "n", "type": "t"', 6),
    (b"\xff\xfe{}", 6),
    (b"[1, 2]", 7),
    (b'{"cniVersion": "0.3.1", "name": "n", "type": "t"}', 1),
    (b'{"cniVersion": "2.0.0", "name": "n", "type": "t"}', 1),
    (b'{"name": "n", "type": "t"}', 7),
    (b'{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {"type": "host-local"}}', 2),
    (b'{"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "fabric-cni"}]}', 7),
])
def test_bad_stdin(plugin: Plugin, verb: str, stdin: bytes, code: int) -> None:
    with agent(plugin, lambda r: ok(None)) as a:
        rc, out, _ = plugin(verb, stdin=stdin)
    assert_error(rc, out, code)
    assert a.requests == []


def test_stdin_read_failure_is_io_error(plugin: Plugin) -> None:
    class Broken(io.BytesIO):
        def read(self, *a):
            raise OSError(5, "Input/output error")

    out = io.StringIO()
    rc = cni_main.run({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"},
                      Broken(), out, io.StringIO())
    res = json.loads(out.getvalue())
    assert rc == 1 and res["code"] == 5 and "Input/output error" in res["details"]


@pytest.mark.parametrize("env, needle", [
    ({"CNI_COMMAND": None}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "UPDATE"}, "CNI_COMMAND"),
    ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": None}, "CNI_IFNAME"),
    ({"CNI_NETNS": None}, "CNI_NETNS"),
    ({"CNI_NETNS": "/nonexistent/nfcni-ns"}, "CNI_NETNS"),
    ({"CNI_ARGS": "oops"}, "CNI_ARGS"),
    ({"CNI_IFNAME": "this-is-too-long0"}, "CNI_IFNAME"),
])
def test_bad_environment_is_4(plugin: Plugin, env: dict, needle: str) -> None:
    with agent(plugin, lambda r: ok(AGENT_RESULT)) as a:
        rc, out, _ = plugin("ADD", env=env)
    assert_error(rc, out, 4)
    assert needle in out["msg"] + out["details"]
    assert a.requests == []


def test_internal_bug_still_answers_in_protocol(plugin: Plugin, monkeypatch) -> None:
    def boom(*a):
        raise RuntimeError("unexpected")

    monkeypatch.setitem(cni_main._HANDLERS, "DEL", boom)
    rc, out, _ = plugin("DEL")
    assert_error(rc, out, 110)
    assert "RuntimeError: unexpected" in out["details"]


def test_call_log(plugin: Plugin, tmp_path: Path) -> None:
    log = tmp_path / "cni.log"
    with agent(plugin, lambda r: ok(AGENT_RESULT)):
        plugin("ADD", env={"FABRIC_CNI_LOG": str(log)})
    plugin("CHECK", env={"FABRIC_CNI_LOG": str(log)})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["verb"], x["code"]) for x in lines] == [("ADD", 0), ("CHECK", 7)]
    assert all(x["ms"] >= 0 for x in lines)


# -- the installed executable --

def executable() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "fabric-cni"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fabric.cni.main"]


def run_exe(env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    return subprocess.run(executable(), input=stdin, env={**base, **env},
                          capture_output=True, timeout=60)


def test_executable_add_and_error_exit_status(plugin: Plugin) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
           "CNI_NETNS": NETNS, "CNI_PATH": "/usr/lib/cni"}
    with agent(plugin, lambda r: ok(AGENT_RESULT)):
        res = run_exe(env, json.dumps(plugin.conf()).encode())
    assert res.returncode == 0, res
    assert json.loads(res.stdout) == {"cniVersion": "1.1.0", **AGENT_RESULT}
    bad = run_exe(env, b"{broken")
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6
    assert b"Traceback" not in bad.stderr


def test_executable_version_and_stdlib_only() -> None:
    res = run_exe({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert res.returncode == 0
    assert json.loads(res.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]
    code = ("import sys; before = set(sys.modules); import fabric.cni.main;"
            "import json; print(json.dumps(sorted(set(sys.modules) - before)))")
    new = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout)
    outside = {m.split(".")[0] for m in new} - set(sys.stdlib_module_names)
    assert outside == {"fabric"}
    ours = {m for m in new if m.startswith("fabric")}
    assert ours <= {"fabric", "fabric.errors", "fabric.agent", "fabric.agent.client",
                    "fabric.cni", "fabric.cni.errors", "fabric.cni.spec", "fabric.cni.result",
                    "fabric.cni.main"}, ours
