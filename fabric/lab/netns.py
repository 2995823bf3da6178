"""Network-namespace helpers for the lab, over the real `ip` tool.

Every change happens inside a namespace named by the caller; nothing here
touches the root namespace except creating/deleting the namespaces themselves.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from fabric.errors import FabricError

__all__ = [
    "LabError",
    "run",
    "ns_exec_argv",
    "add_ns",
    "del_ns",
    "list_ns",
    "ns_exists",
    "ip_batch",
    "sysctl",
    "add_veth",
]


class LabError(FabricError):
    """A lab operation failed (a command in a namespace, a process, a wait)."""


def ns_exec_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    return (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]


def run(
    argv: Sequence[str],
    ns: str | None = None,
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (inside ``ns`` when given); LabError with stderr when it fails."""
    cmd = ns_exec_argv(ns, argv)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} is not installed", fix=f"install {cmd[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)} did not finish within {timeout}s") from exc
    if check and proc.returncode != 0:
        where = f" in {ns}" if ns else ""
        raise LabError(f"{' '.join(map(str, argv))}{where} failed ({proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return proc


def list_ns(prefix: str = "") -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def ns_exists(name: str) -> bool:
    return name in list_ns(name)


def add_ns(name: str) -> None:
    """Create namespace ``name`` with lo up; LabError if it exists already."""
    if len(name) > 64 or "/" in name:
        raise LabError(f"namespace name {name!r} is invalid")
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def del_ns(name: str) -> None:
    """Delete namespace ``name`` (no error when absent)."""
    if ns_exists(name):
        run(["ip", "netns", "del", name], check=False)


def ip_batch(ns: str, commands: Sequence[str]) -> None:
    """Run several `ip` commands in ``ns`` in one process (`ip -n NS -batch -`)."""
    if commands:
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n")


def sysctl(ns: str, key: str, value: str | int) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    run(["sh", "-c", f"echo {value} > {path}"], ns=ns)


def add_veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int = 1500) -> None:
    """A veth pair with one end ``name_a`` in ``ns_a``, the other ``name_b`` in ``ns_b``."""
    for n in (name_a, name_b):
        if len(n) > 15:
            raise LabError(f"interface name {n!r} is longer than 15 characters")
    run(["ip", "-n", ns_a, "link", "add", name_a, "mtu", str(mtu), "type", "veth",
         "peer", "name", name_b, "mtu", str(mtu), "netns", ns_b])
