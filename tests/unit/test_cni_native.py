"""The native forwarder (fabric/cni/forward.c) against the real agent (fake backend and
IPAM, no root): same answers as the Python plugin, the namespace passed as a descriptor,
and the Python plugin taking over whenever the agent cannot take the call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fabric.cni.install import build_plugin
from fabric.cni.native import build_native
from tests.unit.agent_util import NETNS, RunningAgent, netconf, one_net

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture
def plugins(tmp_path: Path) -> tuple[Path, Path]:
    py = tmp_path / "bin" / "fabric-cni.pyz"
    py.parent.mkdir()
    py.write_bytes(build_plugin("/usr/bin/env python3"))
    py.chmod(0o755)
    native = build_native(tmp_path / "bin" / "fabric-cni", socket=str(tmp_path / "none.sock"),
                          fallback=str(py))
    return native, py


def run(exe: Path, verb: str, conf: dict[str, Any], cid: str = "c1",
        **env: str) -> tuple[int, Any]:
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CNI_COMMAND": verb,
               "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": NETNS,
               "CNI_PATH": str(exe.parent), **env}
    proc = subprocess.run([str(exe)], input=json.dumps(conf).encode(), env=environ,
                          capture_output=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_native_forwarder_speaks_like_the_plugin(tmp_path: Path, plugins) -> None:
    native, py = plugins
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        sock = {"FABRIC_AGENT_SOCKET": ra.socket}
        conf = netconf(ra.socket, "1.0.0")
        rc, out = run(native, "ADD", conf, "n1", **sock)
        assert rc == 0 and out["cniVersion"] == "1.0.0", out
        assert out["interfaces"][-1]["sandbox"] == NETNS
        rc, again = run(py, "ADD", conf, "n1")  # the Python plugin sees the same attachment
        assert rc == 0 and again["ips"] == out["ips"]
        # errors come from the same code, in the config's version
        rc, bad = run(native, "ADD", conf, "n2", CNI_ARGS="IP=10.99.0.1", **sock)
        assert rc == 1 and bad["code"] == 7 and bad["cniVersion"] == "1.0.0", bad
        rc, bad = run(native, "ADD", conf, "n3", CNI_NETNS=str(tmp_path), **sock)
        assert rc == 1 and bad["code"] == 4 and str(tmp_path) in bad["details"], bad
        rc, _ = run(native, "CHECK", {**conf, "prevResult": out}, "n1", **sock)
        assert rc == 0
        assert run(native, "DEL", conf, "n1", **sock) == (0, None)
        rec = json.loads((tmp_path / "st/networks/fk/workloads.json").read_text())
        assert "n1/eth0" not in rec
        rc, ver = run(native, "VERSION", {"cniVersion": "1.0.0"}, **sock)
        assert rc == 0 and ver["cniVersion"] == "1.0.0"


def test_without_an_agent_the_python_plugin_answers(tmp_path: Path, plugins) -> None:
    native, _py = plugins
    state = tmp_path / "st"
    state.mkdir()
    sock = str(state / "agent.sock")
    conf = netconf(sock)
    rc, out = run(native, "ADD", conf, FABRIC_AGENT_SOCKET=sock)
    assert rc == 1 and out["code"] == 11, out  # try again later: the agent is not there
    assert run(native, "DEL", conf, FABRIC_AGENT_SOCKET=sock) == (0, None)  # fabric gone
    (state / "agent.json").write_text("{}")  # an agent that is merely down
    assert run(native, "DEL", conf, FABRIC_AGENT_SOCKET=sock)[1]["code"] == 11


def test_fallback_gets_the_whole_stdin(tmp_path: Path, plugins) -> None:
    """A config larger than a pipe buffer reaches the Python plugin intact."""
    native, _py = plugins
    conf = netconf(str(tmp_path / "nobody.sock"), padding="x" * 300_000)
    rc, out = run(native, "ADD", conf, FABRIC_AGENT_SOCKET=str(tmp_path / "nobody.sock"))
    assert rc == 1 and out["code"] == 11, out


def test_build_refuses_unsafe_paths(tmp_path: Path) -> None:
    from fabric.errors import ConfigError

    with pytest.raises(ConfigError):
        build_native(tmp_path / "x", socket='/run/"x', fallback="/opt/cni/bin/p")
    with pytest.raises(ConfigError):
        build_native(tmp_path / "x", socket="relative.sock", fallback="/opt/cni/bin/p")
    assert not list(tmp_path.iterdir())
    assert os.access(build_native(tmp_path / "ok", socket="/s", fallback="/f"), os.X_OK)


def test_the_agent_really_serves_the_forwarder(tmp_path: Path) -> None:
    """With no usable fallback, success can only come from cni.exec in the agent."""
    native = build_native(tmp_path / "fabric-cni", socket=str(tmp_path / "x.sock"),
                          fallback="/nonexistent/fabric-cni")
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        rc, out = run(native, "ADD", netconf(ra.socket), "r1", FABRIC_AGENT_SOCKET=ra.socket)
        assert rc == 0 and out["ips"], out
    rc, out = run(native, "ADD", netconf(ra.socket), "r2", FABRIC_AGENT_SOCKET=ra.socket)
    assert rc == 1 and out["code"] == 11 and "/nonexistent/fabric-cni" in out["details"]


def test_install_native_and_uninstall(tmp_path: Path) -> None:
    from fabric.cni.install import FALLBACK_NAME, PLUGIN_NAME, install, uninstall
    from fabric.cni.native import is_native

    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        done = install(bin_dir, conf_dir, agent_socket=ra.socket, native=True)
        assert is_native(done.plugin) and (bin_dir / FALLBACK_NAME).exists()
        conf = json.loads(done.conflist.read_text())
        plugin_conf = {**conf["plugins"][0], "name": conf["name"],
                       "cniVersion": conf["cniVersion"]}
        rc, out = run(done.plugin, "ADD", plugin_conf, "i1")  # no FABRIC_AGENT_SOCKET
        assert rc == 0 and out["cniVersion"] == "1.0.0", out
        install(bin_dir, conf_dir, agent_socket=ra.socket, native=True)  # again: ours
    assert sorted(p.name for p in uninstall(bin_dir, conf_dir)) == sorted(
        [FALLBACK_NAME, PLUGIN_NAME, done.conflist.name])
    assert list(bin_dir.iterdir()) == []


def test_a_config_naming_another_agent_is_sent_there(tmp_path: Path, plugins) -> None:
    """The forwarder reaches the agent it was built for; a config whose agentSocket names
    another agent is passed on to that one (with the namespace descriptor)."""
    native, _py = plugins
    with RunningAgent(tmp_path / "a", [one_net("fa", "10.60.0.0/16")]) as a, \
            RunningAgent(tmp_path / "b", [one_net("fb", "10.61.0.0/16")]) as b:
        rc, out = run(native, "ADD", netconf(b.socket), "x1", FABRIC_AGENT_SOCKET=a.socket)
        assert rc == 0 and out["ips"][0]["address"].startswith("10.61."), out
        assert "x1/eth0" in json.loads((tmp_path / "b/networks/fb/workloads.json").read_text())
