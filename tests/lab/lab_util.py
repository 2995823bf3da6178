"""Lab-tier helpers: root check, the namespaces of a lab, which backends can run a full lab."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any

import pytest

from fabric.lab.topology import ns_prefix

if TYPE_CHECKING:
    from fabric.lab import Lab

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def lab_namespaces(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines()
                  if line.strip() and line.startswith(ns_prefix(name)))


def all_namespaces(lab: str) -> set[str]:
    """`ip netns list`, minus what other helpers' tests and other labs create meanwhile
    (prefixes nf*-; other labs nfl-OTHER-): what this lab could have leaked or broken."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {n for n in names if n.startswith(ns_prefix(lab)) or not n.startswith("nf")}


def stack_missing(backend: str, etcd: bool = True) -> str | None:
    """Why a full lab of ``backend`` cannot run here (None when it can)."""
    from fabric.errors import FabricError
    from fabric.plugins import load_plugin

    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "ping", "iperf3") + (("etcd",) if etcd else ()):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        cls = load_plugin("backend", backend)
        load_plugin("ipam", cls.default_ipam)
        import fabric.cni.main  # noqa: F401
        import fabric.store  # noqa: F401
    except (FabricError, ImportError) as exc:
        return f"netfabric stack for {backend} incomplete: {exc}"
    return None


def installed_backends() -> list[str]:
    """Installed backend entry points except `fake`; aliases of one class run once."""
    from fabric.plugins import list_plugins

    seen: dict[str, str] = {}
    for p in sorted(list_plugins("backend"), key=lambda p: (len(p.name), p.name)):
        if p.name != "fake" and p.target not in seen:
            seen[p.target] = p.name
    return sorted(seen.values())


def up_or_skip(topo):
    """Bring a lab up; skip (with the kernel's reason) when a backend needs a missing feature."""
    from fabric.lab import Lab, LabError

    lab = Lab(topo)
    try:
        return lab.up()
    except LabError as exc:
        if "the running kernel lacks" in str(exc):
            pytest.skip(f"{topo.backends[0]}: {exc.message.splitlines()[-1]}")
        raise


@contextmanager
def converged_lab(lab_name: str, backend: str, *, hosts: int = 2, pods_per_host: int = 1,
                  **topo: Any) -> Iterator[Lab]:
    """A lab of ``backend`` up and converged (every pod reaches every other within 20 s),
    taken down afterwards; the test is skipped when the stack or a kernel feature is missing."""
    from fabric.lab import Topology

    if why := stack_missing(backend):
        pytest.skip(why)
    lab = up_or_skip(Topology(lab_name, backend, hosts=hosts, pods_per_host=pods_per_host,
                              **topo))
    try:
        res = lab.converge(timeout=20)
        assert res.ok, res.summary()
        yield lab
    finally:
        lab.down()


def outside_routes(lab: Lab, host: str, pod_net: IPv4Network) -> set[str]:
    """Every IPv4 route of the host (all tables) whose destination is outside ``pod_net``."""
    out = lab.exec(host, ["ip", "-4", "-j", "route", "show", "table", "all"])
    assert out.ok, out.stderr
    keep = set()
    for r in json.loads(out.stdout):
        dst = "0.0.0.0/0" if r["dst"] == "default" else r["dst"]
        if not IPv4Network(dst, strict=False).subnet_of(pod_net):
            keep.add(json.dumps(r, sort_keys=True))
    return keep
