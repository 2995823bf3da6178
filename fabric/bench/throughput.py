"""``fabric bench throughput`` (short: ``fabric bench --backend NAME``): pod-to-pod TCP
throughput against the underlay, measured in the same lab run with iperf3.

A lab of ``--hosts`` emulated hosts (one pod each) is built; after a short
discarded warm-up, ``--repeat`` rounds each measure iperf3 h1 -> h2 over the
hosts' eth0 (the underlay baseline) and h1p1 -> h2p1 through the backend, in
alternating order (ABBA). ``--pin`` (``--pin split``) pins the iperf3 client
to CPU 0 and the server to CPU 1; ``--pin one`` puts both on CPU 0, so every
packet of both emulated hosts is handled on that one CPU: the ratio is then the
per-byte CPU cost of the underlay path over that of the pod path, without the
cross-CPU artefacts of a veth lab (a flow sent from two CPUs is reordered
between their backlogs: spurious retransmits; wake-up IPIs). ``--congestion``
sets the client's TCP congestion control (default: the machine's, inherited
by the lab's namespaces); see docs/benchmarks.md for how much it matters here.
``ratio`` is the median of the per-round pod / underlay ratios (robust to load
drifting between rounds); ``ratio_of_medians`` is also given.
Targets (reported, not enforced): vxlan >= 0.85, hostgw and calico-bgp >= 0.95.
Backend options such as ``--backend-opt FastPath=true`` are passed to the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import statistics
from pathlib import Path
from typing import Any

from fabric.bench.reference import REF_DEV, UdpTunReference
from fabric.bench.report import progress
from fabric.errors import ConfigError

__all__ = ["register", "run", "TARGETS"]

TARGETS = {"vxlan": 0.85, "hostgw": 0.95, "calico-bgp": 0.95}
PIN_MODES = {"split": (0, 1), "one": (0, 0)}  # (client CPU, server CPU)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("throughput", help="pod-to-pod iperf3 vs the underlay (lab)")
    p.add_argument("--backend", required=True, help="backend to measure (e.g. vxlan)")
    p.add_argument("--hosts", type=int, default=2, help="emulated hosts (>= 2)")
    p.add_argument("--duration", type=int, default=3, help="seconds per iperf3 run")
    p.add_argument("--repeat", type=int, default=5,
                   help="alternating rounds (one round = one run of each kind)")
    p.add_argument("--streams", type=int, default=1, help="parallel TCP streams")
    p.add_argument("--pin", nargs="?", const="split", choices=sorted(PIN_MODES), default=None,
                   help="pin iperf3: 'split' (default with --pin) client on CPU 0, server on "
                        "CPU 1; 'one' both on CPU 0")
    p.add_argument("--congestion", default="", metavar="NAME",
                   help="client TCP congestion control, e.g. cubic (default: the machine's)")
    p.add_argument("--reference", choices=["c-udp"], default=None,
                   help="also measure a reference path in the same rounds: c-udp = flannel "
                        "udp's per-packet C loop between h1 and h2 (default for user-space "
                        "backends)")
    p.add_argument("--no-reference", action="store_true", help="never measure a reference")
    p.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="", help="lab name (default: a random bNNNN)")
    p.add_argument("--json", type=Path, dest="json_file", help="also write the JSON here")
    p.add_argument("--table", action="store_true", help="print the table on stdout too")
    p.set_defaults(func=cmd_throughput)


def run(backend: str, *, hosts: int = 2, duration: int = 3, repeat: int = 5,
        streams: int = 1, backend_opts: dict[str, Any] | None = None,
        name: str = "", pin: str | bool | None = None,
        congestion: str = "", reference: str | None = None) -> dict[str, Any]:
    """Bring up a lab, measure, take it down; returns the result mapping."""
    from fabric.lab.lab import Lab
    from fabric.lab.topology import Topology

    if hosts < 2:
        raise ConfigError(f"--hosts {hosts} is too small", fix="the benchmark needs 2 hosts")
    if not 1 <= duration <= 120 or not 1 <= repeat <= 20 or not 1 <= streams <= 16:
        raise ConfigError("--duration must be 1-120 s, --repeat 1-20, --streams 1-16")
    available = _sysctl("tcp_available_congestion_control").split()
    if congestion and available and congestion not in available:
        raise ConfigError(f"--congestion {congestion!r} is not available in this kernel",
                          fix=f"use one of {', '.join(available)}")
    topo = Topology(name or f"b{secrets.token_hex(2)}", backend, hosts=hosts, pods_per_host=1,
                    backend_opts={backend: backend_opts or {}})
    under: list[float] = []
    pod: list[float] = []
    runs: list[dict[str, Any]] = []
    mode = "split" if pin is True else pin or None
    if mode is not None and mode not in PIN_MODES:
        raise ConfigError(f"--pin {mode!r} is not a pinning mode",
                          fix=f"use one of {', '.join(sorted(PIN_MODES))}")
    cpus = PIN_MODES[mode] if mode and (os.cpu_count() or 1) > max(PIN_MODES[mode]) else None
    kinds = {"underlay": ("h1", "h2", under), "pod": ("h1p1", "h2p1", pod)}
    ref: list[float] = []
    load_before = os.getloadavg()[0]
    progress(f"lab {topo.name} up: {hosts} hosts, backend {backend}")
    with Lab(topo) as lab, contextlib.ExitStack() as stack:
        refpath = stack.enter_context(UdpTunReference(lab)) if reference == "c-udp" else None
        if refpath is not None:
            kinds["reference"] = ("h1", f"h2:{REF_DEV}", ref)

        def measure(kind: str, seconds: float, n: int = 1) -> Any:
            src, dst, _ = kinds[kind]
            kw = dict(seconds=seconds, streams=n, cpus=cpus, congestion=congestion)
            return refpath.iperf(**kw) if kind == "reference" and refpath else \
                lab.iperf(src, dst, **kw)
        mtu = lab.exec("h1p1", ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
        progress(f"warm-up: {', '.join(kinds)} (1 s each)")
        for kind in kinds:  # warm-up: neighbours, routes, caches
            measure(kind, 1)
        for i in range(repeat):
            order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
            for kind in order:
                src, dst, out = kinds[kind]
                res = measure(kind, duration, streams)
                progress(f"round {i + 1}/{repeat} {kind}: {res.gbps:.2f} Gbit/s")
                out.append(res.gbps)
                runs.append({"run": i + 1, "kind": kind, "src": src, "dst": dst,
                             "dst_ip": str(res.dst_ip), "gbps": res.gbps,
                             "retransmits": res.retransmits,
                             "cpu_sender_pct": res.cpu_sender,
                             "cpu_receiver_pct": res.cpu_receiver})
    u, p = statistics.median(under), statistics.median(pod)
    per_round = [b / a for a, b in zip(under, pod, strict=True) if a]
    ratio = round(statistics.median(per_round), 3) if per_round else None
    target = TARGETS.get(backend)
    per_ref = [b / a for a, b in zip(ref, pod, strict=False) if a]
    reference_fields: dict[str, Any] = {}
    if ref:
        reference_fields = {
            "reference": reference,
            "reference_gbps": round(statistics.median(ref), 3),
            "ratio_to_reference": round(statistics.median(per_ref), 3) if per_ref else None,
            "reference_to_underlay": round(statistics.median(ref) / u, 3) if u else None,
        }
    return {
        "bench": "throughput",
        "backend": backend,
        "hosts": hosts,
        "duration_s": duration,
        "repeat": repeat,
        "streams": streams,
        "underlay_gbps": round(u, 3),
        "pod_gbps": round(p, 3),
        "ratio": ratio,
        "ratio_of_medians": round(p / u, 3) if u else None,
        "ratio_per_round": [round(r, 3) for r in per_round],
        # spread of the per-round ratios: on a noisy machine a round can swing +-15 %
        "ratio_quartiles": ([round(q, 3) for q in statistics.quantiles(per_round, n=4)]
                            if len(per_round) >= 2 else None),
        "pinned_cpus": list(cpus) if cpus else None,  # [client, server]
        "pin": mode if cpus else None,
        "congestion": congestion or _sysctl("tcp_congestion_control"),
        "target_ratio": target,
        "meets_target": None if target is None or ratio is None else ratio >= target,
        "pod_mtu": int(mtu) if mtu.isdigit() else None,
        "underlay_mtu": topo.mtu,
        **reference_fields,
        "runs": runs,
        "cpus": os.cpu_count(),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "kernel": platform.release(),
    }


def _userspace(backend: str) -> bool:
    """Does the backend's data path run in user space (so the C loop is its reference)?"""
    from fabric.plugins import load_plugin

    try:
        return bool(load_plugin("backend", backend).capabilities.userspace)
    except Exception:  # an unknown backend fails clearly in run()
        return False


