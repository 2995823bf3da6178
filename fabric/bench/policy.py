"""`fabric bench policy`: the nftables policy engine's cost.

1. ``rules``: a policy with N rules (default 1000) applied to a pod by the real engine
   in a scratch namespace ``nfpol-b*``: time and number of nft transactions (must be 1),
   the rules found in the kernel afterwards (the endpoint's chain and its reply-direction
   twin, which re-judges established connections after a change), and an incremental
   update (a peer pod arrives). 2. ``throughput``: iperf3 pod to pod (cross-host and
   same-host) in two labs up at once, one with the ``none`` engine (the baseline), one
   with ``nftables``; each round alternates: baseline, no policy, an allow-all policy,
   and an allow-all-pods policy that really isolates every pod (conntrack, set lookups,
   same-host traffic re-routed through the host both ways). Ratios are per-round
   medians against the baseline. JSON on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, FabricError

__all__ = ["register", "rules_bench", "throughput_bench"]

HEAD = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}
POLICIES = {
    "allow-all": {**HEAD, "metadata": {"name": "allow-all"},
                  "spec": {"podSelector": {}, "ingress": [{}], "egress": [{}],
                           "policyTypes": ["Ingress", "Egress"]}},
    "allow-pods": {**HEAD, "metadata": {"name": "allow-pods"},
                   "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}],
                            "egress": [{"to": [{"podSelector": {}}]}],
                            "policyTypes": ["Ingress", "Egress"]}},
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("policy", help="nftables policy: N-rule transaction, throughput")
    p.add_argument("--rules", type=int, default=1000, help="rules in the big policy")
    p.add_argument("--backend", default="vxlan", help="backend of the throughput lab")
    p.add_argument("--duration", type=float, default=3, help="seconds per iperf3 run")
    p.add_argument("--repeat", type=int, default=5, help="alternating rounds")
    p.add_argument("--only", choices=["rules", "throughput"], help="run one part only")
    p.add_argument("--json", type=Path, dest="json_file", help="also write the JSON here")
    p.add_argument("--table", action="store_true", help="print the table on stdout too")
    p.set_defaults(func=cmd_policy)


# -- part 1: one big policy, one transaction --------------------------------------------
def _worker(n: int) -> dict[str, Any]:
    """Runs inside the scratch namespace: the real engine, counting nft runs."""
    from fabric.api import Endpoint, NetworkContext, NetworkSpec, Node, Workload
    from fabric.policy import engine as eng
    from fabric.policy.load import parse_documents

    runs = []
    real = eng.run_nft

    def counting(batch, args=()):
        runs.append(len(batch))
        return real(batch, args)

    eng.run_nft = counting
    tmp = Path(tempfile.mkdtemp(prefix="nfpol-bench-"))
    ctx = NetworkContext(NetworkSpec("bench", IPv4Network("10.250.0.0/16"), "fake"),
                         Node("b1", IPv4Address("198.18.250.1"), "lo", 65536), tmp)
    engine = eng.NftablesPolicy(ctx)

    def ep(i: int, labels: dict[str, str]) -> Endpoint:
        wl = Workload(f"bench{i:04d}", "eth0", "", f"pod{i}", "default", labels)
        return Endpoint(wl, "", "", (IPv4Interface(f"10.250.0.{i}/24"),), None, (), 1500)

    ports = [{"port": 1000 + i} for i in range(n)]
    doc = {**HEAD, "metadata": {"name": "big"},
           "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                 "ports": ports}]}}
    try:
        engine.start()
        engine.endpoint_added(ep(2, {"app": "db"}))
        engine.endpoint_added(ep(3, {"app": "web"}))
        t0 = time.perf_counter()
        policies = parse_documents([doc], "bench")
        t1 = time.perf_counter()
        before = len(runs)
        engine.set_policies(policies)
        t2 = time.perf_counter()
        txs, batch_len = len(runs) - before, runs[-1]
        chain = engine.compiled.ingress["bench0002/eth0"].chain
        out = subprocess.run(["nft", "-j", "list", "chain", "inet", engine.table, chain],
                             capture_output=True, text=True, check=True).stdout
        in_kernel = sum(1 for x in json.loads(out)["nftables"] if "rule" in x)
        out = subprocess.run(["nft", "-j", "list", "chain", "inet", engine.table, f"r{chain}"],
                             capture_output=True, text=True, check=True).stdout
        reply_rules = sum(1 for x in json.loads(out)["nftables"] if "rule" in x)
        t3 = time.perf_counter()
        before = len(runs)
        engine.endpoint_added(ep(4, {"app": "web"}))  # a peer arrives: set elements only
        t4 = time.perf_counter()
        inc_txs, inc_len = len(runs) - before, runs[-1]
        t5 = time.perf_counter()
        engine.set_policies([])
        t6 = time.perf_counter()
        return {"rules": n, "validate_ms": round((t1 - t0) * 1000, 1),
                "apply_ms": round((t2 - t1) * 1000, 1), "apply_transactions": txs,
                "apply_batch_commands": batch_len, "rules_in_kernel": in_kernel,
                "reply_rules_in_kernel": reply_rules,
                "peer_added_ms": round((t4 - t3) * 1000, 1), "peer_added_transactions": inc_txs,
                "peer_added_batch_commands": inc_len,
                "remove_ms": round((t6 - t5) * 1000, 1)}
    finally:
        try:
            engine.teardown()
        finally:
            eng.run_nft = real
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()


def rules_bench(n: int = 1000) -> dict[str, Any]:
    if not 1 <= n <= 20000:
        raise ConfigError(f"--rules {n} is out of range", fix="use 1-20000")
    ns = f"nfpol-b{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                              "fabric.bench.policy", "--worker", str(n)],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise FabricError(f"policy rules benchmark failed: {res.stderr.strip()[-800:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


# -- part 2: throughput ratios --------------------------------------------------------
_PATHS = {"cross-host": ("h1p1", "h2p1"), "same-host": ("h1p2", "h1p1")}


def _lab(backend: str, engine: str):
    from fabric.lab.lab import Lab
    from fabric.lab.topology import Topology

    topo = Topology(f"b{secrets.token_hex(2)}", backend, hosts=2, pods_per_host=2,
                    agent_args=("--policy", engine))
    return Lab(topo)


def _iperf(lab, src: str, dst: str, duration: float, cpus) -> float:
    from fabric.lab.netns import LabError

    try:
        return lab.iperf(src, dst, seconds=duration, cpus=cpus).gbps
    except LabError as exc:  # a rare iperf3 control-connection reset: one retry, logged
        print(f"bench policy: retrying {src}->{dst}: {exc}", file=sys.stderr)
        time.sleep(0.5)
        return lab.iperf(src, dst, seconds=duration, cpus=cpus).gbps


def _measure(lab, duration: float, cpus) -> dict[str, float]:
    return {path: _iperf(lab, src, dst, duration, cpus) for path, (src, dst) in _PATHS.items()}


def _set_policy(lab, name: str | None) -> None:
    for h in lab.hosts:
        for other in POLICIES:
            if other != name:
                with contextlib.suppress(FabricError):  # not applied: nothing to delete
                    lab.agent_call(h, {"op": "policy.delete", "name": other})
        if name:
            lab.agent_call(h, {"op": "policy.apply", "documents": [POLICIES[name]]})


def _remote_known(lab, want: int) -> bool:
    for h in lab.hosts:
        st = lab.agent_call(h, {"op": "status"})["networks"][0]["policy_status"]
        if st.get("remote_endpoints") != want:
            return False
    return True


def throughput_bench(backend: str = "vxlan", duration: float = 3,
                     repeat: int = 3) -> dict[str, Any]:
    """Two labs up at once (engine ``none`` and ``nftables``); each round measures every
    configuration in alternating order, so load from elsewhere hits all of them alike."""
    if not 0.5 <= duration <= 60 or not 1 <= repeat <= 10:
        raise ConfigError("--duration must be 0.5-60 s and --repeat 1-10")
    cpus = (0, 1) if (os.cpu_count() or 1) >= 2 else None
    configs = ("engine-none", "no-policy", "allow-all", "allow-pods")
    runs: list[dict[str, Any]] = []
    with _lab(backend, "none") as base, _lab(backend, "nftables") as lab:
        for one in (base, lab):  # every pod reaches every other before measuring
            res = one.converge(timeout=30)
            if not res.ok:
                raise FabricError(f"lab {one.topo.name} did not converge: {res.summary()}")
        lab.wait(lambda: _remote_known(lab, 2), timeout=30)
        _measure(base, 0.5, cpus)  # warm-up: neighbours, routes
        _measure(lab, 0.5, cpus)
        for i in range(repeat):
            for cfg in (configs if i % 2 == 0 else tuple(reversed(configs))):
                if cfg != "engine-none":
                    _set_policy(lab, None if cfg == "no-policy" else cfg)
                for path, gbps in _measure(base if cfg == "engine-none" else lab, duration,
                                           cpus).items():
                    runs.append({"round": i + 1, "config": cfg, "path": path, "gbps": gbps})
        _set_policy(lab, None)

    def ratio(cfg: str, ref: str, path: str) -> float:
        per = []
        for i in range(1, repeat + 1):
            got = {r["config"]: r["gbps"] for r in runs if r["round"] == i and r["path"] == path}
            if got.get(ref):
                per.append(got[cfg] / got[ref])
        return round(statistics.median(per), 3)

    summary: dict[str, Any] = {}
    for path in _PATHS:
        s: dict[str, Any] = {f"{c}_gbps": round(statistics.median(
            r["gbps"] for r in runs if r["config"] == c and r["path"] == path), 3)
            for c in configs}
        for cfg in ("no-policy", "allow-all", "allow-pods"):
            s[f"{cfg}_vs_engine_none"] = ratio(cfg, "engine-none", path)
        s["allow-pods_vs_no-policy"] = ratio("allow-pods", "no-policy", path)
        summary[path] = s
    return {"backend": backend, "duration_s": duration, "repeat": repeat,
            "pinned_cpus": list(cpus) if cpus else None, "summary": summary, "runs": runs,
            "target_ratio": 0.95, "load_avg": os.getloadavg()[0],
            "meets_target": all(s["allow-all_vs_engine_none"] >= 0.95
                                for s in summary.values())}


def cmd_policy(args: argparse.Namespace) -> int:
    from fabric.bench.report import emit, format_table

    data: dict[str, Any] = {"bench": "policy", "cpus": os.cpu_count(),
                            "kernel": platform.release()}
    rows: list[dict[str, Any]] = []
    if args.only in (None, "rules"):
        r = rules_bench(args.rules)
        data["rules"] = r
        rows.append({"what": f"{r['rules']}-rule policy", "value": r["apply_ms"], "unit": "ms",
                     "note": f"{r['apply_transactions']} transaction(s), "
                             f"{r['rules_in_kernel']} rules in chain"})
        rows.append({"what": "peer pod added", "value": r["peer_added_ms"], "unit": "ms",
                     "note": f"{r['peer_added_transactions']} transaction(s), "
                             f"{r['peer_added_batch_commands']} commands"})
    if args.only in (None, "throughput"):
        t = throughput_bench(args.backend, args.duration, args.repeat)
        data["throughput"] = t
        for path, s in t["summary"].items():
            for key in ("no-policy_vs_engine_none", "allow-all_vs_engine_none",
                        "allow-pods_vs_engine_none", "allow-pods_vs_no-policy"):
                rows.append({"what": f"{path} {key}", "value": s[key], "unit": "ratio",
                             "note": f"engine none {s['engine-none_gbps']} Gbit/s"})
    emit(data, rows=rows, columns=["what", "value", "unit", "note"], json_file=args.json_file)
    if args.table:
        print(format_table(rows, ["what", "value", "unit", "note"]))
    return 0


if __name__ == "__main__":  # the scratch-namespace worker of rules_bench
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(int(sys.argv[2]))))
    else:
        raise SystemExit("internal worker: python -m fabric.bench.policy --worker N")
