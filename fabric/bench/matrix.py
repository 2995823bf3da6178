"""``fabric bench matrix``: every backend and variant side by side, with the underlay and
reference rows measured in the same alternating rounds (issue 13; docs/benchmarks.md).

One two-host lab per backend row (all up at once), plus one agent-less lab that carries the
underlay row, the kernel reference rows (``matrix_ref``) and flannel udp's per-packet C loop
(``reference.UdpTunReference``). Each round measures every row in turn (reversed every other
round), so drift hits all rows alike; per-round ratios to the underlay and to the row's
reference are taken in the same round and their median reported. Then once per backend row:
CNI latency, agent RSS with 20 pods, join/leave convergence. A row that cannot be measured
carries its error; the others go on. JSON on stdout, progress with ETA on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import signal
import statistics
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from fabric.bench.matrix_measure import Path2, ping_rtt, sockperf, throughput
from fabric.bench.matrix_rows import C_REF, UNDERLAY, RowSpec, select_rows
from fabric.bench.report import progress

__all__ = ["register", "run_matrix", "SETTINGS", "SCHEMA"]

SCHEMA = "netfabric.bench.matrix/1"
SETTINGS = {  # --quick keeps CI under 10 minutes on 2 cores
    "quick": {"rounds": 2, "duration": 1, "streams": 4, "rr_seconds": 1, "pings": 20,
              "cni_pods": 5, "cni_concurrent": 20, "converge_timeout": 20},
    "full": {"rounds": 5, "duration": 4, "streams": 4, "rr_seconds": 3, "pings": 50,
             "cni_pods": 20, "cni_concurrent": 20, "converge_timeout": 60},
}
ROUND_METRICS = ("tcp1_gbps", "tcp4_gbps", "cpu_s_per_gb", "rr_per_s", "rtt_p50_us",
                 "rtt_p99_us", "ping_ms")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("matrix", help="every backend side by side with reference rows")
    p.add_argument("--backends", default="all",
                   help="comma-separated backends, or all (default: every installed one)")
    p.add_argument("--quick", action="store_true", help="short runs (CI: under 10 minutes)")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 5; quick 2)")
    p.add_argument("--duration", type=int, help="seconds per iperf3 run (default 4; quick 1)")
    p.add_argument("--out", type=Path, help="write matrix.json, matrix.md and plots here")
    p.set_defaults(func=cmd_matrix)


def cmd_matrix(args: argparse.Namespace) -> int:
    from fabric.bench.report import emit_matrix

    names: Any = "all" if args.backends == "all" else [
        b.strip() for b in args.backends.split(",") if b.strip()]
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    for key in ("rounds", "duration"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: every lab is taken down
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        data = run_matrix(names, settings, quick=args.quick)
    finally:
        signal.signal(signal.SIGTERM, old)
    emit_matrix(data, args.out)
    return 1 if any(r.get("error") for r in data["rows"]) else 0


class _Row:
    """A row while it is measured: spec, path, lab, per-round samples, errors."""

    def __init__(self, spec: RowSpec) -> None:
        self.spec = spec
        self.path: Path2 | None = None
        self.lab: Any = None
        self.samples: dict[str, list[float]] = {m: [] for m in ROUND_METRICS}
        # 1-stream Gbit/s of the reference and the underlay measured right next to this
        # row's own run in each round: the ratios' denominators (drift between rows spread
        # over a round is much larger than between adjacent runs on a shared machine)
        self.paired: dict[str, list[float]] = {"reference": [], "underlay": []}
        self.once: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.error = spec.error

    @property
    def live(self) -> bool:
        return self.path is not None and not self.error


def run_matrix(backends: Any = "all", settings: dict[str, Any] | None = None, *,
               quick: bool = False, tag: str = "") -> dict[str, Any]:
    """Build every lab, measure the rounds and the once-only metrics, take the labs down."""
    s = settings or SETTINGS["quick" if quick else "full"]
    tag = tag or secrets.token_hex(2)
    rows = [_Row(spec) for spec in select_rows(backends)]
    t_start, load0 = time.monotonic(), os.getloadavg()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nfmatrix-")))
        pw = tmp / "weave-password"
        pw.write_text(secrets.token_hex(16))
        pw.chmod(0o600)  # weave refuses a password file others can read
        _setup(rows, stack, tag, tmp, pw, s)
        _rounds(rows, s, t_start)
        _once(rows, s, tmp, tag)
    return {
        "schema": SCHEMA, "bench": "matrix", "quick": quick, "settings": s,
        "rows": [_summary(r, rows) for r in rows],
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "cpu_model": _cpu_model(), "loadavg_before": [round(x, 2) for x in load0],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version()},
        "duration_s": round(time.monotonic() - t_start, 1),
    }


def _setup(rows: list[_Row], stack: contextlib.ExitStack, tag: str, tmp: Path, pw: Path,
           s: dict[str, Any]) -> None:
    from fabric.bench.matrix_once import cni_latency
    from fabric.bench.matrix_ref import KernelReference
    from fabric.bench.reference import REF_NET, UdpTunReference
    from fabric.lab.lab import Lab
    from fabric.lab.topology import Topology

    by_key = {r.spec.key: r for r in rows}
    ref_lab = Lab(Topology(f"mx{tag}r", "hostgw", hosts=2, etcd=False), agents=False)
    progress(f"labs mx{tag}*: reference lab {ref_lab.topo.name}: underlay, kernel-routed, "
             "kernel-vxlan, c-udp")
    stack.callback(ref_lab.down)
    ref_lab.up()
    h1, h2 = ref_lab.hosts["h1"], ref_lab.hosts["h2"]
    by_key[UNDERLAY].path = Path2(h1.ns, h2.ns, h2.ip, "underlay")
    by_key[UNDERLAY].lab = ref_lab
    try:  # CNI reference first: its bridge is named like the C loop's TUN device
        spec = _cni_spec(ref_lab, tmp, s, "reference")
        cni = cni_latency(h1.ns, spec)
        for key in ("kernel-routed", "kernel-vxlan"):
            by_key[key].once.update(cni, cni_plugin="bridge+host-local")
    except Exception as exc:  # noqa: BLE001 - named in the row, the matrix goes on
        by_key["kernel-routed"].errors["cni"] = str(exc)
    for key in ("kernel-routed", "kernel-vxlan"):
        try:
            ref = KernelReference(ref_lab, key).build()
            by_key[key].path = Path2(ref.pods["h1"][0], ref.pods["h2"][0], ref.pods["h2"][1],
                                     key)
        except Exception as exc:  # noqa: BLE001
            by_key[key].error = f"building the reference failed: {exc}"
    try:
        stack.enter_context(UdpTunReference(ref_lab))
        by_key[C_REF].path = Path2(h1.ns, h2.ns, IPv4Address(REF_NET + "2"), C_REF)
    except Exception as exc:  # noqa: BLE001
        by_key[C_REF].error = f"the C reference did not start: {exc}"
    backend_rows = [r for r in rows if r.spec.kind == "backend" and not r.error]
    for i, row in enumerate(backend_rows, 1):
        progress(f"lab {i}/{len(backend_rows)}: {row.spec.key}")
        opts = {k: (str(pw) if v == "{password_file}" else v) for k, v in row.spec.opts.items()}
        topo = Topology(f"mx{tag}{i}", row.spec.backend, hosts=2, pods_per_host=1,
                        backend_opts={row.spec.backend: opts})
        for attempt in (1, 2):  # a second try, as the lab tier reruns a failed test once
            lab = Lab(topo, ready_timeout=60)  # a fresh object: hosts count from h1 again
            stack.callback(lab.down)
            try:
                lab.up()
                res = lab.converge(timeout=s["converge_timeout"] + 10)
                if not res.ok:
                    raise RuntimeError(f"pods do not reach each other: {res.summary()}")
                row.error = ""
                break
            except Exception as exc:  # noqa: BLE001 - the row says why; the others go on
                row.error = f"lab did not come up: {exc}"
                lab.down()
                if attempt == 1:
                    row.errors["lab_first_attempt"] = row.error
                    progress(f"{row.spec.key}: {row.error}; trying once more")
        if row.error:
            continue
        row.lab = lab
        a, b = lab.pods["h1p1"], lab.pods["h2p1"]
        row.path = Path2(a.ns, b.ns, b.ip, row.spec.key)


def _measure(row: _Row, s: dict[str, Any]) -> None:
    assert row.path is not None
    steps = (("tcp1", lambda p: throughput(p, s["duration"], 1)),
             ("tcp4", lambda p: throughput(p, s["duration"], s["streams"])),
             ("rr", lambda p: sockperf(p, s["rr_seconds"])),
             ("ping", lambda p: ping_rtt(p, s["pings"])))
    for name, fn in steps:
        try:
            res = fn(row.path)
        except Exception as exc:  # noqa: BLE001 - named per metric
            row.errors[name] = str(exc)
            continue
        if name == "tcp1":
            row.samples["tcp1_gbps"].append(res["gbps"])
            if res["cpu_s_per_gb"] is not None:
                row.samples["cpu_s_per_gb"].append(res["cpu_s_per_gb"])
        elif name == "tcp4":
            row.samples["tcp4_gbps"].append(res["gbps"])
        else:
            for k, v in res.items():
                if v is not None:
                    row.samples[k].append(v)


def _pair(row: _Row, by_key: dict[str, _Row], s: dict[str, Any]) -> None:
    """The 1-stream runs of the row's reference and of the underlay, next to its own."""
    for name, key in (("reference", row.spec.reference), ("underlay", UNDERLAY)):
        other = by_key.get(key or "")
        gbps = float("nan")
        if other is not None and other.live and other.path is not None:
            with contextlib.suppress(Exception):  # a missed pair only drops that round
                gbps = throughput(other.path, s["duration"], 1)["gbps"]
        row.paired[name].append(gbps)


