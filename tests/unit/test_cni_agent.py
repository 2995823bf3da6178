"""fabric-cni against the real agent (in-memory fake backend and IPAM: no root, no kernel).

The agent runs in this process on a temporary state dir; the plugin runs as the real
executable (and in-process where many calls are needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from tests.unit.agent_util import NETNS, RunningAgent, cni, netconf, one_net


def test_lifecycle_through_the_executable(tmp_path: Path) -> None:
    script = Path(sysconfig.get_path("scripts")) / "fabric-cni"
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "fabric.cni.main"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}

    def call(verb: str, conf: dict[str, Any]) -> subprocess.CompletedProcess:
        env = {**base, "CNI_COMMAND": verb, "CNI_CONTAINERID": "pod1", "CNI_IFNAME": "eth0",
               "CNI_NETNS": NETNS, "CNI_PATH": "/usr/lib/cni",
               "CNI_ARGS": "K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=prod"}
        return subprocess.run(exe, input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=60)

    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        conf = netconf(ra.socket, args={"cni": {"labels": {"app": "web"}}})
        add = call("ADD", conf)
        assert add.returncode == 0, add
        result = json.loads(add.stdout)
        assert result["cniVersion"] == "1.1.0"
        pod_if = result["interfaces"][result["ips"][0]["interface"]]
        assert pod_if["name"] == "eth0" and pod_if["sandbox"] == NETNS
        assert result["ips"][0]["address"].startswith("10.50.")
        rec = json.loads((tmp_path / "st/networks/fk/workloads.json").read_text())
        assert rec["pod1/eth0"]["labels"] == {"app": "web"}
        assert rec["pod1/eth0"]["name"] == "web-1" and rec["pod1/eth0"]["namespace"] == "prod"

        check = call("CHECK", {**conf, "prevResult": result})
        assert (check.returncode, check.stdout) == (0, b""), check
        status = call("STATUS", conf)
        assert (status.returncode, status.stdout) == (0, b"")

        for _ in range(2):  # DEL is idempotent
            gone = call("DEL", {**conf, "prevResult": result})
            assert (gone.returncode, gone.stdout) == (0, b""), gone
        assert "pod1/eth0" not in json.loads(
            (tmp_path / "st/networks/fk/workloads.json").read_text())
        after = call("CHECK", {**conf, "prevResult": result})
        assert after.returncode == 1 and json.loads(after.stdout)["code"] == 3


def test_versions_chaining_and_gc(tmp_path: Path) -> None:
    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        rc, r04 = cni("ADD", netconf(ra.socket, "0.4.0"), cid="a")
        assert rc == 0 and r04["ips"][0]["version"] == "4"
        prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}],
                "ips": [{"address": "127.0.0.1/8", "interface": 0}]}
        rc, r10 = cni("ADD", netconf(ra.socket, "1.0.0", prevResult=prev), cid="b")
        assert rc == 0 and r10["interfaces"][0] == {"name": "lo"}
        assert r10["interfaces"][r10["ips"][1]["interface"]]["name"] == "eth0"
        assert "mtu" not in r10["interfaces"][-1]
        rc, r11 = cni("ADD", netconf(ra.socket), cid="c")
        assert rc == 0 and r11["interfaces"][-1]["mtu"] > 0
        addrs = {r04["ips"][0]["address"], r10["ips"][1]["address"], r11["ips"][0]["address"]}
        assert len(addrs) == 3  # three distinct allocations

        rc, out = cni("CHECK", netconf(ra.socket, "0.4.0", prevResult=r04), cid="a")
        assert (rc, out) == (0, None)

        gc = netconf(ra.socket, **{"cni.dev/valid-attachments": [
            {"containerID": "a", "ifname": "eth0"}]})
        assert cni("GC", gc) == (0, None)
        assert cni("CHECK", netconf(ra.socket, prevResult=r11), cid="c")[1]["code"] == 3
        assert cni("CHECK", netconf(ra.socket, "0.4.0", prevResult=r04), cid="a") == (0, None)


def test_network_selection(tmp_path: Path) -> None:
    nets = [one_net("fa", "10.60.0.0/16"), one_net("fb", "10.61.0.0/16")]
    with RunningAgent(tmp_path / "st", nets) as ra:
        rc, out = cni("ADD", netconf(ra.socket))
        assert rc == 1 and out["code"] == 7 and "fa" in out["details"]
        rc, out = cni("ADD", netconf(ra.socket, network="fb"))
        assert rc == 0 and out["ips"][0]["address"].startswith("10.61.")
        rc, out = cni("ADD", netconf(ra.socket, network="zz"))
        assert rc == 1 and out["code"] == 7 and "zz" in out["details"]
        assert cni("STATUS", netconf(ra.socket, network="zz"))[1]["code"] == 7
        assert cni("DEL", netconf(ra.socket, network="zz")) == (0, None)


def test_agent_down_then_removed(tmp_path: Path) -> None:
    state = tmp_path / "st"
    ra = RunningAgent(state, [one_net()])
    with ra:
        assert cni("ADD", netconf(ra.socket))[0] == 0
    # graceful stop: pods and agent.json remain -> the runtime must retry
    assert (state / "agent.json").exists()
    assert cni("ADD", netconf(ra.socket))[1]["code"] == 11
    assert cni("DEL", netconf(ra.socket))[1]["code"] == 11
    assert cni("STATUS", netconf(ra.socket))[1]["code"] == 50
    # `fabric down`: teardown removes everything, so DEL has nothing left to do
    ra2 = RunningAgent(state, [one_net()])
    with ra2:
        assert cni("DEL", netconf(ra2.socket), cid="other") == (0, None)
        ra2.stop(teardown=True)
    assert not (state / "agent.json").exists()
    assert cni("DEL", netconf(ra.socket)) == (0, None)
    assert cni("ADD", netconf(ra.socket))[1]["code"] == 11


def test_concurrent_adds_and_dels(tmp_path: Path) -> None:
    """Runtimes run plugins for different containers in parallel (bounded: 12 pods)."""
    from concurrent.futures import ThreadPoolExecutor

    with RunningAgent(tmp_path / "st", [one_net()]) as ra:
        conf = netconf(ra.socket)
        with ThreadPoolExecutor(6) as pool:
            adds = list(pool.map(lambda i: cni("ADD", conf, cid=f"p{i}"), range(12)))
        assert all(rc == 0 for rc, _ in adds), adds
        addresses = {out["ips"][0]["address"] for _, out in adds}
        assert len(addresses) == 12
        with ThreadPoolExecutor(6) as pool:
            dels = list(pool.map(lambda i: cni("DEL", conf, cid=f"p{i}"), range(12)))
        assert dels == [(0, None)] * 12
        assert json.loads((tmp_path / "st/networks/fk/workloads.json").read_text()) == {}
