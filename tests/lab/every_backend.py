"""The lab test body run against every installed backend (tests/lab/test_backends.py), also
called with other settings by a backend's own lab tests.

3 hosts x 2 pods: every pod pings every other and TCP connects across hosts; a
4th host joining later is reachable within seconds; an agent killed with -9 and
restarted keeps its lease, hands no address out twice, and pods keep pinging
(while it is dead too, unless the backend's data path is in user space).
"""

from __future__ import annotations

import time
from ipaddress import IPv4Network

import pytest

from fabric.lab import Lab, Topology
from fabric.lab.procs import is_alive, stop
from fabric.plugins import load_plugin
from tests.lab.lab_util import stack_missing, up_or_skip

# Extra topology settings a backend needs in a lab (agent args, backend options).
SETUP: dict[str, dict] = {}
JOIN_WITHIN = 15.0  # seconds for a late host to be reachable both ways


def _chunks(lab: Lab, host: str) -> list[str]:
    nets = lab.agent_call(host, {"op": "status"})["networks"]
    return sorted(c for n in nets for c in n.get("chunks") or [])


def backend_in_lab(backend: str, lab_name: str, setup: dict | None = None) -> None:
    """The body; ``setup``: Topology settings (default: the backend's ``SETUP`` entry)."""
    if why := stack_missing(backend):
        pytest.skip(why)
    setup = SETUP.get(backend, {}) if setup is None else setup
    topo = Topology(lab_name, backend, hosts=3, pods_per_host=2, **setup)
    lab = up_or_skip(topo)
    stream = None
    try:
        # every pod reaches every other pod, addresses are unique and in the network
        res = lab.converge(timeout=20)
        assert res.ok and len(res.pairs) == 30, res.summary()
        res = lab.ping_all()  # and stays so
        assert res.ok, res.summary()
        ips = [p.ip for p in lab.pods.values()]
        assert len(set(ips)) == 6 and all(ip in topo.cidr for ip in ips)
        for src, dst in (("h1p1", "h2p1"), ("h2p2", "h3p1"), ("h3p2", "h1p2")):
            tcp = lab.tcp_check(src, dst)
            assert tcp.ok, tcp

        # a 4th host joins later and is reachable within seconds, both ways
        t0 = time.monotonic()
        lab.add_host(pods=1)
        others = [p for p in lab.pods if p != "h4p1"]

        def joined() -> bool:
            return all(lab.ping("h4p1", o).ok and lab.ping(o, "h4p1").ok for o in others)

        lab.wait(joined, timeout=JOIN_WITHIN)
        print(f"{backend}: h4 reachable {time.monotonic() - t0:.1f}s after add_host started")
        assert lab.tcp_check("h1p2", "h4p1").ok

        # kill -9 the agent of h2: the data path stays, the restart keeps the lease
        lease = _chunks(lab, "h2")
        assert lease
        rec = lab.procs["agent:h2"]
        stream = lab.ping_stream("h1p1", "h2p1")
        time.sleep(0.5)
        stop(rec, kill9=True)
        assert not is_alive(rec)
        userspace = load_plugin("backend", backend).capabilities.userspace
        if not userspace:
            # kernel data paths outlive the agent; a user-space one (flannel udp) cannot
            for src, dst in (("h1p1", "h2p1"), ("h2p2", "h3p1")):
                assert lab.ping(src, dst).ok, f"{src}->{dst} broke while the agent was dead"
        lab.restart_agent("h2")
        sent, received = stream.stop()
        print(f"{backend}: {received}/{sent} pings through kill -9 and restart")
        assert sent >= 3 and (userspace or received >= sent - 1), (sent, received)
        assert _chunks(lab, "h2") == lease
        st = lab.agent_call("h2", {"op": "status"})["networks"][0]
        assert st["workloads"] == 2  # persisted allocations were re-read
        taken = {p.ip for p in lab.pods.values()}
        new = lab.add_pod("h2")
        assert new.ip not in taken, f"{new.ip} handed out twice"
        assert any(new.ip in IPv4Network(c) for c in lease)
        # existing pods: a kernel data path never stopped; a user-space one resumes quickly
        old = [p for p in lab.pods if p != new.name]
        res = lab.converge(timeout=10, pods=old) if userspace else lab.ping_all(pods=old)
        assert res.ok, f"after the restart: {res.summary()}"
        # the new pod: its route has to reach every host (lease watch, BGP) within seconds
        res = lab.converge(timeout=10)
        assert res.ok and len(res.pairs) == 8 * 7, res.summary()
    finally:
        if stream is not None:
            stream.close()
        lab.down()
