"""`fabric cni install`: the installed plugin + conflist work as a runtime uses them.

No cnitool in Debian 12's containernetworking-plugins, so the test does what libcni does
with a conflist: take each plugin entry, add the list's ``name`` and ``cniVersion``, and
execute ``<bin-dir>/<type>`` with CNI_* variables and the config on stdin — against a real
agent (in-memory fake backend), with the host's /usr/bin/python3 running the zipapp.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fabric.cni import install as inst
from fabric.errors import ConfigError
from tests.unit.agent_util import RunningAgent, one_net

HOST_PYTHON = "/usr/bin/python3"


def runtime_exec(bin_dir: Path, conflist: dict[str, Any], verb: str, cid: str,
                 prev: Any = None) -> tuple[int, Any]:
    """One plugin call the way libcni derives it from a conflist (single-plugin list)."""
    entry = dict(conflist["plugins"][0])
    entry.update(name=conflist["name"], cniVersion=conflist["cniVersion"])
    if prev is not None:
        entry["prevResult"] = prev
    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_PATH": str(bin_dir),
           "PATH": "/usr/bin:/bin"}  # no venv on PATH: the plugin must stand alone
    proc = subprocess.run([str(bin_dir / entry["type"])], input=json.dumps(entry).encode(),
                          env=env, capture_output=True, timeout=30)
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None


@pytest.mark.skipif(not os.path.exists(HOST_PYTHON), reason="no host python3")
def test_install_then_runtime_add_check_del_then_uninstall(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "opt-cni-bin", tmp_path / "net.d"
    with RunningAgent(tmp_path / "state", [one_net("fk")]) as agent:
        done = inst.install(bin_dir, conf_dir, network="fk", agent_socket=agent.socket,
                            python=HOST_PYTHON)
        assert done.plugin == bin_dir / "fabric-cni" and os.access(done.plugin, os.X_OK)
        assert oct(done.conflist.stat().st_mode & 0o777) == "0o644"
        conf = json.loads(done.conflist.read_text())
        assert conf["cniVersion"] == "1.0.0" and conf["plugins"][0]["network"] == "fk"
        assert not [p for p in conf_dir.iterdir() if p.name != done.conflist.name]  # no temp

        rc, res = runtime_exec(bin_dir, conf, "ADD", "ctr1")
        assert rc == 0, res
        assert res["cniVersion"] == "1.0.0" and res["ips"][0]["address"].startswith("10.50.")
        assert runtime_exec(bin_dir, conf, "CHECK", "ctr1", prev=res)[0] == 0
        assert runtime_exec(bin_dir, conf, "DEL", "ctr1", prev=res)[0] == 0
        assert agent.agent.networks["fk"].status()["workloads"] == 0

    assert inst.uninstall(bin_dir, conf_dir) == [done.conflist, done.plugin]
    assert list(bin_dir.iterdir()) == [] and list(conf_dir.iterdir()) == []
    assert inst.uninstall(bin_dir, conf_dir) == []  # twice: nothing left, no error


def test_plugin_bundles_exactly_what_fabric_cni_imports() -> None:
    code = ("import sys; import fabric.cni.main; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('fabric')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    bundled = {"fabric." + m[:-3].replace("/", ".").removesuffix(".__init__")
               for m in inst._MODULES} | {"fabric"}
    bundled.discard("fabric.__init__")
    assert set(out) <= bundled, f"fabric-cni now imports {set(out) - bundled}: bundle them"


def test_reinstall_replaces_ours_but_never_a_foreign_file(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "b", tmp_path / "c"
    inst.install(bin_dir, conf_dir, network="a")
    inst.install(bin_dir, conf_dir, network="b")  # upgrade in place
    assert json.loads((conf_dir / inst.DEFAULT_CONF_NAME).read_text())["plugins"][0][
        "network"] == "b"
    other = conf_dir / "99-other.conflist"
    other.write_text('{"cniVersion": "1.0.0", "name": "o", "plugins": [{"type": "bridge"}]}')
    with pytest.raises(ConfigError, match="not written by"):
        inst.install(bin_dir, conf_dir, conf_name="99-other.conflist")
    with pytest.raises(ConfigError, match="left alone"):
        inst.uninstall(bin_dir, conf_dir, conf_name="99-other.conflist")
    assert other.exists()
    (bin_dir / "fabric-cni").write_text("#!/bin/sh\n")  # hand-built plugin
    with pytest.raises(ConfigError, match="not written by") as exc:
        inst.install(bin_dir, conf_dir)
    assert exc.value.fix


@pytest.mark.parametrize("name", ["../x.conflist", "", "pods.txt"])
def test_bad_conflist_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        inst.install(tmp_path, tmp_path, conf_name=name)
    assert exc.value.fix


def test_cli_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    inst.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cni", "install", "--bin-dir", str(tmp_path / "b"),
                              "--conf-dir", str(tmp_path / "c"), "--network", "vx"])
    assert args.func(args) == 0
    args = parser.parse_args(["cni", "uninstall", "--bin-dir", str(tmp_path / "b"),
                              "--conf-dir", str(tmp_path / "c")])
    assert args.func(args) == 0
    assert "installed" in capsys.readouterr().out
    assert not list((tmp_path / "c").iterdir())
