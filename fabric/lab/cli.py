"""`fabric lab up|status|exec|down|list|restart|pause|resume|block|unblock`: the lab from the
command line.

The lab outlives `fabric lab up`; its state under /run/netfabric-lab/NAME lets
`status`, `exec` and `down` find it from any later process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fabric.errors import ConfigError
from fabric.targets import set_lab_targets

__all__ = ["register"]


def lab_agents(name: str, hosts: list[str]) -> list[tuple[str, str]]:
    """(host, agent socket) of a lab's hosts (all of them when ``hosts`` is empty), for
    commands that reach agents with ``--lab`` (fabric.agent.config.lab_targets)."""
    from fabric.lab.lab import Lab

    lab = Lab.attach(name)
    names = hosts or sorted(lab.hosts, key=lambda h: lab.hosts[h].index)
    for h in names:
        if h not in lab.hosts:
            raise ConfigError(f"--host {h!r} is not a host of lab {name}",
                              fix=f"hosts: {', '.join(sorted(lab.hosts))}")
    return [(h, lab.hosts[h].socket) for h in names]


def register(subparsers: Any) -> None:
    set_lab_targets(lab_agents)
    lab = subparsers.add_parser("lab", help="emulated multi-host lab in network namespaces")
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND",
                             parser_class=type(lab))
    sub.required = True

    up = sub.add_parser("up", help="build a lab and leave it running")
    up.add_argument("--backend", action="append", required=True,
                    help="backend (repeat for several networks on every host)")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--pods-per-host", type=int, default=1,
                    help="pods per host on every network (hNpM; hN<network>pM on the others)")
    up.add_argument("--segments", type=int, default=1, help="L2 segments joined by a router")
    up.add_argument("--name", default="lab", help="lab name: 1-8 of [a-z0-9] (default lab)")
    up.add_argument("--network", default="10.244.0.0/16", help="pod network CIDR")
    up.add_argument("--subnet-len", type=int, default=24)
    up.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="config entry of the (first) backend, JSON values allowed")
    up.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                    help="extra `fabric up` argument ({node}, {ip}, {lab}, {peers}: the other "
                    "hosts' underlay IPs, comma-separated, expand per host)")
    etcd = up.add_mutually_exclusive_group()
    etcd.add_argument("--etcd", dest="etcd", action="store_true", default=None,
                      help="start etcd (default: when a backend's IPAM needs a datastore)")
    etcd.add_argument("--no-etcd", dest="etcd", action="store_false", help="do not start etcd")
    up.add_argument("--timeout", type=float, default=90, help="seconds to wait for agents")
    up.add_argument("--converge", type=float, default=20, metavar="SECONDS",
                    help="wait until every pod pings every other (0: do not wait)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="hosts, agents, pods of a lab")
    st.add_argument("--name", help="lab name (default: the only lab)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    ex = sub.add_parser("exec", help="run a command in a host or pod: exec h1p1 -- ping ...")
    ex.add_argument("--name", help="lab name (default: the only lab)")
    ex.add_argument("target", help="host (h1), pod (h1p1), sw or rt")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    ex.set_defaults(func=cmd_exec)

    down = sub.add_parser("down", help="remove a lab (also after a crash)")
    down.add_argument("--name", help="lab name (default: the only lab)")
    down.set_defaults(func=cmd_down)

    ls = sub.add_parser("list", help="labs with state or namespaces on this machine")
    ls.set_defaults(func=cmd_list)

    for verb, text in (("restart", "end a process (etcd, h3 = its agent) and start it again "
                                   "with its recorded command line"),
                       ("stop", "end a process (it stays recorded: `start` starts it again)"),
                       ("start", "start a stopped process with its recorded command line"),
                       ("pause", "SIGSTOP a process (a hung server)"),
                       ("resume", "SIGCONT a paused process")):
        pr = sub.add_parser(verb, help=text)
        pr.add_argument("--name", help="lab name (default: the only lab)")
        pr.add_argument("process", help="etcd, a host (h3: its agent) or another recorded role")
        if verb in ("restart", "stop"):
            pr.add_argument("--kill9", action="store_true", help="SIGKILL instead of SIGTERM")
        pr.set_defaults(func=cmd_process, verb=verb)

    for verb, text in (("block", "drop underlay traffic between two hosts (both directions)"),
                       ("unblock", "remove exactly the block given with the same arguments")):
        bl = sub.add_parser(verb, help=text)
        bl.add_argument("--name", help="lab name (default: the only lab)")
        bl.add_argument("a", help="host (h1), sw (etcd's address) or rt")
        bl.add_argument("b", help="the other host")
        bl.add_argument("--proto", choices=("tcp", "udp", "icmp"), help="only this protocol")
        bl.add_argument("--port", type=int, help="only this port (source or destination)")
        bl.set_defaults(func=cmd_block, verb=verb)


def cmd_up(args: argparse.Namespace) -> int:
    from fabric.agent.config import parse_key_values
    from fabric.lab.lab import Lab
    from fabric.lab.topology import Topology

    topo = Topology(name=args.name, backends=tuple(args.backend), hosts=args.hosts,
                    pods_per_host=args.pods_per_host, segments=args.segments,
                    cidr=args.network, subnet_len=args.subnet_len,
                    agent_args=tuple(args.agent_arg), etcd=args.etcd,
                    backend_opts={args.backend[0]: parse_key_values(args.backend_opt)})
    # progress on stderr: with --json, stdout carries only the JSON document
    print(f"lab {topo.name}: building {topo.hosts} host(s), backend(s) "
          f"{', '.join(topo.backends)}: underlay, etcd, agents, pods ...",
          file=sys.stderr, flush=True)
    lab = Lab(topo, ready_timeout=args.timeout).up()
    converged = None
    if args.converge > 0 and len(lab.pods) > 1:
        print(f"lab {topo.name}: {len(lab.pods)} pods up; waiting up to {args.converge:g}s "
              "for all to reach each other ...", file=sys.stderr, flush=True)
        converged = True
        for net, pods in lab.pods_by_network().items():  # each network within itself
            if len(pods) < 2:
                continue
            res = lab.converge(timeout=args.converge, pods=sorted(pods))
            converged = converged and res.ok
            if not res.ok:
                print(f"warning: pods of network {net} do not all reach each other after "
                      f"{args.converge:g}s: {res.summary()}", file=sys.stderr)
    if args.json:
        print(json.dumps({"name": topo.name, "hosts": [h.to_json() for h in lab.hosts.values()],
                          "pods": [p.to_json() for p in lab.pods.values()],
                          "etcd": lab.etcd, "converged": converged}, indent=2))
        return 0
    print(f"lab {topo.name}: {len(lab.hosts)} hosts, {len(lab.pods)} pods, "
          f"backend(s) {', '.join(topo.backends)}")
    for h in lab.hosts.values():
        pods = ", ".join(f"{p.name}={p.ip}" for p in lab.pods.values() if p.host == h.name)
        print(f"  {h.name:4} {h.ns:18} {str(h.ip):14} {pods}")
    print(f"take it down with: fabric lab down --name {topo.name}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fabric.lab.cleanup import resolve_name
    from fabric.lab.lab import Lab

    lab = Lab.attach(resolve_name(args.name))
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"lab {st['name']}  etcd {st['etcd'] or '-'}")
    for name, h in st["hosts"].items():
        nets = (h.get("agent") or {}).get("networks") or []
        state = ", ".join(f"{n['name']}:{n.get('backend')} "
                          f"{'ready' if n.get('ready') else 'NOT READY'} "
                          f"{' '.join(n.get('chunks') or [])}" for n in nets)
        alive = "up" if h["alive"] else "DOWN"
        store = (h.get("agent") or {}).get("datastore") or {}
        if store.get("reachable") is False:
            state += f"  datastore UNREACHABLE since {store.get('since')}"
        print(f"  {name:4} {h['ip']:14} agent {alive} pid {h['pid']}  "
              f"{state or h.get('error', '')}")
    networks = st.get("networks") or {"": st["pods"]}
    for net, pods in networks.items():  # pods per network: several backends, one lab
        if len(networks) > 1:
            print(f"  network {net}: {len(pods)} pod(s)")
        for name, addr in pods.items():
            print(f"  {'  ' if len(networks) > 1 else ''}{name:6} {addr}")
    for role, p in st.get("procs", {}).items():
        if not role.startswith("agent:") and (p["paused"] or not p["alive"]):
            print(f"  {role}: {'PAUSED' if p['paused'] else 'DOWN'} (pid {p['pid']})")
    for b in st.get("blocks", []):
        what = " ".join(x for x in (b["proto"] or "", f"port {b['port']}" if b["port"] else "")
                        if x)
        print(f"  blocked: {b['a']} <-/-> {b['b']}" + (f" ({what})" if what else ""))
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from fabric.lab.cleanup import resolve_name
    from fabric.lab.lab import Lab

    lab = Lab.attach(resolve_name(args.name))
    kill9 = getattr(args, "kill9", False)
    if args.verb == "restart":
        rec = lab.restart(args.process, kill9=kill9)
        print(f"{rec.role} restarted: pid {rec.pid}")
    elif args.verb == "stop":
        ended = lab.stop_process(args.process, kill9=kill9)
        print(f"{lab.role(args.process)} {'stopped' if ended else 'was not running'}")
    elif args.verb == "start":
        rec = lab.start_process(args.process)
        print(f"{rec.role} started: pid {rec.pid}")
    else:
        rec = getattr(lab, args.verb)(args.process)
        print(f"{rec.role} (pid {rec.pid}) {args.verb}d")
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    from fabric.lab.cleanup import resolve_name
    from fabric.lab.lab import Lab

    lab = Lab.attach(resolve_name(args.name))
    blk = getattr(lab, args.verb)(args.a, args.b, proto=args.proto, port=args.port)
    print(f"{args.verb}ed: {blk.describe()}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from fabric.errors import ConfigError
    from fabric.lab.cleanup import resolve_name
    from fabric.lab.lab import Lab

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("no command given", fix="fabric lab exec h1p1 -- ping -c1 10.244.1.2")
    ns, _ = Lab.attach(resolve_name(args.name)).target(args.target)
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])
    return 127  # not reached


def cmd_down(args: argparse.Namespace) -> int:
    from fabric.lab.cleanup import resolve_name, teardown

    rep = teardown(resolve_name(args.name))
    print(f"lab {rep.name}: stopped {len(rep.stopped)} process(es), "
          f"deleted {len(rep.namespaces)} namespace(s)")
    if rep.leftover:
        print(f"left behind: {', '.join(rep.leftover)}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fabric.lab.cleanup import list_labs

    for name in list_labs():
        print(name)
    return 0
