"""Stateful policy between pods bridged on one node, with bridge netfilter on and off.

Every test runs twice: the host namespace's ``net.bridge.bridge-nf-call-iptables`` set to
1 and to 0 (the sysctl is per network namespace on this kernel). Replies to connections an
isolated pod started, connections into an egress-isolated pod, established connections
after a policy change, relabelled pods and named ports must behave the same both ways.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from fabric.control import call
from tests.functional.netns_util import sh
from tests.functional.policy_util import HEAD, Node, check, write

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed"),
]

DB_NO_INGRESS = HEAD + "metadata: {name: db-in}\nspec: {podSelector: {matchLabels: {role: db}}}\n"
DB_NO_EGRESS = HEAD + """metadata: {name: db-out}
spec: {podSelector: {matchLabels: {role: db}}, policyTypes: [Egress]}
"""
DB_FROM_PODS = HEAD + """metadata: {name: db-in}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {}}, {namespaceSelector: {}}]}]
"""
DB_FROM_WEB = HEAD + """metadata: {name: db-in}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: web}}}]}]
"""


def brnf(node: Node) -> str:
    return sh("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables", ns=node.host).stdout.strip()


@pytest.fixture(scope="module", params=[1, 0], ids=["bridge-nf-on", "bridge-nf-off"])
def node(request, tmp_path_factory) -> Iterator[Node]:
    tag, tmp = f"nfsf-{secrets.token_hex(2)}", tmp_path_factory.mktemp("sf")
    with Node(tag, tmp).started(bridge_nf=request.param) as n:
        assert brnf(n) == str(request.param)
        n.add_pod("web", {"role": "web"})
        n.add_pod("db", {"role": "db", "port.netfabric.io/pg": "5432"})
        n.add_pod("cli", {"role": "cli"})
        n.add_pod("other", {"role": "other"}, namespace="team-b")
        yield n


def apply(node: Node, tmp: Path, text: str) -> None:
    r = node.policy("apply", "-f", write(tmp, text))
    assert r.returncode == 0, r.stderr


def delete_all(node: Node) -> None:
    for name in ("db-in", "db-out", "web-out"):
        node.policy("delete", name)


_SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
def serve(c):
    while data := c.recv(64):
        c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
c.settimeout(2)
for line in sys.stdin:
    try:
        c.sendall(b"x")
        print("ok" if c.recv(64) == b"x" else "fail", flush=True)
    except OSError as exc:
        print("fail", exc, flush=True)
"""


