"""Route reflection done by the agent (exabgp keeps no RIB to reflect from).

A node with ``RouteReflectorClusterID`` peers with every node; other nodes
peer only with reflectors when the mesh is off. Routes learned from a client
are re-announced to every other established neighbour, routes from a
non-client only to clients (RFC 4456), with the next hop kept and
ORIGINATOR_ID / CLUSTER_LIST set.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from fabric_calico_bgp.messages import RouteUpdate

if TYPE_CHECKING:
    from fabric_calico_bgp.backend import CalicoBgpBackend

__all__ = ["Reflector"]


class Reflector:
    def __init__(self, backend: CalicoBgpBackend) -> None:
        self.b = backend
        self.sent: dict[IPv4Address, dict[IPv4Network, IPv4Address]] = {}

    def _established(self) -> list[IPv4Address]:
        return [a for a, s in self.b.sessions.items()
                if s.get("state") == "Established" and a in self.b.neighbors]

    def _reflects(self, source: IPv4Address, target: IPv4Address) -> bool:
        if source == target:
            return False
        src = self.b.neighbors.get(source)
        dst = self.b.neighbors.get(target)
        if src is None or dst is None:
            return False
        return src.rr_client or dst.rr_client

    def sync(self, prefixes: Iterable[IPv4Network], targets: Iterable[IPv4Address]) -> None:
        cluster = self.b.cfg.rr_cluster_id
        targets = list(targets)
        for prefix in prefixes:
            best = self.b.table.best(prefix)
            for t in targets:
                sent = self.sent.setdefault(t, {})
                if best is not None and self._reflects(best[1], t):
                    nexthop, source = best
                    if sent.get(prefix) != nexthop:
                        self.b._send(f"neighbor {t} announce route {prefix} next-hop {nexthop} "
                                     f"originator-id {source} cluster-list [ {cluster} ]")
                        sent[prefix] = nexthop
                elif sent.pop(prefix, None) is not None:
                    self.b._send(f"neighbor {t} withdraw route {prefix}")

    def reflect(self, update: RouteUpdate) -> None:
        changed = {p for p, _ in update.announced} | set(update.withdrawn)
        self.sync(changed, self._established())

    def peer_up(self, peer: IPv4Address) -> None:
        self.sent.pop(peer, None)  # a new session starts with an empty Adj-RIB-Out
        self.sync(self.b.table.prefixes(), [peer])

    def resync(self) -> None:
        known = self.b.table.prefixes() | {p for s in self.sent.values() for p in s}
        self.sync(known, self._established())

    def sent_to(self, peer: IPv4Address) -> int:
        return len(self.sent.get(peer, {}))
