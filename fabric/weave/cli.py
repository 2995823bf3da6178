"""``fabric weave ...`` and ``fabric dns ...``: weave's operations, through the running agent.

    fabric weave status [connections|peers|dns] [--json]
    fabric weave connect HOST[:PORT]...      fabric weave forget HOST[:PORT]...
    fabric weave rmpeer PEER-NAME            (reclaims a dead peer's addresses and DNS names)
    fabric dns add NAME IP [--container ID]  fabric dns remove NAME [IP]   fabric dns list
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fabric.errors import ConfigError
from fabric.targets import add_agent_options, agent_socket

__all__ = ["register", "render_weave", "render_connections"]



def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", default="", help="weave network name (default: the only one)")
    add_agent_options(p)


def register(sub: Any) -> None:
    weave = sub.add_parser("weave", help="weave backends: status, connect, forget, rmpeer")
    wsub = weave.add_subparsers(dest="weave_cmd", metavar="CMD", parser_class=type(weave))
    wsub.required = True
    st = wsub.add_parser("status", help="mesh, connections and data-path modes, IPAM, DNS")
    st.add_argument("what", nargs="?", default="", choices=["", "connections", "peers", "dns"])
    st.add_argument("--json", action="store_true")
    _common(st)
    st.set_defaults(func=cmd_status)
    for name, helptext in (("connect", "add peers to connect to"),
                           ("forget", "stop connecting to peers")):
        p = wsub.add_parser(name, help=helptext)
        p.add_argument("hosts", nargs="+", metavar="HOST[:PORT]")
        _common(p)
        p.set_defaults(func=cmd_op, op=name)
    rm = wsub.add_parser("rmpeer", help="reclaim a dead peer's address ranges and DNS names")
    rm.add_argument("peer", metavar="PEER-NAME", help="e.g. 02:11:22:33:44:55")
    _common(rm)
    rm.set_defaults(func=cmd_op, op="rmpeer")

    dns = sub.add_parser("dns", help="weaveDNS records: add, remove, list")
    dsub = dns.add_subparsers(dest="dns_cmd", metavar="CMD", parser_class=type(dns))
    dsub.required = True
    add = dsub.add_parser("add", help="register NAME -> IP")
    add.add_argument("name")
    add.add_argument("ip")
    add.add_argument("--container", default="", help="owner id (default: a manual record)")
    _common(add)
    add.set_defaults(func=cmd_op, op="dns.add")
    rem = dsub.add_parser("remove", help="remove NAME (all its addresses, or only IP)")
    rem.add_argument("name")
    rem.add_argument("ip", nargs="?", default="")
    _common(rem)
    rem.set_defaults(func=cmd_op, op="dns.remove")
    ls = dsub.add_parser("list", help="every live record")
    ls.add_argument("--json", action="store_true")
    _common(ls)
    ls.set_defaults(func=cmd_op, op="dns.list")


def _call(args: argparse.Namespace, request: dict[str, Any]) -> Any:
    from fabric.control import call

    sock = agent_socket(args)
    return call(sock, request, timeout=30)


def _weave_network(args: argparse.Namespace) -> dict[str, Any]:
    status = _call(args, {"op": "status"})
    nets = [n for n in status.get("networks", [])
            if (n.get("backend_status") or {}).get("router") == "weave"]
    if args.network:
        nets = [n for n in nets if n.get("name") == args.network]
    if len(nets) != 1:
        names = ", ".join(n.get("name", "?") for n in nets) or "none"
        raise ConfigError(f"{'no' if not nets else 'several'} weave network(s) match "
                          f"(weave networks: {names})", field="network",
                          fix="name one with --network")
    return nets[0]


def cmd_status(args: argparse.Namespace) -> int:
    net = _weave_network(args)
    if args.json:
        print(json.dumps(net, indent=2))
        return 0
    if args.what == "connections":
        print(render_connections(net["backend_status"]))
    elif args.what == "peers":
        print(render_peers(net["backend_status"]))
    elif args.what == "dns":
        print(json.dumps((net["backend_status"] or {}).get("dns"), indent=2))
    else:
        print(render_weave(net))
    return 0


def cmd_op(args: argparse.Namespace) -> int:
    net = _weave_network(args)
    op_args: dict[str, Any] = {}
    for key in ("hosts", "peer", "name", "ip", "container"):
        if hasattr(args, key):
            op_args[key] = getattr(args, key)
    result = _call(args, {"op": f"backend.{args.op}", "network": net["name"], "args": op_args})
    if args.op == "dns.list" and not getattr(args, "json", False):
        for rec in result or []:
            print(f"{rec.get('hostname', ''):<32} {rec.get('ip', ''):<16} "
                  f"{rec.get('container_id', '')[:12]:<12} {rec.get('origin', '')}")
        return 0
    print(json.dumps(result, indent=2))
    return 0


def render_connections(backend: dict[str, Any]) -> str:
    """One line per connection, as ``weave status connections``."""
    mesh = backend.get("mesh") or {}
    lines = []
    for c in mesh.get("connections", []):
        arrow = "->" if c.get("outbound") else "<-"
        who = f"{c['peer']}({c.get('nickname', '')})" if c.get("peer") else ""
        mode = c.get("mode", "")
        extra = c.get("error", "")
        lines.append(f"{arrow} {c.get('address', ''):<22} {c.get('state', ''):<12} "
                     f"{mode:<16} {who} {extra}".rstrip())
    return "\n".join(lines) or "(no connections)"


def render_peers(backend: dict[str, Any]) -> str:
    mesh = backend.get("mesh") or {}
    lines = []
    for p in mesh.get("peers", []):
        lines.append(f"{p['name']}({p.get('nickname', '')})"
                     f"{'' if p.get('reachable', True) else ' unreachable'}")
        for c in p.get("connections", []):
            lines.append(f"   {'->' if c.get('outbound') else '<-'} {c.get('address', '')} "
                         f"{c.get('peer', '')}")
    return "\n".join(lines)


def render_weave(net: dict[str, Any]) -> str:
    b = net.get("backend_status") or {}
    mesh = b.get("mesh") or {}
    overlay = b.get("overlay") or {}
    conns = mesh.get("connections", [])
    est = sum(1 for c in conns if c.get("state") == "established")
    rows = [
        ("Network", f"{net.get('name')} ({net.get('backend')}, {net.get('network')})"),
        ("Name", f"{mesh.get('name')} ({mesh.get('nickname')})"),
        ("Encryption", overlay.get("encryption_reason")
         or ("enabled" if mesh.get("encryption") else "disabled")),
        ("Peers", str(len(mesh.get("peers", [])))),
        ("Connections", f"{len(conns)} ({est} established, "
                        f"{sum(1 for c in conns if c.get('state') == 'failed')} failed)"),
        ("TargetPeers", ", ".join(mesh.get("targets", [])) or "-"),
        ("Bridge", f"{b.get('bridge')} {b.get('expose') or ''}".strip()),
        ("MTU", f"{b.get('mtu')} ({b.get('mtu_reason', '')})"),
    ]
    if b.get("dns"):
        d = b["dns"]
        rows.append(("DNS", f"{d.get('domain', '')} on {d.get('address', '')}, "
                            f"{d.get('entries', 0)} entries"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.rjust(width)}: {v}" for k, v in rows)
    return text + "\n\n" + render_connections(b)