class Conn:
    """A long-lived TCP connection from pod ``src`` to a server in pod ``dst``."""

    def __init__(self, node: Node, src: str, dst: str, port: int) -> None:
        dst_ip = str(node.pods[dst][1])
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", node.pods[dst][0], sys.executable, "-c", _SERVER, dst_ip,
             str(port)], stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None and self.server.stdout.readline() == "ready\n"
        self.client = subprocess.Popen(
            ["ip", "netns", "exec", node.pods[src][0], sys.executable, "-c", _CLIENT, dst_ip,
             str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def works(self) -> bool:
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write("go\n")
        self.client.stdin.flush()
        return self.client.stdout.readline().startswith("ok")

    def close(self) -> None:
        for p in (self.client, self.server):
            p.kill()
            p.communicate()


def test_bridge_nf_setting_as_requested(node: Node) -> None:
    st = call(node.sock, {"op": "status"})["networks"][0]["policy_status"]
    assert st["engine"] == "nftables" and st["last_error"] is None


def test_replies_to_connections_an_isolated_pod_started(node: Node, tmp_path: Path) -> None:
    """db isolated for ingress may still open connections to same-host pods."""
    apply(node, tmp_path, DB_NO_INGRESS)
    try:
        check(node, [("db", "web", "tcp", True), ("db", "web", "udp", True),
                     ("db", "other", "tcp", True), ("web", "db", "tcp", False),
                     ("web", "db", "udp", False), ("web", "cli", "tcp", True)])
        out = node.policy("explain", "db").stdout
        assert "replies pass" in out and "bridge-nf-call-iptables" in out, out
    finally:
        delete_all(node)


def test_connections_into_an_egress_isolated_pod(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, DB_NO_EGRESS)
    try:
        check(node, [("web", "db", "tcp", True), ("web", "db", "udp", True),
                     ("other", "db", "tcp", True), ("db", "web", "tcp", False),
                     ("db", "web", "udp", False)])
    finally:
        delete_all(node)


def test_replacing_a_policy_cuts_forbidden_established_connections(
        node: Node, tmp_path: Path) -> None:
    port = 7000 + secrets.randbelow(1000)
    # opened while nothing is isolated (same-host: bridged, not tracked yet)
    early = Conn(node, "cli", "db", port)
    conns: list[Conn] = [early]
    try:
        assert early.works()
        apply(node, tmp_path, DB_FROM_PODS)  # db isolated, every pod allowed
        assert early.works()
        web = Conn(node, "web", "db", port + 1000)
        cli = Conn(node, "cli", "db", port + 2000)
        other = Conn(node, "other", "db", port + 3000)
        out = Conn(node, "db", "other", port + 4000)  # db's own connection to another pod
        conns += [web, cli, other, out]
        assert all(c.works() for c in (web, cli, other, out))
        apply(node, tmp_path, DB_FROM_WEB)  # replaces db-in: only web may connect now
        time.sleep(0.3)
        assert web.works(), "an allowed connection was cut"
        assert out.works(), "the isolated pod's own connection was cut"
        assert not cli.works(), "a forbidden established connection stayed open"
        assert not other.works(), "a forbidden established connection stayed open"
        assert not early.works(), "a connection opened before isolation stayed open"
        text = node.policy("explain", "db").stdout
        assert "established connections" in text, text
    finally:
        for c in conns:
            c.close()
        delete_all(node)


_V6_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(4)
s.settimeout(8)
print("ready", flush=True)
try:
    c, _ = s.accept()
    c.sendall(c.recv(16))
except OSError:
    pass
"""

_V6_CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1] + "%eth0", int(sys.argv[2])), timeout=3)
    c.sendall(b"v6")
    print("ok" if c.recv(16) == b"v6" else "fail")
except OSError as exc:
    print("fail", exc)
"""


def _link_local(node: Node, pod: str) -> str:
    out = sh("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
             ns=node.pods[pod][0]).stdout
    return out.split()[3].split("/")[0]


def _v6_open(node: Node, src: str, dst: str) -> bool:
    port = str(40000 + secrets.randbelow(1000))
    srv = subprocess.Popen(["ip", "netns", "exec", node.pods[dst][0], sys.executable, "-c",
                            _V6_SERVER, port], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline() == "ready\n"
        out = sh(sys.executable, "-c", _V6_CLIENT, _link_local(node, dst), port,
                 ns=node.pods[src][0]).stdout
        return out.startswith("ok")
    finally:
        srv.kill()
        srv.communicate()


def test_isolated_pods_not_reachable_around_ipv4(node: Node, tmp_path: Path) -> None:
    """Pods on one bridge also have IPv6 link-local addresses: no way around the rules."""
    deadline = time.monotonic() + 5  # link-local addresses leave "tentative" (DAD) first
    while time.monotonic() < deadline and not _v6_open(node, "web", "cli"):
        time.sleep(0.5)
    assert _v6_open(node, "web", "cli"), "link-local IPv6 between pods does not work at all"
    apply(node, tmp_path, DB_NO_INGRESS)
    apply(node, tmp_path, DB_NO_EGRESS.replace("db-out", "web-out").replace("role: db",
                                                                            "role: web"))
    try:
        assert not _v6_open(node, "cli", "db"), "IPv6 link-local reached an isolated pod"
        assert not _v6_open(node, "web", "cli"), "IPv6 link-local left an egress-isolated pod"
        assert _v6_open(node, "cli", "other"), "pods not isolated lost link-local IPv6"
    finally:
        delete_all(node)


def test_traffic_through_a_non_pod_bridge_port_is_policed(node: Node, tmp_path: Path) -> None:
    """An L2 overlay's port on the pod bridge (weave): a 'remote pod' behind it is policed."""
    bridge_ip = sh("ip", "-4", "-o", "addr", "show", "dev", "pol.br", ns=node.host).stdout
    net = IPv4Interface(bridge_ip.split()[3]).network
    remote, remote_ip = f"{node.tag}-remote", net.broadcast_address - 2
    sh("ip", "netns", "add", remote)
    try:
        sh("ip", "link", "add", "ovl0", "type", "veth", "peer", "name", "eth0", "netns", remote,
           ns=node.host)
        sh("ip", "link", "set", "ovl0", "master", "pol.br", "up", ns=node.host)
        sh("ip", "addr", "add", f"{remote_ip}/{net.prefixlen}", "dev", "eth0", ns=remote)
        sh("ip", "link", "set", "eth0", "up", ns=remote)
        node.pods["remote"] = (remote, remote_ip)
        check(node, [("remote", "db", "tcp", True)])
        apply(node, tmp_path, DB_FROM_WEB)
        check(node, [("remote", "db", "tcp", False), ("remote", "db", "udp", False),
                     ("web", "db", "tcp", True), ("db", "remote", "tcp", True),
                     ("remote", "web", "tcp", True)])
        block = f"[{{ipBlock: {{cidr: {remote_ip}/32}}}}]"
        apply(node, tmp_path, DB_FROM_WEB.replace("[{podSelector: {matchLabels: {role: web}}}]",
                                                  block))
        check(node, [("remote", "db", "tcp", True), ("web", "db", "tcp", False)])
        delete_all(node)
        apply(node, tmp_path, DB_NO_EGRESS)
        check(node, [("db", "remote", "tcp", False), ("remote", "db", "tcp", True)])
    finally:
        node.pods.pop("remote", None)
        delete_all(node)
        sh("ip", "link", "del", "ovl0", ns=node.host)
        sh("ip", "netns", "del", remote)


def test_relabel_running_pod(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, DB_FROM_WEB)
    try:
        check(node, [("cli", "db", "tcp", False), ("web", "db", "tcp", True)])
        r = node.policy("label", "cli", "role=web", "tier=front")
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        check(node, [("cli", "db", "tcp", True)])
        assert time.monotonic() - t0 < 5
        assert "role=web" in node.policy("explain", "cli").stdout
        node.stop_agent()  # the new labels are the agent's record: a restart keeps them
        node.start_agent()
        check(node, [("cli", "db", "tcp", True), ("other", "db", "tcp", False)])
        r = node.policy("label", "cli", "role=cli", "tier-")
        assert r.returncode == 0, r.stderr
        check(node, [("cli", "db", "tcp", False)])
        labels = call(node.sock, {"op": "policy.explain", "pod": "cli"})["labels"]
        assert labels == {"role": "cli"}
        bad = node.policy("label", "cli", "role=no spaces")
        assert bad.returncode == 1 and "label" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        delete_all(node)


def test_named_ports_follow_the_pods_declaration(node: Node, tmp_path: Path) -> None:
    apply(node, tmp_path, HEAD + """metadata: {name: db-in}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{ports: [{port: pg}, {port: nope}]}]
""")
    apply(node, tmp_path, HEAD + """metadata: {name: web-out}
spec:
  podSelector: {matchLabels: {role: web}}
  policyTypes: [Egress]
  egress: [{ports: [{port: pg}]}]
""")
    try:
        check(node, [("cli", "db", "tcp:5432", True), ("cli", "db", "tcp:5433", False),
                     ("web", "db", "tcp:5432", True), ("web", "db", "tcp:5433", False),
                     ("web", "cli", "tcp:5432", False)])  # cli declares no port "pg"
        out = node.policy("explain", "db").stdout
        assert "TCP/pg (5432)" in out and "TCP/nope (not declared" in out, out
    finally:
        delete_all(node)


def test_engine_none_refuses_apply(tmp_path: Path) -> None:
    with Node(f"nfsn-{secrets.token_hex(2)}", tmp_path, engine="none").started() as n:
        r = n.policy("apply", "-f", write(tmp_path, DB_NO_INGRESS))
        assert r.returncode != 0
        assert "created" not in r.stdout
        assert "--policy nftables" in r.stderr and "enforces nothing" in r.stderr, r.stderr
        assert n.policy("list", "--json").stdout.strip() == "[]"
