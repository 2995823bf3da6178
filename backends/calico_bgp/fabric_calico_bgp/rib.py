"""Routes learned over BGP, per peer, with a graceful-restart-like hold.

When a session (or the whole speaker) goes down its routes are *stale*, not
gone: they stay installed for the hold time. When the session comes back the
peer re-sends its routes; End-of-RIB (or a sweep a few seconds after the
session is up) drops whatever stale route was not refreshed.
"""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

from fabric_calico_bgp.messages import RouteUpdate

__all__ = ["RouteTable"]


class RouteTable:
    def __init__(self) -> None:
        self._routes: dict[IPv4Address, dict[IPv4Network, IPv4Address]] = {}
        self._stale: dict[IPv4Address, set[IPv4Network]] = {}
        self._deadline: dict[IPv4Address, float] = {}  # stale routes expire then
        self._up_since: dict[IPv4Address, float] = {}
        self._lock = threading.Lock()

    def apply(self, update: RouteUpdate) -> set[IPv4Network]:
        """Apply one UPDATE; returns the prefixes whose best route may have changed."""
        peer = update.peer
        with self._lock:
            table = self._routes.setdefault(peer, {})
            stale = self._stale.get(peer, set())
            changed: set[IPv4Network] = set()
            for prefix in update.withdrawn:
                if table.pop(prefix, None) is not None:
                    changed.add(prefix)
                stale.discard(prefix)
            for prefix, nexthop in update.announced:
                if table.get(prefix) != nexthop or prefix in stale:
                    changed.add(prefix)
                table[prefix] = nexthop
                stale.discard(prefix)
            if update.eor:
                changed |= self._sweep(peer)
            return changed

    def _sweep(self, peer: IPv4Address) -> set[IPv4Network]:
        stale = self._stale.pop(peer, set())
        self._deadline.pop(peer, None)
        table = self._routes.get(peer, {})
        for prefix in stale:
            table.pop(prefix, None)
        return stale

    def session_up(self, peer: IPv4Address) -> None:
        with self._lock:
            self._up_since[peer] = time.monotonic()
            self._deadline.pop(peer, None)

    def session_down(self, peer: IPv4Address, hold: float) -> None:
        """Keep the peer's routes for ``hold`` seconds (0: drop them at the next expire())."""
        with self._lock:
            self._up_since.pop(peer, None)
            routes = self._routes.get(peer, {})
            if routes:
                self._stale[peer] = set(routes)
                # repeated downs (a speaker crashing in a loop) never extend the hold
                self._deadline.setdefault(peer, time.monotonic() + hold)

    def drop_peer(self, peer: IPv4Address) -> set[IPv4Network]:
        with self._lock:
            self._stale.pop(peer, None)
            self._deadline.pop(peer, None)
            self._up_since.pop(peer, None)
            return set(self._routes.pop(peer, {}))

    def expire(self, sweep_after: float) -> set[IPv4Network]:
        """Drop stale routes past their hold, or not refreshed ``sweep_after`` s after up."""
        now = time.monotonic()
        changed: set[IPv4Network] = set()
        with self._lock:
            for peer in list(self._stale):
                up = self._up_since.get(peer)
                if now >= self._deadline.get(peer, now) or (up and now - up >= sweep_after):
                    changed |= self._sweep(peer)
        return changed

    def best(self, prefix: IPv4Network) -> tuple[IPv4Address, IPv4Address] | None:
        """(next hop, peer) of the preferred route: fresh before stale, then lowest peer."""
        with self._lock:
            found = [
                (prefix in self._stale.get(peer, ()), peer, table[prefix])
                for peer, table in self._routes.items() if prefix in table
            ]
        if not found:
            return None
        _stale, peer, nexthop = min(found)
        return nexthop, peer

    def prefixes(self) -> set[IPv4Network]:
        with self._lock:
            return {p for table in self._routes.values() for p in table}

    def routes_of(self, peer: IPv4Address) -> dict[IPv4Network, IPv4Address]:
        with self._lock:
            return dict(self._routes.get(peer, {}))

    def counts(self) -> dict[IPv4Address, tuple[int, int]]:
        """Per peer: (routes held, of which stale)."""
        with self._lock:
            return {p: (len(t), len(self._stale.get(p, ()))) for p, t in self._routes.items()}
