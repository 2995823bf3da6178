"""The nftables policy engine inside a real agent (hostgw backend, fake IPAM, one host ns).

Pods on one bridge: same-host traffic must obey NetworkPolicy although it is bridged.
Everything lives in namespaces named nfpol-<tag>-*; the agent is ended by its handle.
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

import pytest

from fabric.control import call
from fabric.errors import FabricError
from fabric.policy.engine import NO_STORE
from tests.functional.agent_util import FABRIC
from tests.functional.netns_util import sh
from tests.functional.policy_util import HEAD, Node, check, write

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    with Node(f"nfpol-{secrets.token_hex(2)}", tmp_path_factory.mktemp("pol")).started() as n:
        n.add_pod("web", {"role": "web"})
        n.add_pod("db", {"role": "db"})
        n.add_pod("other", {"role": "other"}, namespace="team-b")
        yield n


_COUNTER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.2)
print("ready", flush=True)
n, end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        s.recv(64)
        n += 1
    except OSError:
        pass
print(n, flush=True)
"""

_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    n += 1
    time.sleep(0.001)
print(n, flush=True)
"""


class Flood:
    """UDP packets every millisecond from one pod to another for ``seconds``."""

    def __init__(self, node: Node, src: str, dst: str, port: int, seconds: float) -> None:
        ip_ = str(node.pods[dst][1])
        self.rx = subprocess.Popen(["ip", "netns", "exec", node.pods[dst][0], sys.executable,
                                    "-c", _COUNTER, ip_, str(port), str(seconds + 1)],
                                   stdout=subprocess.PIPE, text=True)
        assert self.rx.stdout is not None and self.rx.stdout.readline().strip() == "ready"
        self.tx = subprocess.Popen(["ip", "netns", "exec", node.pods[src][0], sys.executable,
                                    "-c", _SENDER, ip_, str(port), str(seconds)],
                                   stdout=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, int]:
        sent = int(self.tx.communicate(timeout=60)[0].strip())
        got = int(self.rx.communicate(timeout=60)[0].strip())
        return sent, got


DENY_DB = HEAD + """metadata: {name: deny-db}
spec:
  podSelector: {matchLabels: {role: db}}
"""

ALLOW_WEB = HEAD + """metadata: {name: allow-web}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: web}}}]
    ports: [{port: 5432}, {protocol: UDP, port: 5300, endPort: 5310}]
