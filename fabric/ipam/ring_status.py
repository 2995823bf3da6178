"""Ring IPAM status: the mesh status plus the allocator's view, rendered like
``weave status`` / ``weave status ipam``::

        IPAM: ring achieved (consensus), id 3f1c...
       Range: 10.32.0.1-10.47.255.254
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from fabric.mesh import status as _mesh

__all__ = ["ring_status", "render_status", "render_ipam", "render_connections"]

render_connections = _mesh.render_connections


def ring_status(router: Any, allocator: Any, *, encryption: bool = False) -> dict[str, Any]:
    return _mesh.mesh_status(router, allocator, encryption=encryption)


def _consensus_line(ipam: dict[str, Any]) -> str:
    if ipam.get("refusing"):
        return f"refusing to allocate: {ipam['refusing']}"
    if ipam["ready"]:
        how = {"consensus": "achieved", "seed": "seeded", "observer": "learned"}[ipam["mode"]]
        return f"ring {how} ({ipam['mode']}), id {ipam['ring_id']}"
    if ipam.get("waiting"):
        return ipam["waiting"]
    if ipam["mode"] == "consensus" and ipam["consensus"]:
        c = ipam["consensus"]
        return (f"waiting for consensus: {c['participants']} of quorum {c['quorum']} "
                f"participants known")
    return f"waiting for the ring ({ipam['mode']})"


def render_status(st: dict[str, Any]) -> str:
    extra: list[tuple[str, str]] = []
    if st.get("ipam"):
        ipam = st["ipam"]
        extra.append(("IPAM", _consensus_line(ipam)))
        extra.append(("Range", f"{IPv4Address(ipam['range'][0])}-"
                               f"{IPv4Address(ipam['range'][1] - 1)}"))
    return _mesh.render_status(st, extra)


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
    if not ipam["owners"] or ipam.get("refusing"):
        lines.append(_consensus_line(ipam))
    owned = sum(o["size"] for o in ipam["owners"])
    if ipam["owners"] and owned < total:
        lines.append(f"{total - owned} IPs not owned by any peer")
    for inc in ipam.get("inconsistencies", []):
        lines.append(f"inconsistency ({inc['kind']}) from {inc['from']}: {inc['message']}")
    return "\n".join(lines)
