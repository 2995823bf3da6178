"""Lab-tier fixtures: root check, unique lab names, which backends can run a full lab."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from fabric.lab.topology import STATE_ROOT, ns_prefix

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


@pytest.fixture
def lab_name() -> str:
    """A unique short lab name; the lab is taken down afterwards whatever happened."""
    name = f"t{secrets.token_hex(2)}"
    yield name
    from fabric.lab.cleanup import teardown

    teardown(name)
    assert lab_namespaces(name) == []
    assert not (STATE_ROOT / name).exists()


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
