"""Structured mesh status and text renders in the manner of ``weave status``.

``mesh_status(router, component)`` returns plain JSON-able data: the router's
``describe()`` plus, under ``"ipam"``, ``component.describe()`` of whatever runs on
the mesh (duck-typed: the mesh knows no allocator). ``render_status`` /
``render_connections`` turn it into text; a component adds its own summary lines
(the ring's are in ``fabric.ipam.ring_status``)::

        Name: 02:00:00:00:00:01 (alpha)
  Encryption: enabled
       Peers: 3 (with 4 established connections)
 Connections: 2 (2 established, 0 failed, 0 connecting)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["mesh_status", "render_status", "render_connections"]


def mesh_status(router: Any, allocator: Any = None, *, encryption: bool = False) -> dict[str, Any]:
    st = router.describe()
    st["encryption"] = encryption
    st["ipam"] = allocator.describe() if allocator is not None else None
    return st


def render_status(st: dict[str, Any], extra: Iterable[tuple[str, str]] = ()) -> str:
    conns = st["connections"]
    est = sum(1 for c in conns if c["state"] == "established")
    failed = sum(1 for c in conns if c["state"] == "failed")
    edges = sum(len(p["connections"]) for p in st["peers"])
    lines = [
        ("Name", f"{st['name']} ({st['nickname']})"),
        ("Encryption", "enabled" if st.get("encryption") else "disabled"),
        ("Peers", f"{len(st['peers'])} (with {edges} established connections)"),
        ("TargetPeers", str(len(st["targets"]))),
        ("Connections", f"{len(conns)} ({est} established, {failed} failed, "
                        f"{len(conns) - est - failed} connecting)"),
    ]
    if st.get("name_collision"):
        c = st["name_collision"]
        lines.append(("NameCollision", f"{c['message']} ({c['fix']})"))
    lines += list(extra)
    rej = sum(st.get("rejected", {}).values())
    if rej:
        lines.append(("Rejected", f"{rej} frames/handshakes ({', '.join(sorted(st['rejected']))})"))
    return "\n".join(f"{k:>12}: {v}" for k, v in lines)


def render_connections(st: dict[str, Any]) -> str:
    out = []
    for c in st["connections"]:
        arrow = "->" if c["outbound"] else "<-"
        who = f"{c['peer']}({c['nickname']})" if c["peer"] else ""
        err = f" {c['error']}" if c.get("error") else ""
        out.append(f"{arrow} {c['address']:<22} {c['state']:<12} {who}{err}")
    return "\n".join(out)
