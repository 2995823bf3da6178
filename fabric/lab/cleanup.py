"""Lab state on disk and taking a lab down, also from another process after a crash.

``/run/netfabric-lab/NAME/lab.json`` holds the topology, hosts, pods and the
process records. :func:`teardown` ends the recorded processes (by pid, after
checking start time and command line), deletes namespaces ``nfl-NAME-*`` and
removes the state directory. Nothing is ended or deleted by pattern.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, NotFound
from fabric.fsutil import atomic_write
from fabric.lab.netns import del_ns, list_ns
from fabric.lab.procs import ProcRecord, is_alive, proc_start_time, stop
from fabric.lab.results import DownReport
from fabric.lab.topology import STATE_ROOT, ns_prefix, router_ns, switch_ns

__all__ = ["state_file", "save_state", "load_state", "list_labs", "teardown", "resolve_name"]


def state_file(state_dir: Path) -> Path:
    return state_dir / "lab.json"


def save_state(state_dir: Path, data: dict[str, Any]) -> None:
    """Write lab.json atomically (temp + fsync + rename)."""
    atomic_write(state_file(state_dir), json.dumps(data, indent=1))


def load_state(name: str, root: Path = STATE_ROOT) -> dict[str, Any]:
    path = state_file(root / name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotFound(f"no lab named {name!r} ({path} is missing)",
                       fix="see `fabric lab status` for running labs") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is corrupt: {exc}",
                          fix=f"`fabric lab down --name {name}` still cleans up") from exc


def list_labs(root: Path = STATE_ROOT) -> list[str]:
    """Labs with a state directory or namespaces left."""
    names = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    for ns in list_ns("nfl-"):
        parts = ns.split("-")
        if len(parts) >= 3:
            names.add(parts[1])
    return sorted(names)


def resolve_name(name: str | None, root: Path = STATE_ROOT) -> str:
    """The lab a CLI command means: ``name``, else the only one present."""
    if name:
        return name
    labs = list_labs(root)
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise NotFound("no lab is running", fix="start one with `fabric lab up --backend NAME`")
    raise ConfigError(f"several labs are running ({', '.join(labs)})", fix="pass --name NAME")


def _records(state_dir: Path, data: dict[str, Any]) -> list[ProcRecord]:
    recs = [ProcRecord.from_json(r) for r in data.get("procs", [])]
    known = {r.pid for r in recs}
    marker = f"{state_dir}/"
    # agents write <state>/agent.pid themselves: catches one whose record was not saved
    for pidfile in state_dir.glob("*/agent.pid"):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        start = proc_start_time(pid)
        if pid not in known and start is not None:
            recs.append(ProcRecord(f"agent:{pidfile.parent.name}", pid, start, marker))
    return recs


def _strangers(namespaces: list[str]) -> list[str]:
    """Processes not recorded by the lab that still run in its namespaces (never killed
    here: reported, so nothing leaks silently)."""
    inodes = {}
    for ns in namespaces:
        try:
            inodes[os.stat(f"/run/netns/{ns}").st_ino] = ns
        except OSError:
            continue
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(entry / "ns" / "net").st_ino
            if ino in inodes:
                cmd = (entry / "comm").read_text().strip()
                found.append(f"pid {entry.name} ({cmd}) in {inodes[ino]}")
        except OSError:
            continue
    return found


def _ns_order(name: str, namespaces: list[str]) -> list[str]:
    infra = {switch_ns(name), router_ns(name)}
    pods = [n for n in namespaces if n not in infra and "p" in n.rsplit("-", 1)[-1]]
    hosts = [n for n in namespaces if n not in infra and n not in pods]
    return pods + hosts + [n for n in (router_ns(name), switch_ns(name)) if n in namespaces]


def _remove_etc_netns(prefix: str) -> None:
    """Pods' resolv.conf files under /etc/netns/<namespace>/ (written by the lab)."""
    from fabric.lab.agents import ETC_NETNS, remove_resolv

    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.glob(f"{prefix}*"):
            remove_resolv(d.name)


def teardown(name: str, root: Path = STATE_ROOT) -> DownReport:
    """Remove lab ``name`` completely; safe to call twice and after a crash."""
    if "/" in name or not name or name.startswith("."):
        raise ConfigError(f"lab name {name!r} is invalid")
    state_dir = root / name
    try:
        data = load_state(name, root)
    except NotFound:
        data = {}
    except ConfigError:
        data = {}  # corrupt state: still remove namespaces and pid-file processes
    recs = [r for r in _records(state_dir, data) if is_alive(r)]
    stopped: list[str] = []
    leftover: list[str] = []

    def end(group: list[ProcRecord]) -> None:
        threads = [threading.Thread(target=lambda r=r: stop(r, timeout=8)) for r in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in group:
            (leftover if is_alive(r) else stopped).append(r.role)

    end([r for r in recs if r.role.startswith("agent:")])  # agents first, etcd still up
    end([r for r in recs if not r.role.startswith("agent:")])
    namespaces = _ns_order(name, list_ns(ns_prefix(name)))
    leftover += _strangers(namespaces)
    for ns in namespaces:
        del_ns(ns)
    leftover += list_ns(ns_prefix(name))
    _remove_etc_netns(ns_prefix(name))
    if state_dir.is_dir() and state_dir.parent == root:
        shutil.rmtree(state_dir, ignore_errors=True)
    return DownReport(name, tuple(stopped), tuple(namespaces), tuple(leftover))
