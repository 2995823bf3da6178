"""The agent's Prometheus registry: families from status() and the CNI latency histogram.

The lab test (tests/lab/test_metrics.py) scrapes real agents over HTTP; here every kind of
backend status block is fed through the collector, and the exposition is parsed back with
prometheus-client's parser.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fabric.agent.metrics import AgentMetrics, parse_addr
from fabric.cni.main import run
from tests.unit.agent_util import NETNS, RunningAgent, one_net

STATUS: dict[str, Any] = {
    "node": {"name": "h1"},
    "networks": [
        {"name": "cal", "backend": "calico-bgp", "ready": True, "workloads": 3,
         "chunks": ["10.1.0.0/26", "10.1.0.64/26"], "ipam_status": {"allocations": 3},
         "backend_status": {
             "peers": [{"state": "Established 5m, 3 received / 2 sent"},
                       {"state": "Active 2s, 0 received / 0 sent"}],
             "bgp": {"peers": [{"state": "Established"}, {"state": "Active"}]}},
         "policy_status": {"policies": 2, "transactions": 5,
                           "drops": {"policies": {"deny-db": {"ingress": 7}},
                                     "endpoints": {"web-1": {"egress": 1}}}}},
        {"name": "wv", "backend": "weave-sleeve", "ready": True, "workloads": 1,
         "chunks": ["10.32.0.0/12"],
         "ipam_status": {"name": "aa:bb", "ipam": {  # weave's ring: this peer's share
             "allocated_here": 1, "owners": [{"peer": "aa:bb", "free": 100},
                                             {"peer": "cc:dd", "free": 50}]}},
         "backend_status": {
             "mesh": {"connections": [{"state": "established"}, {"state": "established"},
                                      {"state": "failed"}]},
             "overlay": {"engine": {"tx": {"packets": 10, "bytes": 1500},
                                    "rx": {"packets": 4, "bytes": 400},
                                    "drops": {"tx": {"no_route": 2}, "rx": {"bad_mac": 1}}}}}},
        {"name": "fl", "backend": "vxlan", "ready": False, "workloads": 0, "chunks": [],
         "ipam_status": {"error": "etcd down", "peers": [{"state": "leased"}]},
         "backend_status": {"error": "not started"}},
    ],
}


def scrape(metrics: AgentMetrics) -> dict[str, Any]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    for fam in families.values():
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no {sample} {labels}")


def test_every_family_from_status() -> None:
    fams = scrape(AgentMetrics(lambda: STATUS))
    assert value(fams, "netfabric_pods", network="cal") == 3
    assert value(fams, "netfabric_ipam_addresses", network="cal", state="used") == 3
    assert value(fams, "netfabric_ipam_addresses", network="cal", state="free") == 2 * 62 - 3
    assert value(fams, "netfabric_ipam_addresses", network="wv", state="used") == 1
    assert value(fams, "netfabric_ipam_addresses", network="wv", state="free") == 100
    assert value(fams, "netfabric_network_ready", network="fl") == 0
    assert value(fams, "netfabric_peers", network="cal", state="established") == 1
    assert value(fams, "netfabric_peers", network="cal", state="active") == 1
    assert value(fams, "netfabric_peers", network="fl", state="leased") == 1  # from the IPAM
    assert value(fams, "netfabric_bgp_sessions_established", network="cal") == 1
    assert value(fams, "netfabric_mesh_connections", network="wv", state="established") == 2
    assert value(fams, "netfabric_dataplane_packets_total", network="wv", direction="tx") == 10
    assert value(fams, "netfabric_dataplane_bytes_total", network="wv", direction="rx") == 400
    assert value(fams, "netfabric_dataplane_drops_total", network="wv", direction="tx",
                 reason="no_route") == 2
    assert value(fams, "netfabric_policy_drops_total", network="cal", policy="deny-db",
                 direction="ingress") == 7  # the policy package's own family, served here
    for fam in fams.values():  # conventions: counters end in _total, units in base units
        for s in fam.samples:
            assert s.name.startswith("netfabric_")
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created"))


def test_a_failing_status_still_answers() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    fams = scrape(AgentMetrics(broken))
    assert "netfabric_cni_request_duration_seconds" in fams


def test_cni_latency_histogram_counts_real_requests(tmp_path: Path) -> None:
    run_agent = RunningAgent(tmp_path / "state", [one_net("fk")])
    # a registry attached without --metrics-addr: counted, not served (no port opened here)
    run_agent.agent.metrics = AgentMetrics(run_agent.agent.status)
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "fabric-cni",
            "agentSocket": run_agent.socket}
    with run_agent:
        for verb, cid in (("ADD", "c1"), ("ADD", "c2"), ("DEL", "c1"), ("DEL", "nope")):
            env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
                   "CNI_NETNS": NETNS, "CNI_PATH": "/x"}
            run(env, io.BytesIO(json.dumps(conf).encode()), io.StringIO(), io.StringIO())
        fams = scrape(run_agent.agent.metrics)
    name = "netfabric_cni_request_duration_seconds_count"
    assert value(fams, name, verb="add", result="ok") == 2
    assert value(fams, name, verb="del", result="ok") == 2  # DEL of an unknown one succeeds
    assert value(fams, "netfabric_pods", network="fk") == 1


def test_metrics_address_parsing() -> None:
    assert parse_addr("127.0.0.1:9402") == ("127.0.0.1", 9402)
    assert parse_addr(":9402") == ("0.0.0.0", 9402)
    assert parse_addr("[::1]:9402") == ("::1", 9402)
    import pytest

    from fabric.errors import ConfigError

    for bad in ("9402", "host:", "h:99999"):
        with pytest.raises(ConfigError) as exc:
            parse_addr(bad)
        assert exc.value.fix


def test_an_address_that_cannot_be_served_is_a_config_error() -> None:
    import pytest

    from fabric.errors import ConfigError

    metrics = AgentMetrics(lambda: STATUS)
    with pytest.raises(ConfigError, match="cannot serve metrics") as exc:
        metrics.serve("203.0.113.1:9402")  # TEST-NET-3: not an address of this host
    assert exc.value.field == "--metrics-addr" and exc.value.fix
    metrics.close()
