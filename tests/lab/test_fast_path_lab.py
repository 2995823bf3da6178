"""FastPath in full labs (real agents, IPAM, CNI): every backend offering it.

2 hosts x 2 pods with ``FastPath: true``: every pod reaches every other (same
host and across), TCP works, bulk traffic between hosts passes neither host's
netfilter ``forward`` hook (it took the eBPF fast path), and an agent restart
(kill -9) keeps it.
"""

from __future__ import annotations

import pytest

from fabric.lab import Topology
from tests.lab.lab_util import installed_backends, needs_root, stack_missing, up_or_skip
from tests.util import FORWARD_COUNTER, FORWARD_COUNTER_LIST, counted_packets

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]
FAST_PATH_BACKENDS = [b for b in ("hostgw", "vxlan", "calico-bgp") if b in installed_backends()]


def _forwarded(lab, host: str) -> int:
    return counted_packets(lab.exec(host, ["nft", FORWARD_COUNTER_LIST]).stdout)


@pytest.mark.parametrize("backend", FAST_PATH_BACKENDS)
def test_fast_path_lab(backend: str, lab_name: str) -> None:
    from fabric.net.fastpath import probe

    if why := stack_missing(backend) or probe():
        pytest.skip(why)
    topo = Topology(lab_name, backend, hosts=2, pods_per_host=2,
                    backend_opts={backend: {"FastPath": True}})
    lab = up_or_skip(topo)
    try:
        res = lab.converge(timeout=20)
        assert res.ok and len(res.pairs) == 12, res.summary()
        for src, dst in (("h1p1", "h2p1"), ("h1p1", "h1p2")):
            assert lab.tcp_check(src, dst).ok
        for host in ("h1", "h2"):
            for cmd in FORWARD_COUNTER:
                lab.exec(host, ["nft", cmd])
        result = lab.iperf("h1p1", "h2p2", seconds=1)
        assert result.gbps > 0
        assert _forwarded(lab, "h1") < 30 and _forwarded(lab, "h2") < 30
        nets = lab.agent_call("h1", {"op": "status"})["networks"]
        assert nets[0]["backend_status"]["fast_path"]["enabled"], nets[0]

        lab.restart_agent("h1", kill9=True)
        lab.add_pod("h1", "h1p3")
        res = lab.converge(timeout=20)
        assert res.ok, res.summary()
        before = _forwarded(lab, "h1")
        lab.iperf("h1p3", "h2p1", seconds=1)
        assert _forwarded(lab, "h1") - before < 30  # the new pod's veth has the program too
    finally:
        lab.down()
