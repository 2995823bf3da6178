"""`fabric-cni` as real runtimes drive it, against a real agent (hostgw backend, fake IPAM)
in one host namespace; pods are namespaces attached by executing `fabric-cni`.

Issue 16: a runtime in another mount namespace, a second interface on the same network,
an interface name that already exists, the bridge's MAC changing under pinging pods.
Everything lives in namespaces named nfcni-<tag>-*; the agent is ended by its handle.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.agent_util import AgentHost
from tests.functional.netns_util import sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BIN = Path(sys.executable).parent
CIDR = "10.93.0.0/16"


class Node(AgentHost):
    """The agent on network "cn" (hostgw, fake IPAM), pods attached by executing `fabric-cni`."""

    def __init__(self, tag: str, tmp: Path) -> None:
        super().__init__(tag, tmp, name="cn", cidr=CIDR, address="198.18.93.1/24")

    def conf(self, **kw: Any) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": "cn", "type": "fabric-cni", "network": "cn",
                "agentSocket": str(self.sock), **kw}

    def cni(self, verb: str, pod: str, ifname: str = "eth0", conf: dict | None = None,
            netns: str | None = None, prefix: list[str] | None = None,
            cid: str | None = None, exe: str | None = None) -> tuple[int, Any]:
        """Execute `fabric-cni` in the host namespace (``prefix`` wraps the command)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": verb,
               "CNI_CONTAINERID": cid or pod, "CNI_IFNAME": ifname, "CNI_PATH": str(BIN),
               "CNI_NETNS": netns or f"/run/netns/{pod}"}
        argv = ["ip", "netns", "exec", self.host, *(prefix or []), exe or str(BIN / "fabric-cni")]
        proc = subprocess.run(argv, input=json.dumps(conf or self.conf()), env=env,
                              capture_output=True, text=True, timeout=60)
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None

    def pod(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        return ns

    def bridge_mac(self) -> str:
        out = sh("ip", "-j", "link", "show", "cn.br", ns=self.host).stdout
        return json.loads(out)[0]["address"]


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    with Node(f"nfcni-{secrets.token_hex(2)}", tmp_path_factory.mktemp("cni")).started() as n:
        yield n


def _ip(result: dict) -> str:
    return result["ips"][-1]["address"].split("/")[0]


def _routes(ns: str) -> list[dict]:
    return json.loads(sh("ip", "-j", "-4", "route", "show", "default", ns=ns).stdout)


def private_netns(tmp: Path, pod: str) -> tuple[Path, list[str]]:
    """A runtime's view of pod's netns: a path bound only inside a private mount namespace,
    and the command prefix that runs a plugin there."""
    private = tmp / "private"
    private.mkdir()
    inner = private / "netns"
    script = (f"mount -t tmpfs nfcni {private} && touch {inner} && "
              f"mount --bind /run/netns/{pod} {inner} && exec \"$@\"")
    return inner, ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


def test_runtime_in_another_mount_namespace(node: Node, tmp_path: Path) -> None:
    """The pod's netns is reachable only inside the runtime's private mount namespace."""
    pod = node.pod("mnt")
    inner, wrap = private_netns(tmp_path, pod)
    rc, out = node.cni("ADD", pod, netns=str(inner), prefix=wrap)
    assert rc == 0, out
    assert out["interfaces"][-1]["sandbox"] == str(inner)
    assert not inner.exists()  # really invisible outside the runtime's mount namespace
    addr = sh("ip", "-j", "-4", "addr", "show", "eth0", ns=pod).stdout
    assert _ip(out) in addr
    assert sh("ping", "-c1", "-W2", out["ips"][0]["gateway"], ns=pod, check=False).returncode == 0
    rc, out2 = node.cni("CHECK", pod, netns=str(inner), prefix=wrap,
                        conf=node.conf(prevResult=out))
    assert rc == 0, out2
    rc, _ = node.cni("DEL", pod, netns=str(inner), prefix=wrap)
    assert rc == 0
    assert "eth0" not in sh("ip", "-o", "link", ns=pod).stdout


def test_not_a_network_namespace_is_code_4(node: Node) -> None:
    rc, out = node.cni("ADD", "nons", netns="/proc/self/ns/mnt")
    assert rc == 1 and out["code"] == 4 and "/proc/self/ns/mnt" in out["details"], out
    assert out["cniVersion"] == "1.0.0"


def test_second_interface_leaves_the_default_route_alone(node: Node) -> None:
    pod = node.pod("two")
    rc, eth0 = node.cni("ADD", pod)
    assert rc == 0, eth0
    gw = eth0["ips"][0]["gateway"]
    rc, net1 = node.cni("ADD", pod, ifname="net1")
    assert rc == 0, net1
    assert [r for r in net1["routes"] if r["dst"] == "0.0.0.0/0"] == []
    assert [(r["dst"], r["dev"]) for r in _routes(pod)] == [("default", "eth0")]
    rc, _ = node.cni("CHECK", pod, ifname="net1", conf=node.conf(prevResult=net1))
    assert rc == 0
    assert node.cni("DEL", pod, ifname="net1")[0] == 0
    assert [(r["dst"], r["dev"], r["gateway"]) for r in _routes(pod)] == [("default", "eth0", gw)]
    assert sh("ping", "-c1", "-W2", gw, ns=pod, check=False).returncode == 0
    # the config can ask for it explicitly
    rc, net2 = node.cni("ADD", pod, ifname="net2", conf=node.conf(defaultRoute=True))
    assert rc == 0, net2
    assert [(r["dst"], r["dev"]) for r in _routes(pod)] == [("default", "net2")]
    assert {"dst": "0.0.0.0/0", "gw": gw} in net2["routes"]


def test_existing_interface_name_is_code_100(node: Node) -> None:
    pod = node.pod("dup")
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0x", ns=pod)
    rc, out = node.cni("ADD", pod)
    assert rc == 1 and out["code"] == 100, out
    assert "eth0 already exists" in out["details"]
    # and the same for an interface another attachment made (different container id)
    pod2 = node.pod("dup2")
    assert node.cni("ADD", pod2, cid="first")[0] == 0
    rc, out = node.cni("ADD", pod2, cid="second")
    assert rc == 1 and out["code"] == 100, out
    assert node.cni("DEL", pod2, cid="second")[0] == 0
    assert "eth0" in sh("ip", "-o", "link", ns=pod2).stdout  # the first one's is untouched


def test_static_ip_on_a_real_node(node: Node) -> None:
    pod = node.pod("static")
    rc, first = node.cni("ADD", node.pod("dyn"))
    assert rc == 0
    want = first["ips"][0]["address"].rsplit(".", 1)[0] + ".200"
    rc, out = node.cni("ADD", pod, conf=node.conf(runtimeConfig={"ips": [want]}))
    assert rc == 0, out
    assert _ip(out) == want.split("/")[0]
    assert want in sh("ip", "-4", "-o", "addr", "show", "eth0", ns=pod).stdout
    rc, out = node.cni("ADD", node.pod("static2"), conf=node.conf(runtimeConfig={"ips": [want]}))
    assert rc == 1 and out["code"] == 103, out


def test_bridge_mac_is_pinned_and_neighbours_lose_nothing(node: Node) -> None:
    """20 pod adds/removes while a neighbour pod pings the gateway and a peer pod."""
    a, b = node.pod("pa"), node.pod("pb")
    rc, ra = node.cni("ADD", a)
    assert rc == 0
    rc, rb = node.cni("ADD", b)
    assert rc == 0
    gw, peer = ra["ips"][0]["gateway"], _ip(rb)
    before = node.bridge_mac()
    # pinned: set explicitly (NET_ADDR_SET), so the kernel never re-derives it from ports
    assign = sh("cat", "/sys/class/net/cn.br/addr_assign_type", ns=node.host).stdout
    assert assign.strip() == "3"
    pings = [subprocess.Popen(["ip", "netns", "exec", a, "ping", "-i", "0.05", "-w", "30",
                               "-c", "300", dst], stdout=subprocess.PIPE, text=True)
             for dst in (gw, peer)]
    macs = set()
    try:
        time.sleep(0.5)
        for i in range(20):
            churn = node.pod(f"c{i}")
            assert node.cni("ADD", churn)[0] == 0
            macs.add(node.bridge_mac())
            assert node.cni("DEL", churn)[0] == 0
            sh("ip", "netns", "del", churn)
            macs.add(node.bridge_mac())
    finally:
        outs = [p.communicate(timeout=60)[0] for p in pings]
    assert macs == {before}
    for dst, text in zip((gw, peer), outs, strict=True):
        line = next(x for x in text.splitlines() if "packets transmitted" in x)
        sent, received = (int(x.split()[0]) for x in line.split(",")[:2])
        assert sent >= 100 and received == sent, f"ping {dst}: {line}"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_plugin_needs_no_agent_view_of_the_path(node: Node) -> None:
    """A path the agent cannot resolve at all (runtime-private) still works for DEL."""
    pod = node.pod("del")
    assert node.cni("ADD", pod)[0] == 0
    rc, _ = node.cni("DEL", pod, netns="/nonexistent/netns")
    assert rc == 0
    assert "eth0" not in sh("ip", "-o", "link", ns=pod).stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_native_forwarder_from_another_mount_namespace(node: Node, tmp_path: Path) -> None:
    """The native forwarder (fabric/cni/forward.c): the agent runs the plugin's logic with
    the namespace the forwarder opened in the runtime's private mount namespace."""
    from fabric.cni.install import build_plugin
    from fabric.cni.native import build_native

    py = tmp_path / "bin" / "fabric-cni.pyz"
    py.parent.mkdir()
    py.write_bytes(build_plugin())
    py.chmod(0o755)
    native = build_native(tmp_path / "bin" / "fabric-cni", socket=str(node.sock),
                          fallback=str(py))
    pod = node.pod("nat")
    inner, wrap = private_netns(tmp_path, pod)
    rc, out = node.cni("ADD", pod, netns=str(inner), prefix=wrap, exe=str(native))
    assert rc == 0, out
    assert out["cniVersion"] == "1.0.0" and out["interfaces"][-1]["sandbox"] == str(inner)
    assert sh("ping", "-c1", "-W2", out["ips"][0]["gateway"], ns=pod, check=False).returncode == 0
    rc, again = node.cni("ADD", pod, netns=str(inner), prefix=wrap, exe=str(py))
    assert rc == 0 and again["ips"] == out["ips"]  # the Python plugin agrees
    assert node.cni("DEL", pod, netns=str(inner), prefix=wrap, exe=str(native))[0] == 0
    assert "eth0" not in sh("ip", "-o", "link", ns=pod).stdout