def _rounds(rows: list[_Row], s: dict[str, Any], t_start: float) -> None:
    by_key = {r.spec.key: r for r in rows}
    live = [r for r in rows if r.live]
    total, done, t0 = s["rounds"] * len(live), 0, time.monotonic()
    for rnd in range(s["rounds"]):
        order = live if rnd % 2 == 0 else list(reversed(live))
        for row in order:
            eta = (time.monotonic() - t0) / done * (total - done) if done else None
            progress(f"round {rnd + 1}/{s['rounds']}: {row.spec.key} "
                     f"({done + 1}/{total}, elapsed {time.monotonic() - t_start:.0f} s"
                     + (f", rounds ETA {eta:.0f} s)" if eta is not None else ")"))
            pair = row.spec.kind == "backend"
            if pair and rnd % 2:  # ABBA: the pair before the row's run in odd rounds
                _pair(row, by_key, s)
            _measure(row, s)
            if pair and not rnd % 2:
                _pair(row, by_key, s)
            done += 1
        for row in live:  # keep per-round alignment for the ratios: pad a missed sample
            for m in ("tcp1_gbps", "tcp4_gbps"):
                while len(row.samples[m]) < rnd + 1:
                    row.samples[m].append(float("nan"))


def _cni_spec(lab: Any, tmp: Path, s: dict[str, Any], which: str) -> dict[str, Any]:
    from fabric.cni.install import build_plugin

    installed = tmp / "bin" / "fabric-cni"
    if not installed.exists():
        installed.parent.mkdir(exist_ok=True)
        installed.write_bytes(build_plugin())
        installed.chmod(0o755)
    host = lab.hosts["h1"]
    work = tmp / f"cni-{lab.topo.name}"
    work.mkdir(exist_ok=True)
    return {"socket": host.socket, "network": lab.topo.network_names()[0],
            "tag": f"{lab.topo.prefix}c", "pods": s["cni_pods"],
            "concurrent": s["cni_concurrent"], "tmp": str(work), "plugin": "installed",
            "installed": str(installed), "which": which}


