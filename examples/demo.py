"""The main job of `make demo`: a 3-host vxlan lab, every pod pings every other, then down.

Also a small example of using netfabric as a library (fabric.lab).
Run as root: python examples/demo.py [--backend vxlan] [--hosts 3] [--pods-per-host 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from fabric.errors import FabricError
from fabric.lab import Lab, Topology


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vxlan")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--pods-per-host", type=int, default=2)
    args = ap.parse_args()
    topo = Topology("demo", args.backend, hosts=args.hosts, pods_per_host=args.pods_per_host)
    try:
        with Lab(topo) as lab:
            print(f"lab 'demo' up: {args.hosts} hosts running `fabric up --backend {args.backend}`")
            for name, pod in sorted(lab.pods.items()):
                print(f"  pod {name:6} {pod.address}  on {pod.host}")
            result = lab.converge(timeout=20)
            print(f"\npod-to-pod ping across hosts: {result.summary()}")
            for p in result.pairs[: min(6, len(result.pairs))]:
                print(f"  {p.src:6} -> {p.dst:6} {'ok' if p.ok else 'FAILED'}")
            pods = sorted(lab.pods)
            tcp = lab.tcp_check(pods[0], pods[-1])
            print(f"TCP {pods[0]} -> {pods[-1]}: {'ok' if tcp.ok else 'FAILED'}")
            print("\ntearing the lab down")
            ok = result.ok and tcp.ok
    except FabricError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout.split() if n.startswith("nfl-demo-")]
    if left:
        print(f"namespaces left behind: {', '.join(left)}", file=sys.stderr)
    else:
        print("lab removed: no nfl-demo-* namespace left")
    ok = ok and not left
    print("demo passed" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
