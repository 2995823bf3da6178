"""Fault injection on a running vxlan lab: an underlay UDP block cuts the overlay and
nothing else; `fabric lab restart h2` / `block` / `unblock` from the command line."""

from __future__ import annotations

import subprocess

import pytest

from fabric.lab import Lab, Topology
from tests.lab.lab_util import needs_root, stack_missing, up_or_skip

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]


def fabric(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fabric", *args], capture_output=True, text=True, timeout=120)


def test_vxlan_port_block_cuts_pods_not_hosts_and_restart(lab_name: str) -> None:
    if why := stack_missing("vxlan"):
        pytest.skip(why)
    lab: Lab = up_or_skip(Topology(lab_name, "vxlan", hosts=2, pods_per_host=1))
    try:
        assert lab.converge(timeout=20).ok
        out = fabric("lab", "block", "--name", lab_name, "h1", "h2", "--proto", "udp",
                     "--port", "8472")
        assert out.returncode == 0 and "blocked: h1 <-/-> h2 (udp port 8472)" in out.stdout
        assert not lab.ping("h1p1", "h2p1").ok  # the overlay rides on UDP 8472
        assert lab.ping("h1", "h2").ok and lab.tcp_check("h1", "h2").ok  # the underlay does not
        st = fabric("lab", "status", "--name", lab_name)
        assert "blocked: h1 <-/-> h2 (udp port 8472)" in st.stdout, st.stdout
        out = fabric("lab", "unblock", "--name", lab_name, "h2", "h1", "--proto", "udp",
                     "--port", "8472")
        assert out.returncode == 0, out.stderr
        assert lab.converge(timeout=10).ok

        old = lab.procs["agent:h2"].pid
        out = fabric("lab", "restart", "--name", lab_name, "h2")
        assert out.returncode == 0 and "agent:h2 restarted" in out.stdout, out.stderr
        lab.procs = Lab.attach(lab_name).procs
        assert lab.procs["agent:h2"].pid != old
        assert lab.agent_call("h2", {"op": "status"})["networks"][0]["ready"]
        assert lab.converge(timeout=10).ok
    finally:
        lab.down()
