"""Structured mesh/IPAM status and text renders in the manner of ``weave status``.

``mesh_status(router, allocator)`` returns plain JSON-able data; the agent's
``status`` op and the weave backends put it under their status, and
``render_status`` / ``render_ipam`` turn it into text::

        Version: netfabric-mesh 1 (protocol 1)
           Name: 02:00:00:00:00:01 (alpha)
     Encryption: enabled
          Peers: 3 (with 4 established connections)
    Connections: 2 (2 established, 0 failed)
      Consensus: decided (quorum 2)
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

__all__ = ["mesh_status", "render_status", "render_ipam", "render_connections"]


def mesh_status(router: Any, allocator: Any = None, *, encryption: bool = False) -> dict[str, Any]:
    st = router.describe()
    st["encryption"] = encryption
    st["ipam"] = allocator.describe() if allocator is not None else None
    return st


def _consensus_line(ipam: dict[str, Any]) -> str:
    if ipam["ready"]:
        how = {"consensus": "achieved", "seed": "seeded", "observer": "learned"}[ipam["mode"]]
        return f"ring {how} ({ipam['mode']}), id {ipam['ring_id']}"
    if ipam["mode"] == "consensus" and ipam["consensus"]:
        c = ipam["consensus"]
        return (f"waiting for consensus: {c['participants']} of quorum {c['quorum']} "
                f"participants known")
    return f"waiting for the ring ({ipam['mode']})"


def render_status(st: dict[str, Any]) -> str:
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
    if st.get("ipam"):
        ipam = st["ipam"]
        lines.append(("IPAM", _consensus_line(ipam)))
        lines.append(("Range", f"{IPv4Address(ipam['range'][0])}-"
                               f"{IPv4Address(ipam['range'][1] - 1)}"))
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


def render_ipam(st: dict[str, Any]) -> str:
    """Like ``weave status ipam``: one line per owner with its share and free space."""
    ipam = st.get("ipam")
    if not ipam:
        return "IPAM not running"
    total = ipam["range"][1] - ipam["range"][0]
    lines = []
    for o in ipam["owners"]:
        state = "" if o["reachable"] else " - unreachable!"
        lines.append(f"{o['peer']}({o['nickname']}) {o['size']:>10} IPs "
                     f"({o['share']:5.1f}% of total) ({o['free']} available){state}")
    if not ipam["owners"]:
        lines.append(_consensus_line(ipam))
    owned = sum(o["size"] for o in ipam["owners"])
    if ipam["owners"] and owned < total:
        lines.append(f"{total - owned} IPs not owned by any peer")
    for inc in ipam.get("inconsistencies", []):
        lines.append(f"inconsistency ({inc['kind']}) from {inc['from']}: {inc['message']}")
    return "\n".join(lines)
