"""The eBPF fast path (backend option FastPath) on real kernels: two emulated hosts.

Whether pod traffic took the fast path is read from a counting nftables
``forward`` chain on each host: the fast path forwards past netfilter, the
normal stack does not. The same check with FastPath off proves the counter sees
forwarded traffic at all.
"""

from __future__ import annotations

import re

import pytest

from tests.functional.backend_util import bring_up, two_host_env
from tests.functional.netns_util import needs_root, ping, sh
from tests.util import FORWARD_COUNTER, FORWARD_COUNTER_LIST, counted_packets, wait_for

pytestmark = [needs_root, pytest.mark.root]
PRIO = re.compile(r"pref (\d+) bpf .*netfabric-t ")


@pytest.fixture
def two_hosts(tmp_path):
    from fabric.net.fastpath import probe

    if why := probe():
        pytest.skip(why)
    with two_host_env("nffp", tmp_path, teardown=True) as env:
        yield env


def _count_forwarding(hosts: tuple[str, ...]) -> None:
    for ns in hosts:
        for cmd in FORWARD_COUNTER:
            sh("nft", cmd, ns=ns)


def _forwarded(ns: str) -> int:
    return counted_packets(sh("nft", FORWARD_COUNTER_LIST, ns=ns).stdout)


def _bulk_tcp(src: str, dst: str, dst_ip: str) -> None:
    """About 20 MB of TCP from ``src`` to ``dst`` (iperf3)."""
    sh("iperf3", "-s", "-1", "-D", "-p", "5298", ns=dst)
    for _ in range(20):
        if sh("iperf3", "-c", dst_ip, "-p", "5298", "-n", "20M", ns=src,
              check=False).returncode == 0:
            return
    raise AssertionError("iperf3 did not connect")


def _filters(ns: str, dev: str) -> str:
    return sh("tc", "filter", "show", "dev", dev, "ingress", ns=ns).stdout


@pytest.mark.parametrize("backend", ["hostgw", "vxlan"])
def test_pod_traffic_takes_the_fast_path(two_hosts, backend: str) -> None:
    bring_up(two_hosts, backend, {"FastPath": True})
    h1, h2 = two_hosts["ns"]
    p1, p2 = two_hosts["pods"]
    uplink = "t.vx" if backend == "vxlan" else "eth0"
    assert "netfabric-t" in _filters(h1, uplink) and "netfabric-t" in _filters(h2, uplink)
    _count_forwarding((h1, h2))
    assert ping(p1, "10.99.2.5") and ping(p2, "10.99.1.5")  # neighbours get resolved
    _bulk_tcp(p1, p2, "10.99.2.5")
    # a handful of packets may take the stack before neighbours are resolved
    assert _forwarded(h1) < 30 and _forwarded(h2) < 30, (_forwarded(h1), _forwarded(h2))
    # TTL is decremented once per node, as by the stack: 64 - 2 seen in the reply
    out = sh("ping", "-c", "1", "10.99.2.5", ns=p1).stdout
    assert "ttl=62" in out
    st = two_hosts["drivers"][0](op="status")["result"]
    assert st["fast_path"]["enabled"] and uplink in st["fast_path"]["devices"]


def test_without_fast_path_the_stack_forwards(two_hosts) -> None:
    bring_up(two_hosts, "hostgw")
    h1, h2 = two_hosts["ns"]
    p1, p2 = two_hosts["pods"]
    assert "netfabric" not in _filters(h1, "eth0")
    _count_forwarding((h1, h2))
    _bulk_tcp(p1, p2, "10.99.2.5")
    assert _forwarded(h1) > 300 and _forwarded(h2) > 300  # GSO: one per ~64 KB or ACK


def test_expiring_ttl_is_left_to_the_stack(two_hosts) -> None:
    """TTL 1 reaching h1, or TTL 2 (1 after h1) reaching h2: ICMP time exceeded."""
    bring_up(two_hosts, "hostgw", {"FastPath": True})
    p1 = two_hosts["pods"][0]
    assert ping(p1, "10.99.2.5")
    for ttl, source in (("1", "10.99.1.1"), ("2", "198.18.200.12")):
        out = sh("ping", "-c", "1", "-W", "1", "-t", ttl, "10.99.2.5", ns=p1,
                 check=False).stdout
        assert "Time to live exceeded" in out and f"From {source}" in out, out


def test_filters_removed_when_option_off_and_on_teardown(two_hosts) -> None:
    bring_up(two_hosts, "hostgw", {"FastPath": True})
    h1 = two_hosts["ns"][0]
    d1 = two_hosts["drivers"][0]
    veth = next(n for n in sh("ls", "/sys/class/net", ns=h1).stdout.split()
                if n.startswith("nfv"))
    assert PRIO.search(_filters(h1, "eth0")) and PRIO.search(_filters(h1, veth))
    # the same network started again without the option: our filters go, pods stay
    r = d1(op="init", net="t", cidr="10.99.0.0/16", backend="hostgw", config={},
           node="h1", ip="198.18.200.11", state=str(two_hosts["tmp"] / "h1"),
           chunk="10.99.1.0/24")
    assert r["ok"], r
    assert not PRIO.search(_filters(h1, "eth0")) and not PRIO.search(_filters(h1, veth))
    # and again with it, then teardown: the uplink filter is removed with the rest
    r = d1(op="init", net="t", cidr="10.99.0.0/16", backend="hostgw",
           config={"FastPath": True}, node="h1", ip="198.18.200.11",
           state=str(two_hosts["tmp"] / "h1"), chunk="10.99.1.0/24")
    assert r["ok"] and PRIO.search(_filters(h1, veth))
    assert d1(op="teardown")["ok"]
    assert not PRIO.search(_filters(h1, "eth0"))


def test_spoofed_pod_source_is_left_to_the_stack(two_hosts) -> None:
    """A pod sending from an address its node would not route back to it is not
    fast-forwarded (the program's reverse-path check); the stack's rp_filter decides."""
    bring_up(two_hosts, "hostgw", {"FastPath": True})
    h1, h2 = two_hosts["ns"]
    p1 = two_hosts["pods"][0]
    assert ping(p1, "10.99.2.5")
    _count_forwarding((h1,))
    sh("ip", "addr", "add", "10.99.2.77/32", "dev", "eth0", ns=p1)  # h2's subnet: spoofed
    sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.99.2.77", "10.99.2.5", ns=p1,
       check=False)
    assert _forwarded(h1) >= 3  # went up h1's stack (the fast path would not count)
    before = _forwarded(h1)
    assert ping(p1, "10.99.2.5")  # its real address still takes the fast path
    assert _forwarded(h1) == before


def test_recreated_vxlan_device_gets_the_program_again(two_hosts) -> None:
    bring_up(two_hosts, "vxlan", {"FastPath": True})
    h1 = two_hosts["ns"][0]
    p1 = two_hosts["pods"][0]
    sh("ip", "link", "del", "t.vx", ns=h1)
    assert wait_for(lambda: _exists(h1, "t.vx") and bool(PRIO.search(_filters(h1, "t.vx"))),
                    timeout=5, step=0.2)
    assert ping(p1, "10.99.2.5")


def _exists(ns: str, dev: str) -> bool:
    return sh("ip", "link", "show", dev, ns=ns, check=False).returncode == 0
