"""A standalone mesh peer process with the ring allocator (for tests and experiments).

    python -m fabric.ipam.ring_peer --state DIR [--host 127.0.0.1] [--port 6783] [--nickname N]
        [--password P] [--connect HOST:PORT ...] [--init consensus=N|seed=A,B|observer]
        [--range 10.32.0.0/12] [--gossip-interval 1] [--name aa:bb:cc:dd:ee:ff]

Prints one JSON line ``{"ready": true, "name": ..., "address": ...}`` once it
listens, then answers one JSON line per command read from stdin:
``alloc HANDLE``, ``claim HANDLE IP``, ``release HANDLE``, ``status``, ``rmpeer NAME``,
``connect ADDR``, ``forget ADDR``, ``quit``. State lives in DIR/mesh.db and DIR/ring.db.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from fabric.errors import FabricError
from fabric.ipam.ring import parse_init
from fabric.ipam.ring_alloc import RingAllocator
from fabric.ipam.ring_status import ring_status
from fabric.jsonlines import reply, serve_commands
from fabric.mesh.db import MeshDB
from fabric.mesh.names import parse_name
from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import DEFAULT_PORT, MeshNode

__all__ = ["main"]


def _command(node: MeshNode, alloc: RingAllocator, line: str) -> Any:
    parts = line.split()
    if not parts:
        return None
    op, args = parts[0], parts[1:]
    if op == "alloc":
        addr = node.call(alloc.try_allocate, args[0])
        return None if addr is None else str(IPv4Address(addr))
    if op == "claim":
        addr = node.call(alloc.claim, args[0], int(IPv4Address(args[1])))
        return None if addr is None else str(IPv4Address(addr))
    if op == "release":
        addr = node.call(alloc.release, args[0])
        return None if addr is None else str(IPv4Address(addr))
    if op == "status":
        return node.call(lambda: ring_status(node.router, alloc,
                                             encryption=bool(node.password)))
    if op == "rmpeer":
        return node.call(alloc.rmpeer, parse_name(args[0]))
    if op == "connect":
        node.connect(args)
        return True
    if op == "forget":
        node.forget(args)
        return True
    raise ValueError(f"unknown command {op!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fabric.ipam.ring_peer")
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--nickname", default="")
    p.add_argument("--password")
    p.add_argument("--connect", nargs="*", default=[])
    p.add_argument("--init", default="consensus=1")
    p.add_argument("--range", default="10.32.0.0/12")
    p.add_argument("--gossip-interval", type=float, default=1.0)
    p.add_argument("--name", help="peer name for a new state directory (default: random)")
    args = p.parse_args(argv)
    try:
        mode, n, seeds = parse_init(args.init)
        net = IPv4Network(args.range)
        name = parse_name(args.name) if args.name else None
        node = MeshNode(host=args.host, port=args.port, nickname=args.nickname, name=name,
                        password=args.password, db=MeshDB(args.state / "mesh.db"),
                        config=RouterConfig(gossip_interval=args.gossip_interval,
                                            relay_delay=0.02, backoff_base=0.2,
                                            backoff_max=2.0))
        alloc = RingAllocator(node.router, int(net.network_address) + 1,
                              int(net.broadcast_address), mode=mode, quorum=n // 2 + 1,
                              seeds=seeds, db=MeshDB(args.state / "ring.db"), retry=0.5)
        node.start()
        node.call(alloc.start)
        if args.connect:
            node.connect(args.connect)
    except (FabricError, ValueError) as exc:
        reply({"ready": False, "error": str(exc)})
        return 1
    reply({"ready": True, "name": node.name, "address": node.address})
    serve_commands(lambda line: _command(node, alloc, line))
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
