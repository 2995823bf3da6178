"""Lab fault injection on the underlay alone (no agents): block/unblock in the switch,
restart / pause / resume of the lab's etcd by its recorded command line, {peers}."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time

import pytest

from fabric.errors import ConfigError, NotFound
from fabric.lab import Lab, Topology
from fabric.lab.cleanup import teardown
from fabric.lab.procs import is_alive, is_paused
from fabric.lab.underlay import etcd_url

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("nft"), reason="nft is not installed"),
]

_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(8)
try:
    while True:
        data, peer = s.recvfrom(100); s.sendto(data, peer)
except OSError:
    pass
"""
_UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
for _ in range(4):
    s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
    try:
        s.recvfrom(100); print("answered"); break
    except OSError:
        pass
"""


@pytest.fixture(scope="module")
def lab():
    name = f"f{secrets.token_hex(2)}"
    lab = Lab(Topology(name, "vxlan", hosts=3, etcd=True), agents=False)
    try:
        yield lab.up()
    finally:
        lab.down()
        teardown(name)


def _ping(lab: Lab, src: str, dst: str) -> bool:
    _, ip = lab.target(dst)
    return lab.exec(src, ["ping", "-n", "-c1", "-W1", str(ip)]).ok


def _udp(lab: Lab, src: str, dst: str, port: int) -> bool:
    dst_ns, ip = lab.target(dst)
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, "python3", "-c", _UDP_ECHO,
                               str(ip), str(port)])
    try:
        time.sleep(0.3)
        return "answered" in lab.exec(src, ["python3", "-c", _UDP_ASK, str(ip), str(port)]).stdout
    finally:
        server.kill()
        server.wait()


def test_block_stops_ping_both_ways_and_unblock_restores(lab: Lab) -> None:
    assert _ping(lab, "h1", "h2") and _ping(lab, "h2", "h1")
    blk = lab.block("h2", "h1")
    assert lab.blocks() == [blk]
    assert not _ping(lab, "h1", "h2") and not _ping(lab, "h2", "h1")
    assert _ping(lab, "h1", "h3") and _ping(lab, "h3", "h2")  # only that pair
    assert lab.status()["blocks"] == [{"a": "h1", "b": "h2", "proto": None, "port": None}]
    lab.unblock("h1", "h2")
    assert lab.blocks() == []
    assert _ping(lab, "h1", "h2") and _ping(lab, "h2", "h1")


def test_udp_port_block_leaves_tcp_and_other_ports_alone(lab: Lab) -> None:
    assert _udp(lab, "h1", "h2", 5555)
    lab.block("h1", "h2", proto="udp", port=5555)
    lab.block("h1", "h3", proto="tcp")
    try:
        assert not _udp(lab, "h1", "h2", 5555)
        assert not _udp(lab, "h2", "h1", 5555)
        assert _udp(lab, "h1", "h2", 5556)
        assert lab.tcp_check("h1", "h2").ok and lab.tcp_check("h2", "h1").ok
        assert _ping(lab, "h1", "h2")
        assert not lab.tcp_check("h1", "h3", timeout=2).ok
        assert _ping(lab, "h1", "h3")  # icmp passes a tcp block
        # unblock removes exactly the block named: the tcp one stays
        with pytest.raises(NotFound, match="active blocks"):
            lab.unblock("h1", "h2", proto="udp", port=5556)
        lab.unblock("h2", "h1", proto="udp", port=5555)
        assert [b.describe() for b in lab.blocks()] == ["h1 <-/-> h3 (tcp)"]
        assert _udp(lab, "h1", "h2", 5555)
    finally:
        for b in lab.blocks():
            lab.unblock(b.a, b.b, b.proto, b.port)


def test_block_reaches_the_switch_itself(lab: Lab) -> None:
    """`sw` is etcd's address: a host cut off from the datastore."""
    lab.block("h1", "sw", proto="tcp", port=2379)
    try:
        probe = ["python3", "-c",
                 "import socket; socket.create_connection(('198.18.0.2', 2379), 2)"]
        assert lab.exec("h1", probe).returncode != 0
        assert lab.exec("h2", probe).ok
    finally:
        lab.unblock("sw", "h1", proto="tcp", port=2379)
    assert lab.exec("h1", probe).ok


