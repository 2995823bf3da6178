"""`fabric bench cni`: CNI ADD latency of `fabric-cni` against Debian's bridge + host-local.

A one-host lab (hostgw, subnet IPAM with etcd: the agent as users run it) is brought up;
a driver process inside the host's namespace then executes, the way a runtime does,
``fabric-cni`` as `fabric cni install` installs it (the zipapp run by the host's
``python3``; ``--plugin native`` the native forwarder, fabric/cni/forward.c, which hands the
call to the agent; ``--plugin venv`` the venv's console script, which pays for the venv's
site start-up) and the reference chain, the
containernetworking ``bridge`` plugin with ``host-local`` IPAM (its own bridge and
subnet in the same namespace), and times each execution end to end:

1. ``sequential``: N ADDs, the two plugins alternating pod by pod;
2. ``concurrent``: C ADDs started at once (threads, one process each), ours then the
   reference, ``--rounds`` times with DELs in between; p50/p99 per plugin;
3. ``phases``: where one ADD's time goes: the interpreter alone (``python -S``,
   ``python``), ``fabric-cni VERSION`` (interpreter + the plugin's imports), and the
   agent's share (``cni.add`` sent from the driver's own process, no exec).

JSON on stdout, a table on stderr. The targets (issue 16) are printed with the result:
sequential p50 <= 50 ms; concurrent p99 <= 1.5 x the reference's in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["register", "cni_bench", "run_driver"]

REF_DIR = "/usr/lib/cni"
# The PATH a runtime (containerd, podman) runs plugins with: the installed plugin's
# `/usr/bin/env python3` then finds the host's python3, not a venv's (whose site start-up,
# with editable installs, costs about 20 ms more per exec).
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REF_SUBNET = "10.199.0.0/16"
SEQ_TARGET_MS = 50.0
CONCURRENT_RATIO_TARGET = 1.5


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cni", help="CNI ADD latency vs the bridge + host-local plugins")
    p.add_argument("--pods", type=int, default=30, help="sequential ADDs per plugin")
    p.add_argument("--concurrent", type=int, default=20, help="ADDs started at once")
    p.add_argument("--rounds", type=int, default=3, help="concurrent rounds per plugin")
    p.add_argument("--name", default="cnib", help="lab name (1-8 of [a-z0-9])")
    p.add_argument("--plugin", choices=["installed", "native", "venv"], default="installed",
                   help="which fabric-cni to time: the installed zipapp (default), the native "
                        "forwarder (needs cc), the venv's script")
    p.add_argument("--json", type=Path, dest="json_file", help="also write the JSON here")
    p.set_defaults(func=cmd_cni)


def cmd_cni(args: argparse.Namespace) -> int:
    from fabric.bench.report import emit

    data = cni_bench(pods=args.pods, concurrent=args.concurrent, rounds=args.rounds,
                     name=args.name, plugin=args.plugin)
    rows = [{"measure": k, **v} for k, v in data["summary"].items()]
    emit(data, rows=rows, columns=["measure", "fabric_ms", "reference_ms", "ratio", "target"],
         json_file=args.json_file)
    return 0


def cni_bench(*, pods: int = 30, concurrent: int = 20, rounds: int = 3,
              name: str = "cnib", plugin: str = "installed") -> dict[str, Any]:
    """Bring up the one-host lab, run the driver in its host namespace, take it down."""
    from fabric.errors import KernelFeatureMissing
    from fabric.lab import Lab, Topology

    for tool in ("bridge", "host-local"):
        if not os.access(f"{REF_DIR}/{tool}", os.X_OK):
            raise KernelFeatureMissing(
                f"the reference plugin {REF_DIR}/{tool}",
                fix="apt-get install containernetworking-plugins")
    topo = Topology(name, ("hostgw",), hosts=1, pods_per_host=1)
    with Lab(topo) as lab, tempfile.TemporaryDirectory(prefix="nfcnib-") as tmp:
        from fabric.cni.install import build_plugin

        installed = Path(tmp) / "bin" / "fabric-cni"
        installed.parent.mkdir()
        installed.write_bytes(build_plugin())
        installed.chmod(0o755)
        host = next(iter(lab.hosts.values()))
        native = Path(tmp) / "native" / "fabric-cni"
        if plugin == "native":
            from fabric.cni.native import build_native

            build_native(native, socket=host.socket, fallback=str(installed))
        spec = {"socket": host.socket, "network": topo.network_names()[0],
                "tag": f"{topo.prefix}b{secrets.token_hex(2)}", "pods": pods,
                "concurrent": concurrent, "rounds": rounds, "tmp": tmp, "plugin": plugin,
                "installed": str(installed), "native": str(native)}
        proc = subprocess.run(
            ["ip", "netns", "exec", host.ns, sys.executable, "-m", "fabric.bench.cni",
             json.dumps(spec)], capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            from fabric.lab import LabError

            raise LabError(f"bench driver failed: {proc.stderr.strip()[-1500:]}")
        data = json.loads(proc.stdout)
    data["machine"] = {"cpus": os.cpu_count(), "load1": round(os.getloadavg()[0], 2)}
    return data


# -- the driver: runs inside the lab host's namespace -----------------------------------
def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class _Driver:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.bin = Path(sys.executable).parent
        self.venv_plugin = str(self.bin / "fabric-cni")
        self.plugin = {"installed": spec["installed"], "native": spec.get("native")}.get(
            spec.get("plugin"), self.venv_plugin)
        self.tag = spec["tag"]
        self.tmp = Path(spec["tmp"])
        self.ours = json.dumps({"cniVersion": "1.0.0", "name": "nfbench", "type": "fabric-cni",
                                "network": spec["network"], "agentSocket": spec["socket"]})
        self.ref = json.dumps({
            "cniVersion": "1.0.0", "name": "nfref", "type": "bridge", "bridge": "nfref0",
            "isGateway": True, "ipam": {"type": "host-local", "subnet": REF_SUBNET,
                                        "dataDir": str(self.tmp / "host-local")}})
        self.made: list[str] = []

    def netns(self, name: str) -> str:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.made.append(name)
        return f"/run/netns/{name}"

    def exec_plugin(self, which: str, verb: str, pod: str) -> float:
        exe, conf, path = ((self.plugin, self.ours, str(Path(self.plugin).parent))
                           if which == "fabric" else (f"{REF_DIR}/bridge", self.ref, REF_DIR))
        env = {"PATH": RUNTIME_PATH, "CNI_COMMAND": verb,
               "CNI_CONTAINERID": pod, "CNI_NETNS": f"/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": path}
        t0 = time.perf_counter()
        proc = subprocess.run([exe], input=conf, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        elapsed = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{which} {verb} {pod}: {proc.stdout.strip()} {proc.stderr}")
        return elapsed

    def timed(self, argv: list[str], repeat: int = 10, env: dict | None = None) -> float:
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           check=True)
            samples.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(samples), 1)

    def phases(self) -> dict[str, float]:
        from fabric.control import call

        env = {"CNI_COMMAND": "VERSION", "PATH": RUNTIME_PATH}
        out = {
            "python -S -c pass": self.timed([sys.executable, "-S", "-c", "pass"]),
            "python -c pass": self.timed([sys.executable, "-c", "pass"]),
            "host python3 -c pass": self.timed(["/usr/bin/python3", "-c", "pass"]),
            "fabric-cni VERSION (installed)": self.timed([self.spec["installed"]], env=env),
            "fabric-cni VERSION (venv)": self.timed([self.venv_plugin], env=env),
            "bridge VERSION": self.timed([f"{REF_DIR}/bridge"], env=env),
        }
        agent = []
        for i in range(10):
            pod = f"{self.tag}a{i}"
            path = self.netns(pod)
            fd = os.open(path, os.O_RDONLY)
            try:
                req = {"op": "cni.add", "network": self.spec["network"], "container_id": pod,
                       "ifname": "eth0", "netns": path}
                t0 = time.perf_counter()
                call(self.spec["socket"], req, timeout=60, fds=(fd,))
                agent.append((time.perf_counter() - t0) * 1000)
                call(self.spec["socket"], {**req, "op": "cni.del"}, timeout=60, fds=(fd,))
            finally:
                os.close(fd)
        out["agent cni.add (no exec)"] = round(statistics.median(agent), 1)
        return out

    def sequential(self) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"fabric": [], "reference": []}
        for i in range(self.spec["pods"]):
            for which in ("fabric", "reference"):
                pod = f"{self.tag}{which[0]}{i}"
                self.netns(pod)
                times[which].append(self.exec_plugin(which, "ADD", pod))
        for i in range(self.spec["pods"]):
            for which in ("fabric", "reference"):
                self.exec_plugin(which, "DEL", f"{self.tag}{which[0]}{i}")
        return times

    def concurrent(self) -> dict[str, list[float]]:
        n = self.spec["concurrent"]
        times: dict[str, list[float]] = {"fabric": [], "reference": []}
        for r in range(self.spec["rounds"]):
            for which in ("fabric", "reference"):
                pods = [f"{self.tag}{which[0]}c{r}x{i}" for i in range(n)]
                for pod in pods:
                    self.netns(pod)
                with ThreadPoolExecutor(n) as pool:
                    times[which] += list(pool.map(
                        lambda p, w=which: self.exec_plugin(w, "ADD", p), pods))
                for pod in pods:
                    self.exec_plugin(which, "DEL", pod)
        return times

    def cleanup(self) -> None:
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", "nfref0"], capture_output=True, check=False)


def run_driver(spec: dict[str, Any]) -> dict[str, Any]:
    d = _Driver(spec)
    try:
        phases = d.phases()
        seq = d.sequential()
        conc = d.concurrent()
    finally:
        d.cleanup()
    summary = {
        "sequential p50": {"fabric_ms": _ms(seq["fabric"], 0.5),
                           "reference_ms": _ms(seq["reference"], 0.5),
                           "target": f"fabric <= {SEQ_TARGET_MS:g} ms"},
        "sequential p99": {"fabric_ms": _ms(seq["fabric"], 0.99),
                           "reference_ms": _ms(seq["reference"], 0.99)},
        f"{spec['concurrent']} concurrent p50": {
            "fabric_ms": _ms(conc["fabric"], 0.5), "reference_ms": _ms(conc["reference"], 0.5)},
        f"{spec['concurrent']} concurrent p99": {
            "fabric_ms": _ms(conc["fabric"], 0.99), "reference_ms": _ms(conc["reference"], 0.99),
            "target": f"ratio <= {CONCURRENT_RATIO_TARGET:g}"},
    }
    for row in summary.values():
        row["ratio"] = round(row["fabric_ms"] / row["reference_ms"], 2) \
            if row["reference_ms"] else None
    seq_ok = summary["sequential p50"]["fabric_ms"] <= SEQ_TARGET_MS
    conc_ok = (summary[f"{spec['concurrent']} concurrent p99"]["ratio"] or 99) \
        <= CONCURRENT_RATIO_TARGET
    return {"bench": "cni", "plugin": spec.get("plugin"), "pods": spec["pods"],
            "concurrent": spec["concurrent"], "rounds": spec["rounds"],
            "phases_ms": phases, "summary": summary,
            "targets_met": {"sequential_p50": seq_ok, "concurrent_p99": conc_ok},
            "samples_ms": {"sequential": seq, "concurrent": conc}}


if __name__ == "__main__":  # the driver, run by cni_bench inside the lab host's namespace
    print(json.dumps(run_driver(json.loads(sys.argv[1]))))
