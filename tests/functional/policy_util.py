"""The nftables policy engine in a real agent: a host with labelled pods, policy files, and
reachability checks between pods (all at once)."""

from __future__ import annotations

import secrets
import subprocess
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from fabric.control import call
from fabric.policy.probe import Probe, probe_many
from tests.functional.agent_util import FABRIC, AgentHost
from tests.functional.netns_util import sh

CIDR = "10.91.0.0/16"
HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"  # of a policy document


class Node(AgentHost):
    """The agent with policy ``engine`` on network "pol" (CIDR) and labelled pods on its bridge."""

    def __init__(self, tag: str, tmp: Path, engine: str = "nftables") -> None:
        super().__init__(tag, tmp, name="pol", cidr=CIDR, address="198.18.77.1/24",
                         engine=engine)
        self.pods: dict[str, tuple[str, IPv4Address]] = {}

    def add_pod(self, name: str, labels: dict[str, str], namespace: str = "default") -> None:
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        res = call(self.sock, {"op": "cni.add", "network": "pol", "container_id": ns,
                               "ifname": "eth0", "netns": f"/run/netns/{ns}",
                               "pod_name": name, "pod_namespace": namespace, "labels": labels})
        self.pods[name] = (ns, IPv4Interface(res["ips"][0]["address"]).ip)

    def policy(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FABRIC, "policy", *args, "--socket", str(self.sock)],
                              capture_output=True, text=True, timeout=60)

    def nft(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.host, "nft", *args],
                              capture_output=True, text=True, timeout=30)


def write(tmp: Path, text: str) -> str:
    p = tmp / f"p{secrets.token_hex(3)}.yaml"
    p.write_text(text)
    return str(p)


_port = iter(range(20000, 30000))


def check(node: Node, expected: list[tuple[str, str, str, bool]]) -> None:
    """(src pod, dst pod, 'tcp'/'udp' or 'tcp:PORT', expected reachability) all at once."""
    probes = []
    for src, dst, what, _ in expected:
        proto, _, port = what.partition(":")
        probes.append(Probe(node.pods[src][0], node.pods[dst][0], node.pods[dst][1],
                            int(port) if port else next(_port), proto,  # type: ignore[arg-type]
                            f"{src}->{dst} {what}"))
    results = probe_many(probes)
    wrong = [f"{r.probe.label}: got {'open' if r.ok else 'blocked'} ({r.detail})"
             for r, (*_, want) in zip(results, expected, strict=True) if r.ok != want]
    assert not wrong, wrong
