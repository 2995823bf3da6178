"""The `fabric` command: agent (up/down/status), plugins, lab, bench, policy."""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, FabricError
from fabric.targets import DEFAULT_STATE_DIR, add_agent_options, agent_socket

__all__ = ["main", "build_parser"]

# Optional command groups: (module, function) adding subcommands; missing ones are skipped.
_EXTENSIONS = [
    ("fabric.lab.cli", "register"),
    ("fabric.weave.cli", "register"),
    ("fabric.policy.cli", "register"),
    ("fabric.cni.install", "register"),
]
_BENCH_EXTENSIONS = ["fabric.bench.throughput", "fabric.bench.mesh", "fabric.bench.dataplane",
                     "fabric.bench.policy", "fabric.bench.cni", "fabric.bench.matrix",
                     "fabric.bench.report"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, the usage, exit 2 — no traceback
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fabric", description="netfabric: multi-backend container network fabric")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "text", "journal", "json"],
                   help="auto: journal priorities under journald, else text")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    up = sub.add_parser("up", help="run the node agent in the foreground")
    up.add_argument("--backend", help="backend of the network (e.g. vxlan, hostgw)")
    up.add_argument("--network", help="network CIDR, e.g. 10.244.0.0/16")
    up.add_argument("--name", help="network name (default: the backend's name)")
    up.add_argument("--subnet-len", type=int, default=24)
    up.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="backend config entry (repeatable), JSON values allowed")
    up.add_argument("--ipam", default="", help="IPAM plugin (default: the backend's)")
    up.add_argument("--policy", default="none", help="policy engine (none, nftables)")
    up.add_argument("--etcd-prefix", default="", help="etcd key prefix (default /netfabric/NAME)")
    up.add_argument("--ipmasq", "--ip-masq", action="store_true",
                    help="masquerade traffic leaving the network")
    up.add_argument("--etcd", "--etcd-endpoints", dest="etcd",
                    help="etcd URL(s), comma-separated: failover in order")
    up.add_argument("--etcd-cafile", default="", help="CA certificate verifying etcd (PEM)")
    up.add_argument("--etcd-certfile", default="", help="client certificate for etcd (PEM)")
    up.add_argument("--etcd-keyfile", default="", help="key of --etcd-certfile (PEM)")
    up.add_argument("--metrics-addr", default="", metavar="HOST:PORT",
                    help="serve Prometheus /metrics there")
    up.add_argument("--subnet-file", nargs="?", const="/run/flannel/subnet.env", default="",
                    help="also write flannel's subnet.env there (default path: flannel's)")
    up.add_argument("--net-conf", type=Path, metavar="FILE",
                    help="flannel net-conf.json: the network (instead of --backend/--network)")
    up.add_argument("--iface", help="underlay interface (default: that of the default route)")
    up.add_argument("--public-ip", help="address published to peers (default: --iface's)")
    up.add_argument("--node-name", help="node name (default: hostname)")
    up.add_argument("--peers", help="weave backends: peers to connect to, HOST[:PORT],... "
                                    "(backend option Peers)")
    up.add_argument("--ipalloc-init", metavar="MODE",
                    help="ring IPAM start-up: consensus[=N] | seed=NAME,... | observer "
                         "(default consensus=N, N = --peers + 1, as weave)")
    up.add_argument("--ipalloc-range", metavar="CIDR",
                    help="ring IPAM: the part of --network handed out (default all of it)")
    up.add_argument("--password-file", help="weave backends: file holding the mesh password, "
                                            "not world-readable (backend option PasswordFile)")
    up.add_argument("--config", type=Path, help="YAML/JSON agent config file (several networks)")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the agent and remove everything it created")
    add_agent_options(down)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="show node, networks, leases and peers")
    add_agent_options(st)
    st.add_argument("--json", action="store_true", help="print the raw JSON status")
    st.set_defaults(func=cmd_status)

    pl = sub.add_parser("plugins", help="list installed backends, IPAMs and policy engines")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    bench = sub.add_parser("bench", help="benchmarks (JSON on stdout)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bench_sub.required = True
    for mod in _BENCH_EXTENSIONS:
        _extend(mod, "register", bench_sub)
    for mod, fn in _EXTENSIONS:
        _extend(mod, fn, sub)
    return p


def _extend(module: str, fn: str, sub: Any) -> None:
    getattr(importlib.import_module(module), fn)(sub)  # all part of the core distribution


def agent_config_from_args(args: argparse.Namespace):
    from fabric.agent.config import AgentConfig, load_config_file, parse_key_values

    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    data.setdefault("networks", [])
    if (args.peers is not None or args.password_file or args.ipalloc_init
            or args.ipalloc_range) and not args.backend:
        raise ConfigError("--peers, --password-file and --ipalloc-* apply to the --backend "
                          "network", fix="in a --config file, set backendConfig Peers / "
                                         "PasswordFile and ipamConfig init / range")
    if args.net_conf:
        from fabric.agent.flannel import read_net_conf

        if args.backend or args.network:
            raise ConfigError("--net-conf already gives the network and backend",
                              fix="drop --backend/--network, or drop --net-conf")
        net_conf = read_net_conf(args.net_conf)
        net_conf.update(policy=args.policy, ipMasq=args.ipmasq, etcdPrefix=args.etcd_prefix)
        if args.name:
            net_conf["name"] = args.name
        data["networks"] = [*data["networks"], net_conf]
    if args.backend or args.network:
        network = args.network or _default_network(args.backend)
        if not (args.backend and network):
            raise ConfigError("--backend and --network go together",
                              fix="e.g. fabric up --backend vxlan --network 10.244.0.0/16")
        backend_cfg = parse_key_values(args.backend_opt)
        if args.peers is not None:
            backend_cfg["Peers"] = [p for p in args.peers.split(",") if p.strip()]
        if args.password_file:
            backend_cfg["PasswordFile"] = args.password_file
        ipam_cfg: dict[str, Any] = {}
        if args.ipalloc_init:
            ipam_cfg["init"] = args.ipalloc_init
        if args.ipalloc_range:
            ipam_cfg["range"] = args.ipalloc_range
        net: dict[str, Any] = {"backend": args.backend, "network": network,
                               "subnetLen": args.subnet_len,
                               "backendConfig": backend_cfg, "ipamConfig": ipam_cfg,
                               "ipam": args.ipam, "policy": args.policy,
                               "etcdPrefix": args.etcd_prefix, "ipMasq": args.ipmasq}
        if args.name:
            net["name"] = args.name
        data["networks"] = [*data["networks"], net]
    node = dict(data.get("node") or {})
    for key, value in (("name", args.node_name), ("iface", args.iface),
                       ("publicIP", args.public_ip)):
        if value:
            node[key] = value
    data["node"] = node
    if args.etcd:
        data["etcd"] = args.etcd
    for key, value in (("etcdCAFile", args.etcd_cafile), ("etcdCertFile", args.etcd_certfile),
                       ("etcdKeyFile", args.etcd_keyfile), ("metricsAddr", args.metrics_addr),
                       ("subnetFile", args.subnet_file)):
        if value:
            data[key] = value
    if args.state_dir != DEFAULT_STATE_DIR or "stateDir" not in data:
        data["stateDir"] = str(args.state_dir)
    return AgentConfig.from_json(data)


def _default_network(backend: str | None) -> str:
    """The backend's own default CIDR (weave: 10.32.0.0/12), or "" when it has none."""
    if not backend:
        return ""
    from fabric.plugins import load_plugin

    return getattr(load_plugin("backend", backend), "default_network", "")


def cmd_up(args: argparse.Namespace) -> int:
    from fabric.agent.daemon import Agent

    config = agent_config_from_args(args)
    return Agent(config).run()


def agent_request(args: argparse.Namespace, request: dict[str, Any],
                  timeout: float = 30) -> Any:
    from fabric.control import call

    return call(agent_socket(args), request, timeout=timeout)


def cmd_down(args: argparse.Namespace) -> int:
    from fabric.control import AgentUnreachable

    try:
        agent_request(args, {"op": "stop", "teardown": True})
    except AgentUnreachable:
        from fabric.agent.daemon import offline_teardown

        done = offline_teardown(args.state_dir)
        print(f"agent not running; removed network(s): {', '.join(done) or 'none'}")
        return 0
    _wait_gone(agent_socket(args))
    print("agent stopped and its networks removed")
    return 0


def _wait_gone(path: Path, timeout: float = 30) -> None:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
        except OSError:
            return
        finally:
            s.close()
        time.sleep(0.1)


def cmd_status(args: argparse.Namespace) -> int:
    status = agent_request(args, {"op": "status"})
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    from fabric.agent.render import render_status

    print(render_status(status))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from fabric.plugins import list_plugins

    plugins = list_plugins()
    if args.json:
        import attrs

        print(json.dumps([attrs.asdict(p) for p in plugins], indent=2))
        return 0
    from fabric.table import format_table

    columns = ["kind", "name", "distribution", "version", "target"]
    print(format_table([{c: getattr(p, c) for c in columns} for p in plugins], columns,
                       headers=[c.upper() for c in columns]))
    return 0


def _version() -> str:
    from fabric import __version__

    return __version__


_TOP_OPTIONS_WITH_VALUE = ("--log-level",)


def _normalise_argv(argv: list[str]) -> list[str]:
    """`fabric bench --backend X` is short for `fabric bench throughput --backend X`.

    Only the command word counts: `bench` as an option's value (`lab up --name bench`)
    is left alone.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # options before the command
        i += 2 if argv[i] in _TOP_OPTIONS_WITH_VALUE else 1
    if i < len(argv) and argv[i] == "bench":
        rest = argv[i + 1 :]
        if rest and rest[0].startswith("--") and rest[0] != "--help":
            return [*argv[: i + 1], "throughput", *rest]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(list(sys.argv[1:] if argv is None else argv)))
    from fabric.agent.logs import configure

    configure(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except FabricError as exc:
        print(f"fabric: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
