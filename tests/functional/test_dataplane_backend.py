"""flannel-udp backend in two emulated hosts (driver process per host, no IPAM)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.functional.backend_util import bring_up, two_host_env
from tests.functional.netns_util import needs_root, ping, sh, transfer

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture
def hosts(tmp_path: Path):
    with two_host_env("nfdp-k", tmp_path, teardown=True) as env:
        yield env


def _status(env, i: int = 0) -> dict:
    r = env["drivers"][i](op="status")
    assert r["ok"], r
    return r["result"]["dataplane"]


def _wait_ping(ns: str, dst: str, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ping(ns, dst):
            return True
    return False


def _tcp_transfer(env, size: int = 8 << 20) -> None:
    """Send ``size`` random bytes pod1 -> pod2 over TCP and compare digests."""
    transfer(env["pods"][0], env["pods"][1], "10.99.2.5", size)


def test_pods_reach_each_other_over_flannel_udp(hosts) -> None:
    bring_up(hosts, "flannel-udp")
    p1, p2 = hosts["pods"]
    assert _wait_ping(p1, "10.99.2.5") and ping(p2, "10.99.1.5")
    assert sh("cat", "/sys/class/net/eth0/mtu", ns=p1).stdout.strip() == "1472"
    _tcp_transfer(hosts)
    st = _status(hosts)
    assert st["fast_path"] and st["offload"]["udp_gso"] and st["offload"]["udp_gro"], st
    assert st["tx"]["bytes"] > 8 << 20 and st["rx"]["packets"] > 0
    # the wire is flannel's: UDP to port 8285 between the hosts' public addresses
    h1 = hosts["ns"][0]
    assert "t.tun" in sh("ip", "-o", "link", ns=h1).stdout
    route = sh("ip", "route", "show", "10.99.0.0/16", ns=h1).stdout
    assert "dev t.tun" in route


def test_unleased_address_gets_net_unreachable_and_ttl_is_decremented(hosts) -> None:
    bring_up(hosts, "flannel-udp")
    p1 = hosts["pods"][0]
    assert _wait_ping(p1, "10.99.2.5")
    out = sh("ping", "-c", "1", "-W", "1", "10.99.7.5", ns=p1, check=False).stdout
    assert "Net Unreachable" in out, out
    assert _status(hosts)["drops"]["tx"].get("no_route", 0) >= 1
    # TTL: pod -> bridge (routed, -1) -> engine (-1) -> remote host (routed, -1) -> pod
    out = sh("ping", "-c", "1", "-W", "1", "10.99.2.5", ns=p1).stdout
    assert "ttl=61" in out, out
    out = sh("ping", "-c", "1", "-W", "1", "-t", "2", "10.99.2.5", ns=p1, check=False)
    assert out.returncode != 0
    assert _status(hosts)["drops"]["tx"].get("ttl_expired", 0) >= 1


def test_peer_table_follows_leases_while_traffic_flows(hosts) -> None:
    bring_up(hosts, "flannel-udp")
    p1 = hosts["pods"][0]
    d1 = hosts["drivers"][0]
    assert _wait_ping(p1, "10.99.2.5")
    peer = {"name": "h2", "ip": "198.18.200.12", "chunk": "10.99.2.0/24",
            "backend": "flannel-udp", "data": {"Port": 8285}}
    assert d1(op="peer", kind="removed", **peer)["ok"]
    assert not ping(p1, "10.99.2.5")
    assert d1(op="peer", kind="added", **peer)["ok"]
    assert _wait_ping(p1, "10.99.2.5", 3)
    assert _status(hosts)["peers"] == 1


def test_bad_datagrams_are_dropped_and_counted(hosts) -> None:
    bring_up(hosts, "flannel-udp")
    p1 = hosts["pods"][0]
    h1, h2 = hosts["ns"]
    assert _wait_ping(p1, "10.99.2.5")
    # from the peer's address (h2): garbage, truncated header, wrong length, oversized
    send = (
        "import socket,os;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.bind(('198.18.200.12',0));a=('198.18.200.11',8285)\n"
        "for p in [b'garbage', os.urandom(1400), bytes([0x45,0,0,20]), b'\\x45'+bytes(30),"
        " bytes([0x45,0,0xff,0xff])+os.urandom(60000)]: s.sendto(p,a)"
    )
    sh(sys.executable, "-c", send, ns=h2)
    # from an address that is no peer (a second address on h2)
    sh("ip", "addr", "add", "198.18.200.99/24", "dev", "eth0", ns=h2)
    stranger = send.replace("198.18.200.12", "198.18.200.99")
    sh(sys.executable, "-c", stranger, ns=h2)
    time.sleep(0.5)
    drops = _status(hosts)["drops"]["rx"]
    assert drops.get("malformed", 0) >= 5, drops
    assert drops.get("unknown_source", 0) >= 1, drops
    assert ping(p1, "10.99.2.5")  # still forwarding


def test_fallback_without_offloads_is_reported_and_interoperates(hosts) -> None:
    d1, d2 = hosts["drivers"]
    ips = ("198.18.200.11", "198.18.200.12")
    chunks = ("10.99.1.0/24", "10.99.2.0/24")
    configs = ({"Offload": False}, {})
    for i, d in enumerate((d1, d2)):
        r = d(op="init", net="t", cidr="10.99.0.0/16", backend="flannel-udp", config=configs[i],
              node=f"h{i+1}", ip=ips[i], state=str(hosts["tmp"] / f"h{i+1}"), chunk=chunks[i])
        assert r["ok"], r
    for i, d in enumerate((d1, d2)):
        j = 1 - i
        assert d(op="peer", name=f"h{j+1}", ip=ips[j], chunk=chunks[j],
                 backend="flannel-udp", data={"Port": 8285})["ok"]
        assert d(op="attach", cid=f"c{i}", netns=f"/run/netns/{hosts['pods'][i]}",
                 pod_ip=f"10.99.{i+1}.5", chunk=chunks[i])["ok"]
    st = _status(hosts, 0)
    assert not st["fast_path"] and "disabled" in st["fallback_reason"]
    assert _status(hosts, 1)["fast_path"]
    assert _wait_ping(hosts["pods"][0], "10.99.2.5")
    _tcp_transfer(hosts, 4 << 20)  # offloaded sender -> per-packet receiver and back (ACKs)


def test_teardown_removes_devices(hosts) -> None:
    bring_up(hosts, "flannel-udp")
    h1 = hosts["ns"][0]
    d1 = hosts["drivers"][0]
    assert d1(op="detach", cid="c0", netns=f"/run/netns/{hosts['pods'][0]}")["ok"]
    assert d1(op="teardown")["ok"]
    links = sh("ip", "-o", "link", ns=h1).stdout
    assert "t.tun" not in links and "t.br" not in links
    assert "10.99.0.0/16" not in sh("ip", "route", ns=h1).stdout


def test_deleted_tun_device_is_recreated(hosts) -> None:
    bring_up(hosts, "flannel-udp")
    h1 = hosts["ns"][0]
    p1 = hosts["pods"][0]
    assert _wait_ping(p1, "10.99.2.5")
    sh("ip", "link", "del", "t.tun", ns=h1)
    assert _wait_ping(p1, "10.99.2.5", 8)
    r = hosts["drivers"][0](op="status")["result"]
    assert r["restarted"] >= 1 and r["dataplane"]["running"]
    assert "dev t.tun" in sh("ip", "route", "show", "10.99.0.0/16", ns=h1).stdout