def _sysctl(key: str) -> str:
    """A sysctl of this (the root) namespace, whose TCP settings new namespaces inherit."""
    try:
        return Path("/proc/sys/net/ipv4", key).read_text().strip()
    except OSError:
        return ""


def cmd_throughput(args: argparse.Namespace) -> int:
    from fabric.agent.config import parse_key_values
    from fabric.bench.report import emit, format_table

    reference = args.reference
    if reference is None and not args.no_reference and _userspace(args.backend):
        reference = "c-udp"
    data = run(args.backend, hosts=args.hosts, duration=args.duration, repeat=args.repeat,
               streams=args.streams, backend_opts=parse_key_values(args.backend_opt),
               name=args.name, pin=args.pin, congestion=args.congestion,
               reference=None if args.no_reference else reference)
    columns = ["run", "kind", "src", "dst", "gbps", "retransmits", "cpu_sender_pct"]
    summary = [{"run": "median", "kind": "pod/underlay", "src": "", "dst": "",
                "gbps": data["ratio"], "retransmits": ""}]
    if data.get("reference"):
        summary.append({"run": "median", "kind": f"pod/{data['reference']}", "src": "",
                        "dst": "", "gbps": data["ratio_to_reference"], "retransmits": ""})
    emit(data, rows=[*data["runs"], *summary], columns=columns, json_file=args.json_file)
    if args.table:
        print(format_table([*data["runs"], *summary], columns))
    return 0
