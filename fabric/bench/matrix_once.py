"""Measurements ``fabric bench matrix`` takes once per backend row, after the rounds (they
change the lab): CNI ADD/DEL latency, agent RSS with 20 pods, join and leave convergence.

The CNI driver runs inside the lab host's namespace, as a runtime would exec the plugin
(``fabric.bench.cni``'s driver: the installed zipapp, the runtime's PATH); the reference is
Debian's ``bridge`` + ``host-local`` run by the same driver in the reference lab.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fabric.lab.netns import LabError

__all__ = ["cni_latency", "agent_rss_mb", "convergence", "run_cni_driver"]

RSS_PODS = 20


def _q(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def cni_latency(host_ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the driver in ``host_ns``: {cni_add_p50_ms, ..., cni_add20_p99_ms}."""
    spec = {**spec, "tag": f"{spec['tag']}{secrets.token_hex(2)}"}
    proc = subprocess.run(["ip", "netns", "exec", host_ns, sys.executable, "-m",
                           "fabric.bench.matrix_once", json.dumps(spec)],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise LabError(f"CNI driver failed: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout)


def run_cni_driver(spec: dict[str, Any]) -> dict[str, Any]:
    """In the host namespace: sequential ADD then DEL of ``pods`` pods, then ``concurrent``
    ADDs started at once (then their DELs), with ``which`` = fabric or reference."""
    from concurrent.futures import ThreadPoolExecutor

    from fabric.bench.cni import _Driver

    d = _Driver(spec)
    which, tag = spec["which"], d.tag
    try:
        pods = [f"{tag}s{i}" for i in range(spec["pods"])]
        for pod in pods:
            d.netns(pod)
        add = [d.exec_plugin(which, "ADD", p) for p in pods]
        dele = [d.exec_plugin(which, "DEL", p) for p in pods]
        conc = [f"{tag}c{i}" for i in range(spec["concurrent"])]
        for pod in conc:
            d.netns(pod)
        with ThreadPoolExecutor(len(conc)) as pool:
            cadd = list(pool.map(lambda p: d.exec_plugin(which, "ADD", p), conc))
        for pod in conc:
            d.exec_plugin(which, "DEL", pod)
    finally:
        d.cleanup()
    n = spec["concurrent"]
    return {"cni_add_p50_ms": _q(add, 0.5), "cni_add_p99_ms": _q(add, 0.99),
            "cni_del_p50_ms": _q(dele, 0.5), "cni_del_p99_ms": _q(dele, 0.99),
            f"cni_add{n}_p50_ms": _q(cadd, 0.5), f"cni_add{n}_p99_ms": _q(cadd, 0.99)}


def _tree_rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants (an agent may run helpers, e.g. exabgp)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def agent_rss_mb(lab: Any, host: str = "h1", pods: int = RSS_PODS) -> dict[str, Any]:
    """Add pods on ``host`` (its first network) until it has ``pods``; the agent's RSS."""
    net = lab.topo.network_names()[0]
    while sum(1 for p in lab.pods.values() if p.host == host and
              (p.network or net) == net) < pods:
        lab.add_pod(host, network=net)
    rec = lab.procs[f"agent:{host}"]
    return {"agent_rss_mb": round(_tree_rss_kb(rec.pid) / 1024, 1), "rss_pods": pods}


def _mentions(lab: Any, host: str, needles: list[str]) -> bool:
    """Does ``host`` still hold state naming a needle: kernel routes, FDB, neighbours of
    its overlay devices (eth0's ARP cache is the underlay's, not the backend's), or its
    agent's status (peers of user-space and gossip backends live there)?"""
    text = lab.exec(host, ["ip", "-4", "route", "show", "table", "all"]).stdout
    text += lab.exec(host, ["bridge", "fdb", "show"]).stdout
    text += "".join(line + "\n" for line in lab.exec(host, ["ip", "-4", "neigh"]).stdout
                    .splitlines() if " dev eth0 " not in line)
    with contextlib.suppress(Exception):  # an agent not answering shows us nothing
        text += json.dumps(lab.agent_call(host, {"op": "status"}, timeout=5)) + "\n"
    return any(n in text for n in needles)


def convergence(lab: Any, timeout: float) -> dict[str, Any]:
    """Join: a new host (agent + 1 pod) until its pod and every other pod ping each other
    (from the start of the join). Leave: `fabric down` on that host (agent stop with
    teardown: its lease goes) until no other host's routes, neighbours or FDB entries name
    its underlay IP or its pod's /24."""
    before = sorted(p for p in lab.pods if p.endswith("p1") and p[:2] in ("h1", "h2"))
    t0 = time.monotonic()
    host = lab.add_host(pods=1)
    new_pod = next(p.name for p in lab.pods.values() if p.host == host.name)
    res = lab.converge(timeout=timeout, pods=[*before, new_pod])
    join = time.monotonic() - t0
    out: dict[str, Any] = {"join_s": round(join, 2) if res.ok else None}
    if not res.ok:
        out["join_error"] = f"not reachable from all within {timeout:g} s: {res.summary()}"
    ip = str(host.ip)
    pod_net = ".".join(str(lab.pods[new_pod].ip).split(".")[:3]) + ".0/24"
    t1 = time.monotonic()
    lab.agent_call(host.name, {"op": "stop", "teardown": True}, timeout=30)
    others = [h for h in lab.hosts if h != host.name]
    try:
        lab.wait(lambda: not any(_mentions(lab, h, [f"{ip} ", f"{ip}\n", f'"{ip}"', pod_net])
                                 for h in others), timeout=timeout, interval=0.2)
        out["leave_s"] = round(time.monotonic() - t1, 2)
    except LabError:
        out["leave_s"] = None
        out["leave_error"] = f"h{host.index}'s routes still present after {timeout:g} s"
    return out


if __name__ == "__main__":  # the CNI driver, run by cni_latency inside a host namespace
    print(json.dumps(run_cni_driver(json.loads(sys.argv[1]))))
