"""hostgw and vxlan backends programming real kernels in two emulated hosts (no IPAM)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.functional.backend_util import bring_up, two_host_env
from tests.functional.netns_util import needs_root, ping, sh

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture
def two_hosts(tmp_path: Path):
    with two_host_env("nfkt", tmp_path) as env:
        yield env


@pytest.mark.parametrize("backend", ["hostgw", "vxlan"])
def test_pods_on_two_hosts_reach_each_other(two_hosts, backend: str) -> None:
    bring_up(two_hosts, backend)
    p1, p2 = two_hosts["pods"]
    assert ping(p1, "10.99.2.5") and ping(p2, "10.99.1.5")
    h1 = two_hosts["ns"][0]
    mtu = sh("cat", "/sys/class/net/eth0/mtu", ns=p1).stdout.strip()
    assert mtu == ("1450" if backend == "vxlan" else "1500")
    # peer removal takes the route away at once
    d1 = two_hosts["drivers"][0]
    assert d1(op="peer", kind="removed", name="h2", ip="198.18.200.12", chunk="10.99.2.0/24",
              backend=backend, data={})["ok"]
    assert "10.99.2.0/24" not in sh("ip", "route", ns=h1).stdout
    assert not ping(p1, "10.99.2.5")
    # teardown removes devices
    assert d1(op="detach", cid="c0", netns=f"/run/netns/{p1}")["ok"]
    assert d1(op="teardown")["ok"]
    links = sh("ip", "-o", "link", ns=h1).stdout
    assert "t.br" not in links and "t.vx" not in links


def test_vxlan_device_is_recreated_when_deleted(two_hosts) -> None:
    bring_up(two_hosts, "vxlan")
    h1 = two_hosts["ns"][0]
    p1 = two_hosts["pods"][0]
    fdb_before = sh("bridge", "fdb", "show", "dev", "t.vx", ns=h1).stdout
    sh("ip", "link", "del", "t.vx", ns=h1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not ping(p1, "10.99.2.5"):
        time.sleep(0.2)
    assert ping(p1, "10.99.2.5")
    assert sh("bridge", "fdb", "show", "dev", "t.vx", ns=h1).stdout.split()[:3] == \
        fdb_before.split()[:3]
    info = json.loads(sh("ip", "-j", "-d", "link", "show", "t.vx", ns=h1).stdout)[0]
    vx = info["linkinfo"]["info_data"]
    assert vx["id"] == 1 and vx["port"] == 8472 and not vx.get("learning")


def test_hostgw_refuses_peer_behind_a_router(two_hosts) -> None:
    bring_up(two_hosts, "hostgw")
    h1 = two_hosts["ns"][0]
    sh("ip", "route", "add", "198.18.201.0/24", "via", "198.18.200.12", ns=h1)
    d1 = two_hosts["drivers"][0]
    assert d1(op="peer", name="far", ip="198.18.201.5", chunk="10.99.9.0/24",
              backend="hostgw", data={})["ok"]
    st = d1(op="status")["result"]
    far = [p for p in st["peers"] if p["name"] == "far"][0]
    assert far["state"].startswith("refused") and "L2 segment" in far["state"]
    assert "10.99.9.0/24" not in sh("ip", "route", ns=h1).stdout


def test_vxlan_direct_routing_uses_underlay_for_same_segment(two_hosts) -> None:
    bring_up(two_hosts, "vxlan", {"DirectRouting": True})
    h1 = two_hosts["ns"][0]
    route = sh("ip", "route", "show", "10.99.2.0/24", ns=h1).stdout
    assert "via 198.18.200.12 dev eth0" in route
    assert ping(two_hosts["pods"][0], "10.99.2.5")