def _once(rows: list[_Row], s: dict[str, Any], tmp: Path, tag: str) -> None:
    from fabric.bench.matrix_once import agent_rss_mb, cni_latency, convergence

    live = [r for r in rows if r.live and r.spec.kind == "backend"]
    t0 = time.monotonic()
    for i, row in enumerate(live, 1):
        lab = row.lab
        eta = (time.monotonic() - t0) / (i - 1) * (len(live) - i + 1) if i > 1 else None
        progress(f"once {i}/{len(live)}: {row.spec.key}: CNI, RSS with 20 pods, convergence"
                 + (f" (ETA {eta:.0f} s)" if eta is not None else ""))
        for name, fn in (
                ("cni", lambda lab=lab: cni_latency(lab.hosts["h1"].ns,
                                                    _cni_spec(lab, tmp, s, "fabric"))),
                ("rss", lambda lab=lab: agent_rss_mb(lab)),
                ("convergence", lambda lab=lab: convergence(lab, s["converge_timeout"]))):
            try:
                res = fn()
            except Exception as exc:  # noqa: BLE001 - named per metric
                row.errors[name] = str(exc)
                continue
            for k in ("join_error", "leave_error"):
                if k in res:
                    row.errors[k.split("_")[0]] = res.pop(k)
            row.once.update(res)
        lab.down()  # frees the machine for the next row's once-only metrics


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v == v]  # drop NaN padding
    return round(statistics.median(vals), 3) if vals else None


