"""calico-bgp in emulated hosts: exabgp sessions, learned routes, pods reaching pods, BIRD RR.

Every host is a namespace ``nfbgp-XXXX-hN`` on a bridge in ``nfbgp-XXXX-sw``;
the backend runs in ``backend_driver.py`` inside the host (the agent's
role without the IPAM), so exabgp is its child there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from fabric.lab.bird import BirdConfig, bird_available, start_bird
from tests.functional.backend_util import Driver
from tests.functional.netns_util import add_ns, namespaces, needs_root, ping, sh, wire

pytestmark = [needs_root, pytest.mark.root]
CIDR = "10.244.0.0/16"
SEG = "198.18.251"
INIT = {"backend": "calico-bgp", "subnet_len": 26}  # for the driver's init


def wait_for(check, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def routes(ns: str) -> str:
    return sh("ip", "route", "show", "proto", "78", ns=ns).stdout


class Cluster:
    """N hosts on one segment, one pod each; pod i gets 10.244.i.2 in block 10.244.i.0/26."""

    def __init__(self, tag: str, tmp: Path, n: int) -> None:
        self.tag, self.tmp = tag, tmp
        self.sw = f"{tag}-sw"
        add_ns(self.sw)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.sw)
        sh("ip", "link", "set", "br0", "up", ns=self.sw)
        sh("ip", "addr", "add", f"{SEG}.2/24", "dev", "br0", ns=self.sw)
        self.hosts, self.pods, self.drivers = [], [], []
        for i in range(1, n + 1):
            h, p = f"{tag}-h{i}", f"{tag}-h{i}p1"
            add_ns(h)
            add_ns(p)
            wire(self.sw, "br0", h, f"{SEG}.{10 + i}/24", f"s{i}")
            self.hosts.append(h)
            self.pods.append(p)
            self.drivers.append(Driver(h, tmp / f"h{i}.log"))

    def ip(self, i: int) -> str:
        return f"{SEG}.{11 + i}"

    def block(self, i: int) -> str:
        return f"10.244.{i + 1}.0/26"

    def pod_ip(self, i: int) -> str:
        return f"10.244.{i + 1}.2"

    def start(self, config: dict | list[dict], *, mesh_peers: bool = True) -> list[dict]:
        datas = []
        configs = config if isinstance(config, list) else [config] * len(self.drivers)
        for i, d in enumerate(self.drivers):
            datas.append(d.ok(op="init", **INIT, cidr=CIDR, node=f"h{i + 1}", ip=self.ip(i),
                              state=str(self.tmp / f"state-h{i + 1}"), config=configs[i],
                              chunks=[self.block(i)]))
        if mesh_peers:
            for i, d in enumerate(self.drivers):
                for j in range(len(self.drivers)):
                    if j != i:
                        d.ok(op="peer", name=f"h{j + 1}", ip=self.ip(j),
                             chunks=[self.block(j)], data=datas[j])
        for i, d in enumerate(self.drivers):
            d.ok(op="attach", cid=f"pod{i}", netns=f"/run/netns/{self.pods[i]}",
                 pod_ip=self.pod_ip(i), chunk=self.block(i))
        return datas

    def all_routes_ok(self) -> bool:
        for d in self.drivers:
            st = d.ok(op="status")
            ok = [r for r in st["routes"] if r["state"].startswith("ok")]
            if len(ok) < len(self.drivers) - 1:
                return False
        return True

    def close(self) -> None:
        for d in self.drivers:
            try:
                if d.proc.poll() is None:
                    d(op="teardown")
            finally:
                d.close()


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(n: int = 2) -> Cluster:
        ctx = namespaces("nfbgp-")
        tag = ctx.__enter__()
        made.append(ctx)
        c = Cluster(tag, tmp_path, n)
        made.append(c)
        return c

    yield make
    for obj in reversed(made):
        if isinstance(obj, Cluster):
            obj.close()
        else:
            obj.__exit__(None, None, None)


def test_mesh_native_routes_and_withdraw(cluster):
    c = cluster(3)
    c.start({})
    wait_for(c.all_routes_ok, 20, "every host to learn every block")
    st = c.drivers[0].ok(op="status")
    assert {p["state"] for p in st["bgp"]["peers"]} == {"Established"}
    assert all(p["routes_received"] == 1 and p["routes_sent"] == 1 for p in st["bgp"]["peers"])
    assert f"{c.block(1)} via {c.ip(1)} dev eth0" in routes(c.hosts[0])
    assert "blackhole 10.244.1.0/26" in routes(c.hosts[0])
    for i in range(3):
        for j in range(3):
            if i != j:
                assert ping(c.pods[i], c.pod_ip(j)), f"pod {i} -> pod {j}"
    # host 2 gives its block back: the route disappears everywhere within 3 s
    c.drivers[1].ok(op="detach", cid="pod1", netns=f"/run/netns/{c.pods[1]}")
    c.drivers[1].ok(op="chunks", chunks=[])
    took = wait_for(lambda: all(c.block(1) not in routes(h) for h in (c.hosts[0], c.hosts[2])),
                    3, "the withdrawn block to vanish")
    assert took < 3
    assert "blackhole" not in routes(c.hosts[1])


def _context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def test_idle_speaker_wakes_rarely(cluster):
    """An established, idle exabgp must not poll at its default 100 Hz: on a small VM those
    wake-ups cost the host ~20 % of its TCP throughput (docs/benchmarks.md)."""
    c = cluster(2)
    c.start({})
    wait_for(c.all_routes_ok, 20, "routes")
    pid = c.drivers[0].ok(op="status")["bgp"]["speaker"]["pid"]
    before = _context_switches(pid)
    time.sleep(3)
    rate = (_context_switches(pid) - before) / 3
    assert rate < 40, f"idle exabgp woke {rate:.0f} times a second"


def test_vxlan_always_encapsulates(cluster):
    c = cluster(2)
    datas = c.start({"VXLANMode": "Always"})
    assert datas[0]["VtepMAC"] != datas[1]["VtepMAC"]
    wait_for(c.all_routes_ok, 20, "routes over vxlan")
    assert f"{c.block(1)} via 10.244.2.0 dev pods.vx" in routes(c.hosts[0])
    dev = sh("ip", "-d", "link", "show", "pods.vx", ns=c.hosts[0]).stdout
    assert "vxlan id 4096" in dev and "dstport 4789" in dev
    assert ping(c.pods[0], c.pod_ip(1)) and ping(c.pods[1], c.pod_ip(0))
    assert c.drivers[0].ok(op="status")["encapsulation"] == "vxlan"


def test_speaker_restart_keeps_routes(cluster):
    c = cluster(2)
    c.start({"HoldTime": 6})
    wait_for(c.all_routes_ok, 20, "routes")
    pid = c.drivers[1].ok(op="status")["bgp"]["speaker"]["pid"]
    os.kill(pid, signal.SIGKILL)  # exabgp dies on host 2 (its child; we only signal that pid)
    time.sleep(1)
    assert c.block(1) in routes(c.hosts[0]), "peer's routes must be held during the restart"
    assert ping(c.pods[0], c.pod_ip(1))
    wait_for(lambda: c.drivers[1].ok(op="status")["bgp"]["speaker"]["restarts"] >= 1, 10,
             "restart")

    def established():
        peers = c.drivers[1].ok(op="status")["bgp"]["peers"]
        return peers and all(p["state"] == "Established" for p in peers)

    wait_for(established, 30, "the session to come back")
    assert ping(c.pods[1], c.pod_ip(0))

    def refreshed():  # End-of-RIB from the new speaker ends the hold (before the 5 s sweep)
        peers = c.drivers[0].ok(op="status")["bgp"]["peers"]
        return peers[0]["state"] == "Established" and peers[0]["routes_stale"] == 0

    wait_for(refreshed, 3, "End-of-RIB to clear the held routes")
    assert c.block(1) in routes(c.hosts[0])


def test_exabgp_node_as_route_reflector(cluster):
    c = cluster(3)
    client = {"NodeToNodeMesh": False}
    c.start([{"RouteReflectorClusterID": "1.0.0.1"}, client, client])
    wait_for(c.all_routes_ok, 30, "routes reflected by h1")
    for i in (1, 2):
        st = c.drivers[i].ok(op="status")
        assert [(p["peer"], p["type"]) for p in st["bgp"]["peers"]] == [
            (c.ip(0), "route-reflector")]
    rr = c.drivers[0].ok(op="status")["bgp"]
    assert rr["mode"] == "route-reflector"
    assert {p["type"] for p in rr["peers"]} == {"rr-client"}
    assert f"{c.block(2)} via {c.ip(2)} dev eth0" in routes(c.hosts[1])  # next hop kept
    assert ping(c.pods[1], c.pod_ip(2)) and ping(c.pods[2], c.pod_ip(1))
    c.drivers[2].ok(op="detach", cid="pod2", netns=f"/run/netns/{c.pods[2]}")
    c.drivers[2].ok(op="chunks", chunks=[])
    wait_for(lambda: c.block(2) not in routes(c.hosts[1]), 3, "the reflected withdraw")


def test_unexpected_routes_from_a_peer_are_filtered(cluster, tmp_path):
    """A plain exabgp on the underlay announces a default route, an underlay route and one
    pool prefix: the nodes install only the pool prefix and carry on."""
    from fabric_calico_bgp.exabgp import exabgp_command, exabgp_env

    c = cluster(2)
    rogue = tmp_path / "rogue.conf"
    neighbors = "".join(
        f"neighbor {c.ip(i)} {{ router-id {SEG}.2; local-address {SEG}.2; local-as 64512; "
        f"peer-as 64512; family {{ ipv4 unicast; }} static {{ "
        f"route 0.0.0.0/0 next-hop {SEG}.2; route 198.18.0.0/16 next-hop {SEG}.2; "
        f"route 10.244.99.0/24 next-hop {SEG}.2; }} }}\n" for i in range(2))
    rogue.write_text(neighbors)
    env = exabgp_env(IPv4Address(f"{SEG}.2"))
    log = open(tmp_path / "rogue.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(["ip", "netns", "exec", c.sw, *exabgp_command(rogue)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        c.start({"Peers": [{"PeerIP": f"{SEG}.2"}]})
        wait_for(lambda: "10.244.99.0/24" in routes(c.hosts[0]), 20, "the pool prefix")
        table = sh("ip", "route", ns=c.hosts[0]).stdout
        assert "default" not in table and "198.18.0.0/16" not in table
        logged = (tmp_path / "h1.log").read_text()
        assert "subnet 0.0.0.0/0 is outside the network" in logged
        assert "subnet 198.18.0.0/16 is outside the network" in logged
        st = c.drivers[0].ok(op="status")
        assert {r["key"] for r in st["refused"]} == {
            f"route 0.0.0.0/0 from {SEG}.2", f"route 198.18.0.0/16 from {SEG}.2"}
        assert st["bgp"]["speaker"]["restarts"] == 0
        wait_for(lambda: c.block(1) in routes(c.hosts[0]) and c.block(0) in routes(c.hosts[1]),
                 20, "node routes next to the rogue ones")
        assert ping(c.pods[0], c.pod_ip(1))
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_restart_reconciles_routes_withdrawn_meanwhile(cluster):
    c = cluster(2)
    c.start({})
    extra = "10.244.50.0/26"
    c.drivers[1].ok(op="chunks", chunks=[c.block(1), extra])
    wait_for(lambda: extra in routes(c.hosts[0]), 10, "the extra block")
    c.drivers[0].ok(op="stop")  # graceful: kernel state stays, exabgp ends
    c.drivers[0].close()
    assert extra in routes(c.hosts[0]) and ping(c.pods[0], c.pod_ip(1))
    c.drivers[1].ok(op="chunks", chunks=[c.block(1)])  # withdrawn while h1's agent is away
    c.drivers[0] = Driver(c.hosts[0], c.tmp / "h1-again.log")
    c.drivers[0].ok(op="init", **INIT, cidr=CIDR, node="h1", ip=c.ip(0),
                    state=str(c.tmp / "state-h1"), config={}, chunks=[c.block(0)])
    c.drivers[0].ok(op="peer", name="h2", ip=c.ip(1), chunks=[c.block(1)], data={})
    took = wait_for(lambda: extra not in routes(c.hosts[0]), 20, "the stale route to go")
    print(f"stale route removed {took:.1f}s after the restart")
    assert c.block(1) in routes(c.hosts[0]) and ping(c.pods[0], c.pod_ip(1))


def test_agent_killed_takes_its_exabgp_along(cluster):
    c = cluster(2)
    c.start({})
    wait_for(c.all_routes_ok, 20, "routes")
    pid = c.drivers[0].ok(op="status")["bgp"]["speaker"]["pid"]
    c.drivers[0].proc.kill()  # the "agent" of h1 dies with SIGKILL (our own child)
    c.drivers[0].proc.wait(5)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "exabgp to end with its agent")
    assert c.block(0) in routes(c.hosts[1])  # h2 holds h1's routes (graceful hold)
    assert ping(c.pods[1], c.pod_ip(0))  # kernel state on h1 kept: pods still talk


def test_ipip_is_refused_on_this_kernel(cluster):
    c = cluster(1)
    res = c.drivers[0](op="init", **INIT, cidr=CIDR, node="h1", ip=c.ip(0),
                       state=str(c.tmp / "ipip"), config={"IPIPMode": "Always"},
                       chunks=[c.block(0)])
    if res["ok"]:
        pytest.skip("this kernel has IPIP; the refusal path cannot be exercised")
    assert res["kind"] == "KernelFeatureMissing" and "IPIP" in res["error"]


@pytest.mark.skipif(not bird_available(), reason="BIRD 2 (bird2) is not installed")
def test_bird_route_reflector(cluster, tmp_path):
    c = cluster(3)
    bird = start_bird(c.sw, BirdConfig(router_id=f"{SEG}.2", pod_cidr=CIDR,
                                       neighbor_range=f"{SEG}.0/24"), tmp_path / "bird")
    try:
        c.start({"NodeToNodeMesh": False, "Peers": [{"PeerIP": f"{SEG}.2"}]}, mesh_peers=False)
        wait_for(c.all_routes_ok, 30, "routes reflected by BIRD")
        for d in c.drivers:
            peers = d.ok(op="status")["bgp"]["peers"]
            assert [p["peer"] for p in peers] == [f"{SEG}.2"]  # only BIRD, no mesh
        bird_routes = {str(r.prefix): str(r.via) for r in bird.routes()}
        for i in range(3):
            assert bird_routes.get(c.block(i)) == c.ip(i)
        assert len(bird.established()) == 3
        assert ping(c.pods[0], c.pod_ip(2)) and ping(c.pods[2], c.pod_ip(1))
    finally:
        bird.stop()
