"""BIRD 2 for the lab: a route reflector or an external router on the underlay.

:func:`render_bird_config` writes a BIRD 2 configuration: one dynamic BGP
protocol accepting every node in ``neighbor_range`` (nodes connect, BIRD is
passive, so hosts added later need no reconfiguration), optionally as their
route reflector, optionally exporting learned pod routes into its own kernel
table (router mode: it then routes pod traffic between segments). Only prefixes
inside ``pod_cidr`` are accepted. :func:`start_bird` runs ``bird -f`` in a
namespace and returns a :class:`BirdProcess` (``birdc`` queries, stop by pid);
:func:`bird_hook` does the same as a :class:`fabric.lab.Lab` hook so the lab
records and ends the process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs

from fabric.errors import ConfigError, FabricError
from fabric.procutil import stop_process

__all__ = [
    "BirdConfig",
    "BirdRoute",
    "BirdProcess",
    "BirdError",
    "bird_available",
    "render_bird_config",
    "start_bird",
    "bird_hook",
    "parse_routes",
    "parse_protocols",
]


class BirdError(FabricError):
    """BIRD could not be started or queried."""


def bird_available() -> bool:
    return bool(shutil.which("bird") and shutil.which("birdc"))


@attrs.frozen
class BirdConfig:
    router_id: IPv4Address = attrs.field(converter=IPv4Address)
    pod_cidr: IPv4Network = attrs.field(converter=IPv4Network)
    asn: int = 64512
    neighbor_range: IPv4Network = attrs.field(default=IPv4Network("198.18.0.0/15"),
                                              converter=IPv4Network)
    route_reflector: bool = True
    cluster_id: IPv4Address | None = None  # default: the router id
    kernel_export: bool = False  # router mode: install pod routes in this namespace
    hold_time: int = 30
    graceful_restart: bool = True

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.asn <= 4294967295:
            raise ConfigError(f"BIRD: AS number {self.asn} is out of range")
        if self.hold_time != 0 and not 3 <= self.hold_time <= 65535:
            raise ConfigError(f"BIRD: hold time {self.hold_time} is invalid")


def render_bird_config(cfg: BirdConfig, log_path: Path | str | None = None) -> str:
    """BIRD 2 configuration text for ``cfg``."""
    cluster = cfg.cluster_id or cfg.router_id
    lines = [f"router id {cfg.router_id};"]
    if log_path:
        lines.append(f'log "{log_path}" all;')
    lines += [
        "protocol device { scan time 5; }",
        # connected and kernel routes only resolve BGP next hops (never exported to peers)
        "protocol direct { ipv4; }",
        f"filter pods {{ if net ~ [ {cfg.pod_cidr}+ ] then accept; reject; }}",
        "protocol kernel {",
        "    learn;",
        "    ipv4 { import where net !~ [ " + f"{cfg.pod_cidr}+ ]; export "
        + ("filter pods" if cfg.kernel_export else "none") + "; };",
        "    merge paths on;",
        "}",
        "protocol bgp nodes {",
        f"    local as {cfg.asn};",
        f"    neighbor range {cfg.neighbor_range} as {cfg.asn};",
        "    dynamic name \"node\";",
        f"    hold time {cfg.hold_time};",
        "    connect retry time 2;",
        "    error wait time 1, 10;",
    ]
    if cfg.route_reflector:
        lines += ["    rr client;", f"    rr cluster id {cluster};"]
    if cfg.graceful_restart:
        lines.append("    graceful restart on;")
    lines += [
        "    ipv4 {",
        "        import filter pods;",
        "        export filter pods;",
        "        next hop keep;",
        "        gateway recursive;",
        "    };",
        "}",
    ]
    return "\n".join(lines) + "\n"


@attrs.frozen
class BirdRoute:
    prefix: IPv4Network
    via: IPv4Address | None  # the resolved gateway, or the BGP source when unresolved
    protocol: str
    primary: bool
    kind: str = "unicast"  # unicast | unreachable | blackhole | prohibit
    source: IPv4Address | None = None  # the BGP neighbour it came from


_ROUTE = re.compile(r"^(?P<prefix>\d+\.\d+\.\d+\.\d+/\d+)?\s+(?P<kind>unicast|unreachable|"
                    r"blackhole|prohibit)\s+\[(?P<proto>\S+)[^\]]*?(?:from (?P<src>[\d.]+))?\]"
                    r"\s*(?P<star>\*)?")
_VIA = re.compile(r"^\s+via\s+(?P<via>\d+\.\d+\.\d+\.\d+)")


def parse_routes(text: str) -> list[BirdRoute]:
    """Routes from ``birdc show route`` output."""
    out: list[BirdRoute] = []
    prefix: IPv4Network | None = None
    pending: dict[str, Any] | None = None

    def flush() -> None:
        if pending is not None and prefix is not None:
            src = pending["src"]
            out.append(BirdRoute(prefix, pending.get("via", src), pending["proto"],
                                 pending["star"], pending["kind"], src))

    for line in text.splitlines():
        m = _ROUTE.match(line)
        if m:
            flush()
            if m.group("prefix"):
                prefix = IPv4Network(m.group("prefix"))
            src = IPv4Address(m.group("src")) if m.group("src") else None
            pending = {"proto": m.group("proto"), "star": bool(m.group("star")),
                       "kind": m.group("kind"), "src": src}
            continue
        v = _VIA.match(line)
        if v and pending is not None:
            pending["via"] = IPv4Address(v.group("via"))
    flush()
    return out


def parse_protocols(text: str) -> list[dict[str, str]]:
    """``birdc show protocols`` rows: name, proto, table, state, since, info."""
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 4 and parts[1] in ("BGP", "Kernel", "Device", "Direct", "Static"):
            rows.append({"name": parts[0], "proto": parts[1], "table": parts[2],
                         "state": parts[3], "since": parts[4] if len(parts) > 4 else "",
                         "info": parts[5].strip() if len(parts) > 5 else ""})
    return rows


@attrs.define
class BirdProcess:
    """A running BIRD: query it with :meth:`birdc`; :meth:`stop` ends it by pid."""

    pid: int
    netns: str | None
    socket: Path
    config: Path
    stop_fn: Callable[[], None] | None = None

    def birdc(self, *command: str, timeout: float = 10) -> str:
        try:
            res = subprocess.run(["birdc", "-s", str(self.socket), *command],
                                 capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BirdError(f"birdc {' '.join(command)} failed: {exc}") from exc
        if res.returncode != 0:
            raise BirdError(f"birdc {' '.join(command)}: {res.stderr.strip() or res.stdout}")
        return res.stdout

    def routes(self) -> list[BirdRoute]:
        return parse_routes(self.birdc("show", "route"))

    def protocols(self) -> list[dict[str, str]]:
        return parse_protocols(self.birdc("show", "protocols"))

    def established(self) -> list[dict[str, str]]:
        return [p for p in self.protocols() if p["proto"] == "BGP" and "Established" in p["info"]]

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.stop_fn is not None:
            self.stop_fn()
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return


def _argv(config: Path, sock: Path) -> list[str]:
    return ["bird", "-f", "-c", str(config), "-s", str(sock)]


def _prepare(config: BirdConfig | str, run_dir: Path) -> tuple[Path, Path]:
    if not bird_available():
        raise BirdError("BIRD 2 is not installed", fix="apt-get install bird2")
    run_dir.mkdir(parents=True, exist_ok=True)
    conf, sock = run_dir / "bird.conf", run_dir / "bird.ctl"
    text = config if isinstance(config, str) else render_bird_config(config, run_dir / "bird.log")
    conf.write_text(text)
    check = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise BirdError(f"BIRD rejects {conf}: {check.stderr.strip() or check.stdout.strip()}")
    return conf, sock


def _wait_socket(proc_alive: Callable[[], bool], sock: Path, log: Path) -> None:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if sock.exists():
            return
        if not proc_alive():
            break
        time.sleep(0.05)
    tail = log.read_text()[-600:] if log.exists() else ""
    raise BirdError(f"BIRD did not start; see {log}: {tail}")


def start_bird(netns: str | None, config: BirdConfig | str, run_dir: Path) -> BirdProcess:
    """Run ``bird -f`` inside ``netns`` (None: here) with ``config``; files in ``run_dir``."""
    conf, sock = _prepare(config, run_dir)
    log = run_dir / "bird.out"
    argv = (["ip", "netns", "exec", netns] if netns else []) + _argv(conf, sock)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        stop_process(proc, timeout=10)

    try:
        _wait_socket(lambda: proc.poll() is None, sock, log)
    except BirdError:
        stop()
        raise
    return BirdProcess(proc.pid, netns, sock, conf, stop)


def bird_hook(config: BirdConfig, *, where: str = "sw",
              out: dict[str, BirdProcess] | None = None) -> Callable[[Any], None]:
    """A :class:`fabric.lab.Lab` hook starting BIRD in the lab's switch (``sw``, 198.18.0.2)
    or router (``rt``) namespace; the lab records the pid and ends it on ``down``.
    The running :class:`BirdProcess` is stored in ``out["bird"]`` if given."""

    def hook(lab: Any) -> None:
        ns = lab.switch_ns if where == "sw" else f"{lab.topo.prefix}rt"
        run_dir = Path(lab.state_dir) / "bird"
        conf, sock = _prepare(config, run_dir)
        rec = lab.spawn("bird", ns, _argv(conf, sock))
        proc = BirdProcess(rec.pid, ns, sock, conf)
        _wait_socket(proc.alive, sock, run_dir / "bird.log")
        if out is not None:
            out["bird"] = proc

    return hook