@pytest.mark.parametrize(("args", "message"), [
    (("h1", "h1"), "from itself"),
    (("h1", "h2", "sctp"), "not supported"),
    (("h1", "h2", "icmp", 5), "icmp has no ports"),
    (("h1", "h2", "udp", 70000), "not 1-65535"),
    (("h1", "h9"), "no host or pod 'h9'"),
    (("h1", "8.8.8.8"), "not on the lab's underlay"),
])
def test_bad_blocks_are_refused(lab: Lab, args: tuple, message: str) -> None:
    with pytest.raises((ConfigError, NotFound), match=message):
        lab.block(*args)
    assert lab.blocks() == []


def _etcd_ok(lab: Lab) -> bool:
    out = lab.exec("h1", ["etcdctl", "--endpoints", etcd_url(), "--command-timeout", "1s",
                          "put", "/nfl-test/k", "v"])
    return out.ok


def test_restart_pause_resume_etcd(lab: Lab) -> None:
    if not shutil.which("etcdctl"):
        pytest.skip("etcdctl is not installed")
    old = lab.procs["etcd"]
    assert old.argv and "etcd" in old.argv[0]
    assert _etcd_ok(lab)
    lab.pause("etcd")
    assert is_paused(old) and not _etcd_ok(lab)
    assert lab.status()["procs"]["etcd"]["paused"] is True
    lab.resume("etcd")
    assert _etcd_ok(lab)

    new = lab.restart("etcd")
    assert new.pid != old.pid and not is_alive(old) and is_alive(new)
    assert new.argv == old.argv
    assert _etcd_ok(lab)  # the data dir is the same one: the key survived
    out = lab.exec("h2", ["etcdctl", "--endpoints", etcd_url(), "get", "/nfl-test/k",
                          "--print-value-only"])
    assert out.stdout.strip() == "v"

    # a paused etcd restarts too (SIGTERM is delivered with SIGCONT), and from another process
    lab.pause("etcd")
    again = Lab.attach(lab.topo.name).restart("etcd")
    assert again.pid != new.pid and _etcd_ok(lab)
    lab.procs = Lab.attach(lab.topo.name).procs  # the record the other process wrote
    with pytest.raises(NotFound, match="no process 'h9'"):
        lab.restart("h9")


def test_pod_resolv_conf_is_what_ip_netns_exec_shows(lab: Lab) -> None:
    """A CNI result's dns becomes /etc/netns/<ns>/resolv.conf, removed with the pod."""
    from fabric.lab.agents import ETC_NETNS, remove_resolv, write_resolv
    from fabric.lab.netns import add_ns, del_ns

    ns = f"{lab.topo.prefix}dnsp1"
    add_ns(ns)
    try:
        assert write_resolv(ns, {}) is None  # no nameserver: the host's file stays
        path = write_resolv(ns, {"nameservers": ["10.244.0.53"], "search": ["weave.local"],
                                 "options": ["ndots:2"]})
        assert path == ETC_NETNS / ns / "resolv.conf"
        seen = subprocess.run(["ip", "netns", "exec", ns, "cat", "/etc/resolv.conf"],
                              capture_output=True, text=True).stdout
        assert seen == "nameserver 10.244.0.53\nsearch weave.local\noptions ndots:2\n"
    finally:
        del_ns(ns)
    write_resolv(ns, {"nameservers": ["10.244.0.53"]})
    teardown_leftover = ETC_NETNS / ns
    remove_resolv("not-a-lab-ns")  # only nfl- names are ever removed
    lab_name = lab.topo.name
    from fabric.lab.cleanup import _remove_etc_netns

    _remove_etc_netns(f"nfl-{lab_name}-")
    assert not teardown_leftover.exists()