"""


def test_no_policy_everything_open(node: Node) -> None:
    check(node, [("web", "db", "tcp", True), ("other", "db", "udp", True),
                 ("db", "web", "tcp", True)])


def test_deny_all_ingress_same_host(node: Node, tmp_path: Path) -> None:
    r = node.policy("apply", "-f", write(tmp_path, DENY_DB))
    assert r.returncode == 0, r.stderr
    assert "NetworkPolicy default/deny-db created" in r.stdout
    check(node, [("web", "db", "tcp", False), ("other", "db", "udp", False),
                 ("db", "web", "tcp", True), ("web", "other", "tcp", True)])
    st = call(node.sock, {"op": "status"})["networks"][0]["policy_status"]
    assert st["engine"] == "nftables" and st["isolated"]["ingress"] == 1
    assert st["warnings"] == [NO_STORE]  # this agent runs without etcd: and says so
    assert st["drops"]["endpoints"]["default/db"]["ingress"] > 0
    assert st["drops"]["policies"]["default/deny-db"]["ingress"] > 0
    metrics = node.policy("metrics").stdout
    line = next(x for x in metrics.splitlines() if x.startswith(
        'netfabric_policy_drops_total{node="n1",network="pol",policy="default/deny-db",'
        'direction="ingress"}'))
    assert int(line.split()[-1]) > 0


def test_allow_from_label_and_ports(node: Node, tmp_path: Path) -> None:
    r = node.policy("apply", "-f", write(tmp_path, ALLOW_WEB))
    assert r.returncode == 0, r.stderr
    check(node, [("web", "db", "tcp:5432", True), ("web", "db", "tcp:5433", False),
                 ("web", "db", "udp:5305", True), ("web", "db", "udp:5311", False),
                 ("other", "db", "tcp:5432", False), ("db", "web", "tcp", True)])
    r = node.policy("explain", "db")
    assert r.returncode == 0, r.stderr
    assert "selected by: default/deny-db, default/allow-web" in r.stdout
    assert "TCP/5432" in r.stdout and "UDP/5300-5310" in r.stdout
    assert str(node.pods["web"][1]) in r.stdout


def test_pods_coming_and_going_update_the_sets(node: Node) -> None:
    node.add_pod("late", {"role": "web"})
    try:
        check(node, [("late", "db", "tcp:5432", True), ("late", "db", "tcp:5433", False)])
        late_ip = str(node.pods["late"][1])
        assert late_ip in node.nft("list", "table", "inet", "netfabric-pol").stdout
    finally:
        ns, _ = node.pods.pop("late")
        call(node.sock, {"op": "cni.del", "network": "pol", "container_id": ns,
                         "ifname": "eth0", "netns": f"/run/netns/{ns}"})
        sh("ip", "netns", "del", ns)
    assert late_ip not in node.nft("list", "table", "inet", "netfabric-pol").stdout


def test_invalid_policy_rejected_whole(node: Node, tmp_path: Path) -> None:
    before = node.policy("list", "--json").stdout
    ruleset = node.nft("list", "table", "inet", "netfabric-pol").stdout
    bad = ALLOW_WEB.replace("allow-web", "other-name") + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]
"""
    r = node.policy("apply", "-f", write(tmp_path, bad))
    assert r.returncode == 1
    assert "spec.ingress[0].from[0].ipBlock.cidr" in r.stderr and "Traceback" not in r.stderr
    # an agent asked directly (bypassing the CLI's own check) refuses it the same way
    with pytest.raises(FabricError, match=r"ports\[0\]\.port: 'No_Svc' is not a valid port"):
        call(node.sock, {"op": "policy.apply", "documents": [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "x"}, "spec": {"podSelector": {}, "ingress": [
                 {"ports": [{"port": "No_Svc"}]}]}}]})
    assert node.policy("list", "--json").stdout == before
    assert node.nft("list", "table", "inet", "netfabric-pol").stdout.split("counter")[0] == \
        ruleset.split("counter")[0]


def test_no_window_while_rules_change(node: Node, tmp_path: Path) -> None:
    """Denied traffic never slips through while other policies come and go."""
    extra = write(tmp_path, DENY_DB.replace("deny-db", "churn").replace("role: db", "role: x"))
    flood = Flood(node, "other", "db", 5999, seconds=4)
    control = Flood(node, "web", "db", 5301, seconds=4)  # allowed: proves the flood counts
    t0, changes = time.monotonic(), 0
    while time.monotonic() - t0 < 3:
        assert node.policy("apply", "-f", extra).returncode == 0
        assert node.policy("delete", "churn").returncode == 0
        changes += 2
    sent, got = flood.result()
    c_sent, c_got = control.result()
    assert c_got > 0.9 * c_sent, (c_sent, c_got)
    assert sent > 500 and changes >= 4
    assert got == 0, f"{got} of {sent} denied packets passed during {changes} updates"


def test_rules_survive_agent_restart(node: Node) -> None:
    flood = Flood(node, "other", "db", 5998, seconds=4)  # denied all along, restart included
    node.stop_agent()
    # graceful stop leaves the rules in force
    check(node, [("other", "db", "tcp:5432", False), ("web", "db", "tcp:5432", True)])
    node.start_agent()
    check(node, [("other", "db", "tcp:5432", False), ("web", "db", "tcp:5432", True)])
    sent, got = flood.result()
    assert sent > 500 and got == 0, f"{got} of {sent} denied packets passed"
    lst = json.loads(node.policy("list", "--json").stdout)
    assert {i["name"] for i in lst} == {"deny-db", "allow-web"}


def test_delete_reopens(node: Node) -> None:
    for name in ("deny-db", "default/allow-web"):
        r = node.policy("delete", name)
        assert r.returncode == 0, r.stderr
    check(node, [("other", "db", "tcp", True), ("web", "db", "udp", True)])
    r = node.policy("delete", "deny-db")
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_teardown_removes_tables(node: Node) -> None:
    r = subprocess.run([FABRIC, "down", "--state-dir", str(node.state)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    node.proc.wait(timeout=30)
    out = node.nft("list", "tables").stdout
    assert "netfabric-pol" not in out
