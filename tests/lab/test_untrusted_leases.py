"""Datastore records are untrusted (issue 16): forged leases never touch routes outside the
pod network, are refused and reported; garbage over a node's own lease is re-asserted.

Real agents, real etcd (written with etcdctl from the switch), real kernel routes.
"""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from fabric.lab import Lab
from fabric.lab.underlay import etcd_url
from tests.lab.lab_util import converged_lab, needs_root, outside_routes

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]

POD_NET = IPv4Network("10.244.0.0/16")


def etcdctl(lab: Lab, *args: str, value: str | None = None) -> str:
    argv = ["etcdctl", "--endpoints", etcd_url(), *args]
    out = lab.exec("sw", [*argv, value] if value is not None else argv)
    assert out.ok, out.stderr
    return out.stdout


def refused_keys(lab: Lab, host: str) -> set[str]:
    st = lab.agent_call(host, {"op": "status"})
    return {r.get("key") or r.get("subnet") for n in st["networks"] for r in n.get("refused", [])}


def lease(ip: str, mac: str = "0a:11:22:33:44:55") -> str:
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan",
                       "BackendData": {"VtepMAC": mac, "VNI": 1}})


FORGED = {  # key suffix -> value; each is refused by every node
    "0.0.0.0-0": lease("198.18.0.12"),  # deleting it once removed every default route
    "198.18.0.0-24": lease("198.18.0.12"),  # replaced the connected underlay route
    "10.99.0.0-24": lease("198.18.0.12"),  # outside the network
    "10.244.0.0-16": lease("198.18.0.12"),  # the whole pod network
    "10.244.77.0-25": lease("198.18.0.12"),  # not the network's SubnetLen
    "10.244.78.0-24": lease("10.244.1.5"),  # PublicIP inside the pod network
    "10.244.79.0-24": lease("224.0.0.5"),  # PublicIP not unicast
    "10.244.80.0-24": lease("198.18.0.12", mac="ff:ff:ff:ff:ff:ff"),  # broadcast VtepMAC
    "10.244.81.0-24": lease("0.0.0.0"),
}


@pytest.mark.parametrize("backend", ["vxlan", "hostgw"])
def test_forged_leases_are_refused_and_host_routes_survive(lab_name: str, backend: str) -> None:
    with converged_lab(lab_name, backend) as lab:
        before = {h: outside_routes(lab, h, POD_NET) for h in lab.hosts}
        assert all(any('"dst": "default"' in r for r in rs) for rs in before.values())
        prefix = f"/netfabric/{lab.topo.network_names()[0]}/subnets/"
        for key, value in FORGED.items():
            etcdctl(lab, "put", prefix + key, value=value)
        end = time.monotonic() + 3
        while time.monotonic() < end:  # agents react within ~100 ms: watch for 3 s
            for h in lab.hosts:
                assert outside_routes(lab, h, POD_NET) == before[h], h
        want = {prefix + k for k in FORGED}
        lab.wait(lambda: all(want <= refused_keys(lab, h) for h in lab.hosts), timeout=10)
        for h in lab.hosts:
            assert outside_routes(lab, h, POD_NET) == before[h], h
            fabric_routes = lab.exec(h, ["ip", "route", "show", "proto", "78"]).stdout
            assert "10.99.0.0" not in fabric_routes and "10.244.78.0" not in fabric_routes
        assert lab.ping_all().ok

        for key in FORGED:  # deleting them removed the default route before the fix
            etcdctl(lab, "del", prefix + key)
        time.sleep(1)
        for h in lab.hosts:
            assert outside_routes(lab, h, POD_NET) == before[h], h
        lab.wait(lambda: not any(refused_keys(lab, h) for h in lab.hosts), timeout=10)
        for h in lab.hosts:
            assert outside_routes(lab, h, POD_NET) == before[h], h
        assert lab.ping_all().ok


def test_garbage_over_own_lease_is_reasserted_pods_stay_reachable(lab_name: str) -> None:
    with converged_lab(lab_name, "vxlan") as lab:
        st = lab.agent_call("h1", {"op": "status"})["networks"][0]
        subnet, key = st["chunks"][0], st["ipam_status"]["key"]
        good = etcdctl(lab, "get", key, "--print-value-only").strip()
        etcdctl(lab, "put", key, value="{not json")
        # the keeper re-asserts: the record is ours again, the subnet unchanged
        lab.wait(lambda: etcdctl(lab, "get", key, "--print-value-only").strip() == good, 15)
        assert lab.agent_call("h1", {"op": "status"})["networks"][0]["chunks"] == [subnet]
        new = lab.add_pod("h1", "h1p2")
        assert new.ip in IPv4Network(subnet)
        assert lab.converge(timeout=10).ok, lab.ping_all().summary()  # old and new pods
        # the key carries our etcd lease again (a TTL): garbage never holds a subnet forever
        assert "lease" in etcdctl(lab, "get", key, "-w", "json")


def test_lease_taken_by_another_node_moves_the_gateway_consistently(lab_name: str) -> None:
    """A valid record of another node over h1's lease (its owner in etcd's eyes): h1 takes a
    new subnet, says so, and its new pods reach and are reached by the other host's pods."""
    with converged_lab(lab_name, "vxlan") as lab:
        st = lab.agent_call("h1", {"op": "status"})["networks"][0]
        old, key = st["chunks"][0], st["ipam_status"]["key"]
        etcdctl(lab, "put", key, value=lease("198.18.0.99"))
        lab.wait(lambda: lab.agent_call("h1", {"op": "status"})["networks"][0]["chunks"]
                 != [old], timeout=15)
        new_subnet = IPv4Network(lab.agent_call("h1", {"op": "status"})["networks"][0]
                                 ["chunks"][0])
        pod = lab.add_pod("h1", "h1p2")
        assert pod.ip in new_subnet
        res = lab.converge(timeout=15, pods=["h1p2", "h2p1"])
        assert res.ok, res.summary()
        log = (Path(lab.hosts["h1"].state_dir) / "agent.log").read_text()
        assert "node subnet moved from" in log
