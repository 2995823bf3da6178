"""calico-bgp in full labs: vxlan CrossSubnet across segments, BIRD as route reflector,
BIRD as the underlay router for native routing across segments, withdraw within 3 s."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fabric.lab import Lab, Topology
from fabric.lab.bird import BirdConfig, BirdProcess, bird_available, bird_hook
from tests.lab.every_backend import backend_in_lab
from tests.lab.lab_util import needs_root, stack_missing

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]
BACKEND = "calico-bgp"


@pytest.fixture(autouse=True)
def _stack():
    if why := stack_missing(BACKEND):
        pytest.skip(why)


def routes(lab: Lab, host: str) -> str:
    return lab.exec(host, ["ip", "route", "show", "proto", "78"]).stdout


def bgp_status(lab: Lab, host: str) -> dict:
    net = lab.agent_call(host, {"op": "status"})["networks"][0]
    return net["backend_status"]


def blocks(lab: Lab, host: str) -> list[str]:
    return bgp_status(lab, host)["blocks"]


def test_every_backend_body_vxlan_cross_subnet(lab_name):
    """The every-backend lab test, for calico-bgp in vxlan CrossSubnet mode on two segments."""
    backend_in_lab(BACKEND, lab_name, {
        "segments": 2, "backend_opts": {BACKEND: {"VXLANMode": "CrossSubnet"}}})


def test_vxlan_cross_subnet_two_segments(lab_name):
    topo = Topology(lab_name, BACKEND, hosts=3, pods_per_host=1, segments=2,
                    backend_opts={BACKEND: {"VXLANMode": "CrossSubnet"}})
    with Lab(topo) as lab:
        res = lab.converge(timeout=30)
        assert res.ok, res.summary()
        segs = {h.name: h.segment for h in lab.hosts.values()}
        same = [n for n in segs if n != "h1" and segs[n] == segs["h1"]]
        other = [n for n in segs if segs[n] != segs["h1"]]
        assert same and other, segs
        table = routes(lab, "h1")
        for name in same:  # same segment: native
            for b in blocks(lab, name):
                assert f"{b} via {lab.hosts[name].address.ip} dev eth0" in table, table
        for name in other:  # across the router: VXLAN
            for b in blocks(lab, name):
                assert f"{b} via {b.split('/')[0]} dev {topo.network_names()[0]}.vx" in table
        assert bgp_status(lab, "h1")["encapsulation"] == "vxlan (CrossSubnet)"
        assert lab.tcp_check("h1p1", f"{other[0]}p1").ok


@pytest.mark.skipif(not bird_available(), reason="BIRD 2 (bird2) is not installed")
def test_bird_route_reflector(lab_name):
    out: dict[str, BirdProcess] = {}
    topo = Topology(lab_name, BACKEND, hosts=3, pods_per_host=2,
                    backend_opts={BACKEND: {"NodeToNodeMesh": False,
                                            "Peers": [{"PeerIP": "198.18.0.2"}]}})
    hook = bird_hook(BirdConfig(router_id="198.18.0.2", pod_cidr=topo.cidr), out=out)
    with Lab(topo, hooks=[hook]) as lab:
        res = lab.converge(timeout=30)
        assert res.ok, res.summary()
        for h in lab.hosts:
            peers = bgp_status(lab, h)["bgp"]["peers"]
            assert [(p["peer"], p["state"]) for p in peers] == [("198.18.0.2", "Established")]
        bird = out["bird"]
        held = {str(r.prefix): str(r.via) for r in bird.routes() if r.kind == "unicast"}
        for name, host in lab.hosts.items():
            for b in blocks(lab, name):
                assert held.get(b) == str(host.address.ip), (b, held)
        assert len(bird.established()) == 3


@pytest.mark.skipif(not bird_available(), reason="BIRD 2 (bird2) is not installed")
def test_native_across_segments_with_bird_router(lab_name):
    """No encapsulation: BIRD in the underlay router learns pod routes and routes them."""
    topo = Topology(lab_name, BACKEND, hosts=3, pods_per_host=1, segments=2,
                    backend_opts={BACKEND: {"NodeToNodeMesh": False,
                                            "Peers": [{"PeerIP": "198.18.0.1"}]}})
    cfg = BirdConfig(router_id="198.18.0.1", pod_cidr=topo.cidr, kernel_export=True)
    with Lab(topo, hooks=[bird_hook(cfg, where="rt")]) as lab:
        res = lab.converge(timeout=30)
        assert res.ok, res.summary()
        rt = lab.exec("rt", ["ip", "route", "show", "proto", "bird"]).stdout
        for name in lab.hosts:
            for b in blocks(lab, name):
                assert b in rt, rt
        assert "vx" not in routes(lab, "h1")


def test_withdraw_within_3s_and_status(lab_name):
    topo = Topology(lab_name, BACKEND, hosts=3, pods_per_host=2)
    with Lab(topo) as lab:
        assert lab.converge(timeout=30).ok
        st = bgp_status(lab, "h1")["bgp"]
        assert st["asn"] == 64512 and st["mode"] == "node-to-node mesh"
        assert sorted(p["state"] for p in st["peers"]) == ["Established"] * 2
        assert all(p["routes_received"] >= 1 and p["routes_sent"] >= 1 for p in st["peers"])
        gone = blocks(lab, "h2")
        assert gone and all(b in routes(lab, "h1") for b in gone)
        for pod in [p for p in lab.pods if p.startswith("h2p")]:
            lab.remove_pod(pod)
        t0 = time.monotonic()

        def withdrawn() -> bool:
            return all(b not in routes(lab, h) for h in ("h1", "h3") for b in gone)

        lab.wait(withdrawn, timeout=3)
        print(f"block withdrawn everywhere {time.monotonic() - t0:.2f}s after the last release")
        assert blocks(lab, "h2") == []
        assert lab.ping("h1p1", "h3p2").ok


def test_etcd_down_keeps_pods_working_and_join_time(lab_name):
    from fabric.lab.procs import stop

    topo = Topology(lab_name, BACKEND, hosts=3, pods_per_host=1)
    with Lab(topo) as lab:
        assert lab.converge(timeout=30).ok
        # a late host: time from its agent's first log line to every pod pair answering
        lab.add_host(pods=1)
        others = [p for p in lab.pods if p != "h4p1"]
        lab.wait(lambda: all(lab.ping("h4p1", o).ok and lab.ping(o, "h4p1").ok for o in others),
                 timeout=15, interval=0.1)
        reached = time.time()
        first = Path(lab.hosts["h4"].state_dir, "agent.log").read_text().splitlines()[0]
        started = time.mktime(time.strptime(first[:19], "%Y-%m-%d %H:%M:%S")) + int(
            first[20:23]) / 1000
        print(f"h4 pods reachable from all others {reached - started:.2f}s after its agent "
              "started (upper bound: includes pod creation and ping timeouts)")
        stop(lab.procs["etcd"])  # etcd gone: BGP keeps every route, pods keep talking
        time.sleep(3)
        res = lab.ping_all()
        assert res.ok, res.summary()
        st = bgp_status(lab, "h1")["bgp"]
        assert sorted(p["state"] for p in st["peers"]) == ["Established"] * 3


def test_fabric_down_removes_everything_and_peers_forget_the_node(lab_name):
    topo = Topology(lab_name, BACKEND, hosts=3, pods_per_host=1,
                    backend_opts={BACKEND: {"VXLANMode": "Always"}})
    with Lab(topo) as lab:
        assert lab.converge(timeout=30).ok
        gone = blocks(lab, "h3")
        speaker = bgp_status(lab, "h3")["bgp"]["speaker"]["pid"]
        lab.remove_pod("h3p1")
        gone = sorted(set(gone) | set(blocks(lab, "h3")))
        lab.agent_call("h3", {"op": "stop", "teardown": True})
        lab.wait(lambda: not lab.exec("h3", ["ip", "route", "show", "proto", "78"]).stdout
                 and "vx" not in lab.exec("h3", ["ip", "-br", "link"]).stdout, timeout=10)
        lab.wait(lambda: not Path(f"/proc/{speaker}").exists(), timeout=10)
        lab.wait(lambda: all(b not in routes(lab, h) for h in ("h1", "h2") for b in gone),
                 timeout=5)
        peers = [p["peer"] for p in bgp_status(lab, "h1")["bgp"]["peers"]]
        assert str(lab.hosts["h3"].address.ip) not in peers
        assert lab.ping("h1p1", "h2p1").ok
