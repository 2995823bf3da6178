"""fabric-cni STATUS, GC, VERSION, input errors and the installed executable.

Against a scripted agent socket (fabric.cni.testing.FakeAgent), in-process runs
(fabric.cni.testing.Runner) and, at the end, the installed `fabric-cni` script.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.cni import main as cni_main
from fabric.cni.testing import HANG, fail, ok
from tests.unit.cni_common import AGENT_RESULT, NETNS, Plugin, agent, assert_error


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
    (fail("NotFound", "network 'zz' is not served by this agent", field="network"), 7),
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


def test_run_by_hand_says_what_it_is(plugin: Plugin) -> None:
    rc, out, err = plugin("", env={"CNI_COMMAND": None})
    assert_error(rc, out, 4)
    assert "CNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0" in err


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
    assert ours <= {"fabric", "fabric.errors", "fabric.control",
                    "fabric.cni", "fabric.cni.errors", "fabric.cni.spec", "fabric.cni.result",
                    "fabric.cni.main"}, ours


# -- fuzzed input: always one protocol answer, never a traceback --

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["cniVersion", "name", "type", "network", "agentSocket", "agentTimeout",
                         "args", "dns", "ipam", "prevResult", "cni.dev/valid-attachments",
                         "plugins", "runtimeConfig"])
_conf = st.dictionaries(_keys, _json | st.sampled_from(["0.4.0", "1.0.0", "1.1.0"]), max_size=8)
_known = {0, 1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103, 104, 105, 110}


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]), conf=_conf,
       raw=st.none() | st.binary(max_size=40))
def test_fuzzed_config(plugin: Plugin, verb: str, conf: dict, raw: bytes | None) -> None:
    if "agentSocket" in conf:
        conf["agentSocket"] = plugin.socket
    rc, out, _ = plugin(verb, conf, stdin=raw)
    assert rc in (0, 1)
    if rc == 1:
        assert set(out) == {"cniVersion", "code", "msg", "details"} and out["code"] in _known
        assert out["code"] != 110, out  # 110 is for agent failures and bugs only