def _ratio(row: _Row, other: _Row | None, metric: str, paired: str = "") -> float | None:
    """Median of the per-round ratios: to the paired runs when there are (1 stream), else
    to the other row's run in the same round."""
    if other is None:
        return None
    base = row.paired.get(paired) if paired else None
    base = base if base and any(b == b for b in base) else other.samples[metric]
    pairs = [a / b for a, b in zip(row.samples[metric], base, strict=False)
             if a == a and b == b and b > 0]
    return round(statistics.median(pairs), 3) if pairs else None


def _summary(row: _Row, rows: list[_Row]) -> dict[str, Any]:
    by_key = {r.spec.key: r for r in rows}
    under = by_key.get(UNDERLAY)
    ref = by_key.get(row.spec.reference) if row.spec.reference else None
    out: dict[str, Any] = {"backend": row.spec.backend, "variant": row.spec.variant,
                           "kind": row.spec.kind, "reference": row.spec.reference,
                           "options": dict(row.spec.opts)}
    for m in ROUND_METRICS:
        out[m] = _median(row.samples[m])
    out.update(row.once)
    out["ratio_to_underlay"] = _ratio(row, under, "tcp1_gbps", "underlay")
    out["ratio_to_reference"] = _ratio(row, ref, "tcp1_gbps", "reference")
    out["tcp4_ratio_to_underlay"] = _ratio(row, under, "tcp4_gbps")
    out["tcp4_ratio_to_reference"] = _ratio(row, ref, "tcp4_gbps")
    out["tcp1_gbps_rounds"] = [round(v, 3) for v in row.samples["tcp1_gbps"] if v == v]
    if row.spec.kind == "backend":
        out["paired_gbps_rounds"] = {k: [round(v, 3) if v == v else None for v in vs]
                                     for k, vs in row.paired.items()}
    out["metrics"] = sorted(k for k, v in out.items() if isinstance(v, int | float)
                            and not isinstance(v, bool) and k not in ("rss_pods",))
    out["errors"] = dict(row.errors)
    out["error"] = row.error or (None if out["tcp1_gbps"] is not None or not row.live
                                 else "no throughput measured: " + row.errors.get("tcp1", ""))
    if not row.live and not row.error:
        out["error"] = "not measured"
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""
