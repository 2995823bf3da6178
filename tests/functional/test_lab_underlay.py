"""The lab's underlay on its own (no agents): switch, segments, router, etcd, checks, pids."""

from __future__ import annotations

import os
import secrets
import subprocess
from ipaddress import IPv4Address

import pytest

from fabric.errors import ConfigError
from fabric.lab import Lab, LabError, Topology
from fabric.lab.cleanup import teardown
from fabric.lab.procs import ProcRecord, is_alive, spawn, stop
from fabric.lab.topology import STATE_ROOT

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def _root_net() -> tuple[str, str, str]:
    def out(*a: str) -> str:
        return subprocess.run(["ip", *a], capture_output=True, text=True).stdout

    return out("-br", "link"), out("route"), out("-br", "addr")


@pytest.fixture(scope="module")
def lab():
    name = f"u{secrets.token_hex(2)}"
    root_before = _root_net()
    lab = Lab(Topology(name, "vxlan", hosts=4, segments=2), agents=False)
    try:
        yield lab.up()
    finally:
        lab.down()
        teardown(name)
    assert _root_net() == root_before  # nothing added to or left in the root namespace


def _ttl(lab: Lab, src: str, dst: str) -> int:
    _, ip = lab.target(dst)
    out = lab.exec(src, ["ping", "-n", "-c1", "-W2", str(ip)])
    assert out.ok, out.stderr
    return int(out.stdout.split("ttl=")[1].split()[0])


def test_addressing_follows_lab_conventions(lab: Lab) -> None:
    h = lab.hosts
    assert [str(h[n].address) for n in ("h1", "h2", "h3", "h4")] == [
        "198.18.0.11/24", "198.18.1.12/24", "198.18.0.13/24", "198.18.1.14/24"]
    route = lab.exec("h2", ["ip", "route", "show", "default"]).stdout
    assert "via 198.18.1.1 dev eth0" in route
    link = lab.exec("h1", ["ip", "-o", "link", "show", "eth0"]).stdout
    assert "mtu 1500" in link
    fwd = lab.exec("h1", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
    assert fwd == "1"
    bridges = lab.exec("sw", ["ip", "-br", "link", "show", "type", "bridge"]).stdout
    assert {line.split()[0] for line in bridges.splitlines()} == {"br0", "br1"}


def test_same_segment_is_l2_and_segments_are_routed(lab: Lab) -> None:
    assert _ttl(lab, "h1", "h3") == 64  # same bridge: no hop
    assert _ttl(lab, "h1", "h2") == 63  # through the router namespace
    assert _ttl(lab, "h2", "sw") == 63  # etcd address from segment 1


def test_etcd_in_switch_answers_hosts_of_every_segment(lab: Lab) -> None:
    assert lab.etcd == "http://198.18.0.2:2379"
    env = ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", lab.etcd]
    key = f"k{secrets.token_hex(3)}"
    assert lab.exec("h1", [*env, "put", key, "v1"]).ok
    got = lab.exec("h2", [*env, "get", key, "--print-value-only"])
    assert got.ok and got.stdout.strip() == "v1"
    assert is_alive(lab.procs["etcd"])


def test_checks_report_success_and_failure(lab: Lab) -> None:
    ok = lab.tcp_check("h1", "h4")
    assert ok.ok and ok.connect_ms is not None and ok.dst_ip == IPv4Address("198.18.1.14")
    from fabric.lab import ops

    ns, _ = lab.target("h1")
    assert not ops.ping(ns, IPv4Address("198.18.0.99"), wait=1).ok  # nobody there
    bad = ops.tcp_echo(ns, lab.hosts["h3"].ns, IPv4Address("198.18.0.13"), timeout=2)
    assert bad.ok  # sanity: the same path works, so a failure below is the blackhole
    lab.exec("h1", ["ip", "route", "add", "blackhole", "198.18.0.13/32"])
    try:
        blocked = ops.tcp_echo(ns, lab.hosts["h3"].ns, IPv4Address("198.18.0.13"), timeout=2)
        assert not blocked.ok and blocked.error
    finally:
        lab.exec("h1", ["ip", "route", "del", "blackhole", "198.18.0.13/32"])


def test_iperf_measures_the_underlay(lab: Lab) -> None:
    res = lab.iperf("h1", "h3", seconds=1)
    assert res.gbps > 0.1 and res.seconds > 0.5


def test_add_host_joins_later(lab: Lab) -> None:
    host = lab.add_host()
    assert host.name == "h5" and str(host.address) == "198.18.0.15/24"
    assert lab.ping("h5", "h2").ok


def test_exec_unknown_target_is_a_clear_error(lab: Lab) -> None:
    from fabric.errors import NotFound

    with pytest.raises(NotFound, match="no host or pod 'h99'"):
        lab.exec("h99", ["true"])


def test_second_lab_with_same_name_is_refused(lab: Lab) -> None:
    with pytest.raises(ConfigError, match="exists already"):
        Lab(lab.topo, agents=False).up()


def test_pid_records_never_hit_another_process(tmp_path) -> None:
    marker = str(STATE_ROOT / "zz") + "/"
    proc, rec = spawn("sleeper", None, ["sh", "-c", f"sleep 30 # {marker}"],
                      tmp_path / "s.log", marker)
    try:
        assert is_alive(rec)
        reused = ProcRecord("sleeper", rec.pid, rec.start_time + 1, marker)  # a recycled pid
        assert not is_alive(reused) and stop(reused) is False
        other = ProcRecord("sleeper", rec.pid, rec.start_time, "/run/netfabric-lab/other/")
        assert not is_alive(other) and stop(other) is False
        assert proc.poll() is None  # untouched by either
        assert stop(rec, proc=proc) is True and not is_alive(rec)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(LabError, match="marker"):
        spawn("x", None, ["true"], tmp_path / "x.log", marker)


def test_hook_runs_after_underlay_and_its_process_is_ended() -> None:
    seen: dict = {}

    def hook(lab: Lab) -> None:  # e.g. BIRD in the switch namespace
        seen["etcd_alive"] = is_alive(lab.procs["etcd"])
        seen["hosts"] = len(lab.hosts)
        seen["rec"] = lab.spawn("helper", lab.switch_ns, [
            "python3", "-c", "import time; time.sleep(60)", str(lab.state_dir / "helper")])

    name = f"u{secrets.token_hex(2)}"
    lab = Lab(Topology(name, "vxlan", hosts=1), hooks=[hook], agents=False)
    try:
        lab.up()
        assert seen["etcd_alive"] and seen["hosts"] == 0  # before any host or agent
        assert lab.procs["helper"] == seen["rec"] and is_alive(seen["rec"])
        assert Lab.attach(name).procs["helper"] == seen["rec"]  # recorded on disk
    finally:
        report = lab.down()
    assert "helper" in report.stopped and not is_alive(seen["rec"])
