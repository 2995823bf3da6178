"""Peer tables the control plane replaces while the forwarding threads read them.

Updates build new dicts and swap references (copy on write), so the hot path
reads without locks; a per-destination cache is dropped on every update.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

import attrs

__all__ = ["PeerAddr", "PeerTable", "MacTable"]


@attrs.frozen
class PeerAddr:
    """Where one peer's engine listens, and its static public key for sealed L2 (or b"")."""

    ip: str
    port: int
    public_key: bytes = b""

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.ip, self.port)


class PeerTable:
    """Inner IPv4 destination -> peer, by longest prefix (flannel: one subnet per node)."""

    _MISS = object()
    CACHE_MAX = 65536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[IPv4Network, PeerAddr] = {}
        self._by_len: tuple[tuple[int, int, dict[int, PeerAddr]], ...] = ()
        self._by_source: dict[str, PeerAddr] = {}
        self._cache: dict[bytes, PeerAddr | None] = {}
        self.version = 0

    def _rebuild(self, routes: dict[IPv4Network, PeerAddr]) -> None:
        lens: dict[int, dict[int, PeerAddr]] = {}
        for net, peer in routes.items():
            lens.setdefault(net.prefixlen, {})[int(net.network_address)] = peer
        self._routes = routes
        self._by_len = tuple(
            (plen, (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, table)
            for plen, table in sorted(lens.items(), reverse=True)
        )
        self._by_source = {p.ip: p for p in routes.values()}
        self._cache = {}
        self.version += 1

    def set(self, subnet: IPv4Network, peer: PeerAddr) -> None:
        with self._lock:
            routes = dict(self._routes)
            routes[subnet] = peer
            self._rebuild(routes)

    def remove(self, subnet: IPv4Network) -> None:
        with self._lock:
            if subnet in self._routes:
                routes = dict(self._routes)
                del routes[subnet]
                self._rebuild(routes)

    def replace(self, routes: Mapping[IPv4Network, PeerAddr]) -> None:
        with self._lock:
            self._rebuild(dict(routes))

    def items(self) -> list[tuple[IPv4Network, PeerAddr]]:
        return sorted(self._routes.items())

    def __len__(self) -> int:
        return len(self._routes)

    def lookup(self, dst: bytes) -> PeerAddr | None:
        """Peer for a 4-byte destination address (hot path)."""
        cache = self._cache
        hit = cache.get(dst, self._MISS)
        if hit is not self._MISS:
            return hit  # type: ignore[return-value]
        addr = int.from_bytes(dst, "big")
        found = None
        for _plen, mask, table in self._by_len:
            found = table.get(addr & mask)
            if found is not None:
                break
        if len(cache) < self.CACHE_MAX:
            cache[bytes(dst)] = found
        return found

    def lookup_ip(self, ip: IPv4Address | str) -> PeerAddr | None:
        return self.lookup(IPv4Address(ip).packed)

    def by_source(self, ip: str) -> PeerAddr | None:
        """The peer whose engine sends from ``ip`` (for receive-side checks)."""
        return self._by_source.get(ip)


class MacTable:
    """L2 forwarding: static peer list, MAC -> peer learned from received frames."""

    MAX_MACS = 16384

    def __init__(self, peers: Iterable[PeerAddr] = ()) -> None:
        self._lock = threading.RLock()
        self._peers: tuple[PeerAddr, ...] = tuple(peers)
        self._by_source = {p.ip: p for p in self._peers}
        self._macs: dict[bytes, PeerAddr] = {}

    def set_peers(self, peers: Iterable[PeerAddr]) -> None:
        with self._lock:
            self._peers = tuple(peers)
            self._by_source = {p.ip: p for p in self._peers}
            alive = set(self._peers)
            self._macs = {m: p for m, p in self._macs.items() if p in alive}

    def add(self, peer: PeerAddr) -> None:
        with self._lock:
            if peer not in self._peers:
                self.set_peers((*[p for p in self._peers if p.ip != peer.ip], peer))

    def remove(self, ip: str) -> None:
        with self._lock:
            self.set_peers([p for p in self._peers if p.ip != ip])

    @property
    def peers(self) -> tuple[PeerAddr, ...]:
        return self._peers

    def by_source(self, ip: str) -> PeerAddr | None:
        return self._by_source.get(ip)

    def learn(self, mac: bytes, peer: PeerAddr) -> None:
        macs = self._macs
        if macs.get(mac) is not peer and not mac[0] & 1:
            if len(macs) >= self.MAX_MACS:
                self._macs = macs = {}
            macs[bytes(mac)] = peer

    def lookup(self, dst_mac: bytes) -> PeerAddr | None:
        """The peer owning ``dst_mac``, or None: flood (broadcast, multicast, unknown)."""
        return self._macs.get(dst_mac)

    def __len__(self) -> int:
        return len(self._peers)
