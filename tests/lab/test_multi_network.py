"""Several backends in one lab (issue 13): pods on every network of every host, each network
reaches itself, `fabric lab status` lists pods per network, and what crosses networks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fabric.lab import Lab, Topology
from tests.lab.lab_util import needs_root, stack_missing

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]
FOUR = ("hostgw", "vxlan", "flannel-udp", "weave-sleeve")


def _fabric(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "fabric"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_pod_names_say_their_network() -> None:
    topo = Topology("nm1", FOUR, hosts=2)
    nets = topo.network_names()
    assert topo.pod_networks() == nets
    assert topo.pod_name("h1", nets[0], 1) == "h1p1"  # the first network: as one-network labs
    assert topo.pod_name("h2", nets[1], 1) == f"h2{nets[1]}p1"
    long = topo.pod_name("h10", nets[3], 1)  # h10weavesl3p1 is 13 > 12 characters
    assert long == "h10n3p1"
    assert Topology("nm1", FOUR, pod_network=nets[2]).pod_networks() == [nets[2]]


def test_four_backends_one_lab(lab_name: str) -> None:
    for b in FOUR:
        if why := stack_missing(b):
            pytest.skip(why)
    up = _fabric("lab", "up", "--name", lab_name, *[a for b in FOUR for a in ("--backend", b)],
                 "--hosts", "2", "--pods-per-host", "1", "--converge", "45", "--json")
    assert up.returncode == 0, up.stderr[-3000:]
    assert json.loads(up.stdout)["converged"] is True, up.stderr[-3000:]
    lab = Lab.attach(lab_name)
    by_net = lab.pods_by_network()
    assert list(by_net) == lab.topo.network_names()
    for i, (net, pods) in enumerate(by_net.items()):
        assert len(pods) == 2, by_net  # one pod per host on every network
        for pod in pods:
            assert lab.pods[pod].ip in lab.topo.network_cidr(i)
        res = lab.converge(timeout=10, pods=sorted(pods))  # every pod reaches its network
        assert res.ok, f"{net}: {res.summary()}"
    st = _fabric("lab", "status", "--name", lab_name)
    assert st.returncode == 0, st.stderr
    for net, pods in by_net.items():
        assert f"network {net}: 2 pod(s)" in st.stdout, st.stdout
        assert all(p in st.stdout for p in pods)
    # Networks are not isolated from each other: a pod's default route is its host, and
    # every host routes between all the networks it serves (one kernel routing table; weave's
    # bridge carries the host's address too). So a pod reaches the pods of the other networks
    # through the hosts: h1's hostgw pod -> h2's pod of every other network answers.
    # Isolating them takes policy (fabric policy), not the lab.
    first = lab.topo.network_names()[0]
    a = next(p for p in by_net[first] if lab.pods[p].host == "h1")
    for net, pods in list(by_net.items())[1:]:
        b = next(p for p in pods if lab.pods[p].host == "h2")
        assert lab.ping(a, b, count=2).ok, f"{a} -> {b} ({net})"
    # `fabric lab down` leaves nothing
    assert _fabric("lab", "down", "--name", lab_name).returncode == 0
