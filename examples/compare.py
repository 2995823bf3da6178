#!/usr/bin/env python3
"""Compare backends from Python: one lab per backend, the same workload, typed results.

    sudo .venv/bin/python examples/compare.py                     # vxlan vs hostgw
    sudo .venv/bin/python examples/compare.py --backends vxlan,weave-sleeve --json

For each backend: a 2-host lab (one pod per host) is built, pods ping each other until the
network converges (``PingResult``), pod h1p1 sends TCP to h2p1 with iperf3 for a few seconds
(``IperfResult``), and the lab is torn down (also on Ctrl-C or an error). Only the stable
public names of ``fabric`` are used (docs/library.md). Progress goes to stderr; stdout gets
the comparison table, or one JSON document with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

import fabric
from fabric import FabricError, IperfResult, Lab, PingResult, Topology


def measure(backend: str, name: str, seconds: float) -> dict[str, Any]:
    """One backend's figures; the lab exists only inside the ``with`` block."""
    topo = Topology(name, backend, hosts=2, pods_per_host=1)
    t0 = time.monotonic()
    with Lab(topo) as lab:
        up_s = time.monotonic() - t0
        converged: PingResult = lab.converge(timeout=30)
        rtts = [p.rtt_ms for p in lab.ping_all(count=3).pairs if p.rtt_ms is not None]
        iperf: IperfResult | None = None
        if converged.ok and shutil.which("iperf3"):
            iperf = lab.iperf("h1p1", "h2p1", seconds=seconds)
    return {"backend": backend, "up_s": round(up_s, 1), "ping_ok": converged.ok,
            "ping": converged.summary(),
            "rtt_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "gbps": round(iperf.gbps, 2) if iperf else None,
            "retransmits": iperf.retransmits if iperf else None}


def table(rows: list[dict[str, Any]]) -> str:
    cols = ("backend", "up_s", "ping", "rtt_ms", "gbps", "retransmits")
    cells = [cols, *[tuple("-" if r[c] is None else str(r[c]) for c in cols) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="vxlan,hostgw",
                   help="comma-separated backend names (see `fabric plugins`)")
    p.add_argument("--seconds", type=float, default=2, help="iperf3 duration per backend")
    p.add_argument("--name", default="cmp", help="lab name prefix (1-6 of [a-z0-9])")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("compare.py: the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    installed = set(fabric.known_names("backend"))
    missing = [b for b in backends if b not in installed]
    if missing:
        print(f"compare.py: not installed: {', '.join(missing)}; installed: "
              f"{', '.join(sorted(installed)) or 'none'}", file=sys.stderr)
        return 2
    rows = []
    for i, backend in enumerate(backends):
        print(f"[{i + 1}/{len(backends)}] {backend}: lab up, ping, iperf3, down ...",
              file=sys.stderr, flush=True)
        try:
            rows.append(measure(backend, f"{args.name}{i}", args.seconds))
        except FabricError as exc:  # one backend failing does not hide the others
            print(f"  {backend}: {exc}", file=sys.stderr)
            rows.append({"backend": backend, "error": str(exc), "up_s": None, "ping_ok": False,
                         "ping": "error", "rtt_ms": None, "gbps": None, "retransmits": None})
    if args.json:
        print(json.dumps({"version": fabric.__version__, "results": rows}, indent=2))
    else:
        print(table(rows))
    return 0 if all(r["ping_ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
