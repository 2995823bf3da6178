"""A standalone mesh peer with weaveDNS (for tests and experiments).

    python -m fabric.weave.dns_peer --state DIR [--host 127.0.0.1] [--port 6783]
        [--dns ADDR:PORT] [--upstream IP[:PORT] ...] [--connect HOST:PORT ...]
        [--domain weave.local.] [--gossip-interval 1] [--freebind]

Prints one JSON line ``{"ready": true, "name": ..., "address": ..., "dns": ...}`` once it
listens, then answers one JSON line per command read from stdin: ``add HOST IP [CID]``,
``remove HOST``, ``remove-container CID``, ``rmpeer NAME``, ``lookup NAME``, ``entries``,
``status``, ``connect ADDR``, ``forget ADDR``, ``quit``. The peer name and connection
targets live in DIR/mesh.db, the DNS entries in DIR/dns.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fabric.errors import FabricError
from fabric.jsonlines import reply, serve_commands
from fabric.mesh.db import MeshDB
from fabric.mesh.names import fmt_name
from fabric.mesh.router import RouterConfig
from fabric.mesh.tcp import DEFAULT_PORT, MeshNode
from fabric.weave.dns import WeaveDNS
from fabric.weave.dns_conf import parse_upstream

__all__ = ["main"]


def _command(node: MeshNode, wd: WeaveDNS, line: str) -> Any:
    op, *args = line.split()
    table = {
        "add": lambda: wd.add(args[0], args[1], args[2] if len(args) > 2 else "") is not None,
        "remove": lambda: wd.remove(hostname=args[0]),
        "remove-container": lambda: wd.remove_container(args[0]),
        "rmpeer": lambda: wd.remove_peer(args[0]),
        "lookup": lambda: wd.lookup(args[0]),
        "entries": wd.entries,
        "status": wd.status,
        "connect": lambda: node.connect(args),
        "forget": lambda: node.forget(args),
    }
    if op not in table:
        raise ValueError(f"unknown command {op!r}")
    return table[op]()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fabric.weave.dns_peer")
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--nickname", default="")
    p.add_argument("--dns", default="", help="ADDR:PORT for the DNS server (none if empty)")
    p.add_argument("--upstream", nargs="*", default=None)
    p.add_argument("--freebind", action="store_true", help="serve before the address exists")
    p.add_argument("--domain", default="weave.local.")
    p.add_argument("--connect", nargs="*", default=[])
    p.add_argument("--gossip-interval", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        args.state.mkdir(parents=True, exist_ok=True)
        node = MeshNode(host=args.host, port=args.port, nickname=args.nickname,
                        db=MeshDB(args.state / "mesh.db"),
                        config=RouterConfig(gossip_interval=args.gossip_interval,
                                            relay_delay=0.02, backoff_base=0.2,
                                            backoff_max=2.0))
        wd = WeaveDNS(node, args.state, domain=args.domain)
        wd.start()  # before the node: the first neighbours get our names with the handshake
        node.start()
        if args.dns:
            host, port = parse_upstream(args.dns)
            wd.serve(host, port, upstream=args.upstream, freebind=args.freebind)
        if args.connect:
            node.connect(args.connect)
    except (FabricError, ValueError) as exc:
        reply({"ready": False, "error": str(exc)})
        return 1
    dns_addr = wd.server.status()["address"] if wd.server is not None else ""
    reply({"ready": True, "name": fmt_name(node.name), "address": node.address,
           "dns": dns_addr})
    serve_commands(lambda line: _command(node, wd, line))
    wd.stop()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
