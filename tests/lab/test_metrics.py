"""`fabric up --metrics-addr`: every lab agent's /metrics, scraped with curl over the underlay
as Prometheus would, parsed by prometheus-client's parser, numbers checked against the lab.

One body per backend family: vxlan (etcd leases, kernel data path), flannel-udp (user-space
data path counters), calico-bgp (BGP sessions), weave-sleeve (gossip mesh connections).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fabric.lab import Lab, Topology
from tests.lab.lab_util import needs_root, stack_missing, up_or_skip

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root,
              pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")]

PORT = 9402
FAMILIES = {"netfabric_network_ready", "netfabric_pods", "netfabric_ipam_addresses",
            "netfabric_peers", "netfabric_dataplane_packets", "netfabric_dataplane_drops",
            "netfabric_mesh_connections", "netfabric_bgp_sessions_established",
            "netfabric_policy_drops", "netfabric_cni_request_duration_seconds"}


def scrape(lab: Lab, src: str, host: str) -> dict[str, Any]:
    """curl in ``src``'s namespace for ``host``'s /metrics; families by name."""
    url = f"http://{lab.hosts[host].ip}:{PORT}/metrics"
    res = lab.exec(src, ["curl", "-sS", "--max-time", "5", url])
    assert res.returncode == 0, res.stderr
    return {f.name: f for f in text_string_to_metric_families(res.stdout)}


def value(fams: dict[str, Any], family: str, sample: str = "", **labels: str) -> float:
    return sum(s.value for s in fams[family].samples
               if (not sample or s.name == sample)
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.parametrize("backend", ["vxlan", "flannel-udp", "calico-bgp", "weave-sleeve"])
def test_every_agent_serves_metrics(backend: str, lab_name: str) -> None:
    if why := stack_missing(backend, etcd=backend != "weave-sleeve"):
        pytest.skip(why)
    topo = Topology(lab_name, backend, hosts=3, pods_per_host=2,
                    agent_args=[f"--metrics-addr={{ip}}:{PORT}"])
    lab = up_or_skip(topo)
    try:
        assert lab.converge(timeout=30).ok
        net = lab.agent_call("h1", {"op": "status"})["networks"][0]["name"]
        for host in lab.hosts:
            fams = scrape(lab, "h1" if host != "h1" else "h2", host)  # over the underlay
            assert set(fams) >= FAMILIES, sorted(FAMILIES - set(fams))
            assert value(fams, "netfabric_network_ready", network=net) == 1
            assert value(fams, "netfabric_pods", network=net) == 2
            used = value(fams, "netfabric_ipam_addresses", network=net, state="used")
            assert used >= 2 and value(fams, "netfabric_ipam_addresses", network=net,
                                       state="free") > 0
            adds = value(fams, "netfabric_cni_request_duration_seconds",
                         "netfabric_cni_request_duration_seconds_count",
                         verb="add", result="ok")
            assert adds == 2, f"{host}: {adds} CNI ADDs counted"
            if backend == "calico-bgp":  # node-to-node mesh: a session to each other host
                assert value(fams, "netfabric_bgp_sessions_established", network=net) == 2
            elif backend == "weave-sleeve":
                assert value(fams, "netfabric_mesh_connections", network=net,
                             state="established") == 2
            else:
                assert value(fams, "netfabric_peers", network=net) == 2
            if backend in ("flannel-udp", "weave-sleeve"):  # user-space data path counters
                assert value(fams, "netfabric_dataplane_packets",
                             "netfabric_dataplane_packets_total", network=net,
                             direction="tx") > 0
    finally:
        lab.down()
