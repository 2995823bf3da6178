"""``fabric bench mesh``: N in-process peers over the simulated network.

Prints JSON: simulated seconds to topology convergence, messages/bytes per
peer (and per peer per gossip round, against log2 N), then ring results:
seconds until every peer could allocate, allocations made, duplicates found.
``--compare 100,300,1000`` runs several sizes in one go to show the growth.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any

from fabric.errors import ConfigError
from fabric.ipam.ring_alloc import RingAllocator
from fabric.mesh.router import Router, RouterConfig
from fabric.mesh.sim import SimNet

__all__ = ["register", "simulate", "run"]

_RANGE = (int.from_bytes(bytes([10, 32, 0, 1]), "big"), int.from_bytes(bytes([10, 48, 0, 0]),
                                                                         "big") - 1)


def _parse_partition(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--partition {text!r} is invalid",
                          fix="give START,END in simulated seconds, e.g. 0.5,1.5") from exc
    if not 0 <= a < b:
        raise ConfigError(f"--partition {text!r}: START must be >= 0 and below END")
    return a, b


def simulate(n: int, *, degree: int = 3, loss: float = 0.0, seed: int = 1,
             partition: tuple[float, float] | None = None, init: str = "seed",
             seeds: int = 3, max_time: float = 20.0, relay_delay: float = 0.05,
             gossip_interval: float = 5.0, ring: bool = True) -> dict[str, Any]:
    if n < 2:
        raise ConfigError(f"--peers {n} is too small", fix="use at least 2 peers")
    net = SimNet(seed=seed, loss=loss)
    rng = random.Random(seed)
    cfg = RouterConfig(gossip_interval=gossip_interval, relay_delay=relay_delay,
                       backoff_base=0.2, backoff_max=2.0)
    routers = [Router(i + 1, f"p{i}", net, cfg, rng=random.Random(seed * 100003 + i))
               for i in range(n)]
    for i, r in enumerate(routers):
        net.add(f"sim:{r.name}", r)
        targets = {(i + 1) % n} | {rng.randrange(n) for _ in range(degree - 1)}
        r.connect([f"sim:{routers[j].name}" for j in targets if j != i])
    for r in routers:
        r.start()
    if partition:
        half = [r.name for r in routers[: n // 2]], [r.name for r in routers[n // 2:]]
        net.call_later(partition[0], lambda: net.partition(list(half)))
        net.call_later(partition[1], net.heal)
    t_settle = partition[1] if partition else 0.0

    def converged() -> bool:
        if net.now() < t_settle:
            return False
        truth = 0
        for r in routers:
            if any(t.state != "established" for t in r.targets.values()):
                return False
            truth = (truth + hash((r.name, r.version))) & ((1 << 64) - 1)
        return all(len(r.topology.records) == n and r.topology.digest == truth
                   for r in routers)

    wall = time.monotonic()
    ok = net.run_until(max_time, converged)
    t_conv = net.now()
    sent = sum(r.stats["msgs_sent"] for r in routers)
    nbytes = sum(r.stats["bytes_sent"] for r in routers)
    rounds = max(1.0, t_conv / relay_delay)
    out: dict[str, Any] = {
        "peers": n, "degree": degree, "loss": loss, "partition": partition,
        "converged": bool(ok), "convergence_s": round(t_conv, 3),
        "msgs_per_peer": round(sent / n, 1), "bytes_per_peer": round(nbytes / n),
        "rounds": round(rounds, 1), "msgs_per_peer_per_round": round(sent / n / rounds, 3),
        "log2_n": round(math.log2(n), 2), "fanout": routers[0].fanout(),
        "dropped": net.dropped,
    }
    if ring:
        out.update(_ring_phase(net, routers, init, seeds, max_time))
    out["wall_s"] = round(time.monotonic() - wall, 2)
    return out


def _ring_phase(net: SimNet, routers: list[Router], init: str, seeds: int,
                max_time: float) -> dict[str, Any]:
    n = len(routers)
    seed_names = [r.name for r in routers[:seeds]]
    allocs = []
    for r in routers:
        a = RingAllocator(r, *_RANGE, mode=init, quorum=n // 2 + 1, seeds=seed_names,
                          retry=0.5)
        allocs.append(a)
    t0 = net.now()
    for a in allocs:
        a.start()
    got: dict[int, int] = {}

    def all_allocated() -> bool:
        for i, a in enumerate(allocs):
            if i not in got:
                addr = a.try_allocate(f"c{i}/eth0")
                if addr is not None:
                    got[i] = addr
        return len(got) == n

    ok = net.run_until(net.now() + max_time, all_allocated, check_every=0.01)
    t_alloc = net.now() - t0
    # a second wave on every peer, then let gossip settle and compare rings
    for i, a in enumerate(allocs):
        addr = a.try_allocate(f"d{i}/eth0")
        if addr is not None:
            got[n + i] = addr

    def agree() -> bool:
        return len({hash(tuple(sorted(a.ring.entries.items()))) for a in allocs}) == 1
    t1 = net.now()
    net.run_until(net.now() + 10.0, agree, check_every=0.1)
    t_agree = net.now() - t1
    addrs = [ad for a in allocs for ad in a.allocs.values()]
    owners_ok = all(a.ring.owner_entry(ad).peer == a.me
                    for a in allocs for ad in a.allocs.values())
    return {"ring_init": init, "ring_ready": bool(ok), "alloc_all_s": round(t_alloc, 3),
            "allocations": len(addrs), "duplicates": len(addrs) - len(set(addrs)),
            "allocations_in_own_ranges": owners_ok, "rings_agree": agree(),
            "ring_agree_after_wave_s": round(t_agree, 3),
            "donations": sum(a.stats["donated"] for a in allocs),
            "inconsistencies": sum(len(a.inconsistencies) for a in allocs)}


def run(args: argparse.Namespace) -> int:
    try:
        sizes = ([int(x) for x in args.compare.split(",")] if args.compare else [args.peers])
        part = _parse_partition(args.partition) if args.partition else None
        if not 0 <= args.loss < 1:
            raise ConfigError(f"--loss {args.loss} must be in [0, 1)")
        results = [simulate(n, degree=args.degree, loss=args.loss, seed=args.seed,
                            partition=part, init=args.init, seeds=args.seeds,
                            gossip_interval=args.gossip_interval, ring=not args.no_ring)
                   for n in sizes]
    except ValueError as exc:
        raise ConfigError(f"bad argument: {exc}") from exc
    doc: dict[str, Any] = results[0] if len(results) == 1 else {"runs": results}
    if len(results) > 1:
        base = results[0]
        doc["growth"] = [{"peers": r["peers"],
                          "msgs_per_round_ratio": round(r["msgs_per_peer_per_round"]
                                                        / base["msgs_per_peer_per_round"], 2),
                          "log2_ratio": round(r["log2_n"] / base["log2_n"], 2)}
                         for r in results]
    print(json.dumps(doc, indent=2))
    if args.table:
        cols = ["peers", "convergence_s", "msgs_per_peer_per_round", "log2_n",
                "bytes_per_peer", "alloc_all_s", "duplicates", "wall_s"]
        sys.stderr.write(" ".join(f"{c:>24}" for c in cols) + "\n")
        for r in results:
            sys.stderr.write(" ".join(f"{r.get(c, '-')!s:>24}" for c in cols) + "\n")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("mesh", help="gossip mesh + IPAM ring simulator")
    p.add_argument("--peers", type=int, default=100)
    p.add_argument("--compare", help="several sizes, e.g. 100,300,1000")
    p.add_argument("--degree", type=int, default=3, help="outbound targets per peer")
    p.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    p.add_argument("--partition", help="START,END: split the peers in halves meanwhile")
    p.add_argument("--init", choices=["seed", "consensus"], default="seed")
    p.add_argument("--seeds", type=int, default=3, help="seed peers with --init seed")
    p.add_argument("--no-ring", action="store_true", help="topology only")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--gossip-interval", type=float, default=5.0,
                   help="periodic full gossip, simulated seconds (weave: 30)")
    p.add_argument("--table", action="store_true", help="also a table on stderr")
    p.set_defaults(func=run)
