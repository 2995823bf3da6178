"""``calico-bgp`` status: BGP sessions like ``calicoctl node status``, routes, blocks."""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fabric_calico_bgp.backend import CalicoBgpBackend

__all__ = ["build_status"]


def build_status(b: CalicoBgpBackend) -> dict[str, Any]:
    """Status of one backend (called with its lock held)."""
    counts = b.table.counts()
    sessions = []
    for addr, nb in sorted(b.neighbors.items()):
        s = b.sessions.get(addr, {})
        received, stale = counts.get(addr, (0, 0))
        up = s.get("state") == "Established"
        sent = len(b.chunks) + (b.reflector.sent_to(addr) if b.reflector else 0)
        sessions.append({
            "peer": str(addr), "asn": nb.peer_as, "type": nb.kind,
            "node": nb.description, "state": s.get("state", "Idle"),
            "since": s.get("since"), "info": s.get("info", ""),
            "routes_received": received, "routes_stale": stale,
            "routes_sent": sent if up else 0,
        })
    sp = b.speaker
    return {
        "refused": b.refused.status(),  # untrusted records kept from the kernel
        # rendered as a table by `fabric status` (same columns as other backends)
        "peers": [{
            "name": f"{x['node']} ({x['type']})" if x["type"] != "global" else "global",
            "public_ip": x["peer"],
            "subnets": [str(p) for p in sorted(b.table.routes_of(
                IPv4Address(x["peer"])))],
            "state": f"{x['state']} {_since(x['since'])}, {x['routes_received']} "
                     f"received / {x['routes_sent']} sent"
                     + (f", {x['routes_stale']} held" if x["routes_stale"] else "")
                     + (f" ({x['info']})" if x["info"] else ""),
        } for x in sessions],
        "bgp": {
            "asn": b.cfg.asn, "router_id": str(b.router_id),
            "mode": ("route-reflector" if b.cfg.rr_cluster_id else
                     "node-to-node mesh" if b.cfg.mesh else "peers only"),
            "speaker": {"pid": sp.pid if sp else None,
                        "connected": bool(sp and sp.connected.is_set()),
                        "restarts": sp.restarts if sp else 0,
                        "reload_retries": sp.reload_retries if sp else 0,
                        "malformed_messages": sp.malformed if sp else 0,
                        "last_error": sp.last_error if sp else ""},
            "peers": sessions,
        },
        "encapsulation": b.cfg.encapsulation + (
            " (CrossSubnet)" if b.cfg.cross_subnet else ""),
        "blocks": [str(c) for c in b.chunks],
        "fast_path": b.pods.status(),
        "routes": [{"dst": str(p), "via": str(b.dp.installed.get(p, ("-",))[0]),
                    "state": st} for p, st in sorted(b.route_state.items())],
    }


def _since(ts: float | None) -> str:
    return time.strftime("since %H:%M:%S", time.localtime(ts)) if ts else ""
