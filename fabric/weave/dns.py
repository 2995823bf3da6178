"""weaveDNS: names of containers gossiped on the mesh channel ``dns`` and answered locally.

Every peer holds every peer's entries (``fabric.weave.dns_records``) but answers only
those whose origin it can reach now, so the names of a partitioned or departed peer
vanish everywhere within a heartbeat timeout and come back when it reconnects (its full
state is gossiped to every new neighbour). ``remove_peer`` (rmpeer) forgets a dead
peer's entries for good: entries relayed by others are refused until the peer itself is
reachable again. Own entries, including tombstones, are written to ``STATE/dns.json``
(temp file, fsync, rename) before they are gossiped, so a peer killed with -9 restarts
with its names, re-announced at a higher version.

Threads: the store changes only on the mesh thread (``node.call``); lookups from the DNS
server threads read an immutable index that the mesh thread swaps after each change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs

from fabric.errors import ConfigError, NotFound
from fabric.mesh.gossip import GossipChannel, GossipData, Gossiper
from fabric.mesh.names import fmt_name, parse_name
from fabric.mesh.router import Router
from fabric.weave.dns_records import (
    DEFAULT_DOMAIN,
    MAX_ENTRIES,
    TOMBSTONE_TTL,
    DnsEntries,
    Entry,
    check_container_id,
    check_ip,
    normalize_name,
)
from fabric.weave.dns_state import STATE_FILE, load_state, save_state

_log = logging.getLogger("fabric.weave.dns")

__all__ = ["WeaveDNS", "MeshHost", "CHANNEL", "STATE_FILE"]

CHANNEL = "dns"
_ASK = b"?"  # unicast: send me your own entries
_Index = tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]


class MeshHost(Protocol):
    """What WeaveDNS needs of a mesh peer: ``fabric.mesh.tcp.MeshNode`` is one."""

    router: Router

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> Any: ...


class WeaveDNS(Gossiper):
    def __init__(self, node: MeshHost, state_dir: str | Path, *, domain: str = DEFAULT_DOMAIN,
                 clock: Callable[[], float] = time.time, gc_interval: float = 60.0,
                 tombstone_ttl: float = TOMBSTONE_TTL) -> None:
        self.node, self.router = node, node.router
        self.me = node.router.name
        self.domain = _check_domain(domain)
        self.path = Path(state_dir) / STATE_FILE
        self.clock, self.gc_interval, self.tombstone_ttl = clock, gc_interval, tombstone_ttl
        self.store = DnsEntries()
        self.removed: set[int] = set()
        self.reachable: frozenset[int] = frozenset({self.me})
        self.counters: Counter[str] = Counter()
        self.server: Any = None  # a fabric.weave.dns_server.DnsServer once serve() ran
        self.channel: GossipChannel | None = None
        self._index: _Index = ({}, {})
        self._rr: dict[str, int] = {}
        self._rr_lock = threading.Lock()
        self._timer: Any = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> WeaveDNS:
        """Load saved entries, join the ``dns`` channel and announce our entries."""
        self._load()
        self.node.call(self._start)
        return self

    def _start(self) -> None:
        self.channel = self.router.new_gossip(CHANNEL, self)
        self.router.on_peers_changed.append(self._peers_changed)
        self._peers_changed(force=True)
        own = self.store.of(self.me)
        if own:
            self.channel.gossip_broadcast(DnsEntries(own))
        # joined after the mesh connected: the neighbours' full gossip is over and the next
        # periodic one may be 30 s away, so ask every reachable peer for its names now
        for name in sorted(self.reachable - {self.me}):
            self.channel.gossip_unicast(name, _ASK)
        self._timer = self.node.call_later(self.gc_interval, self._gc_tick)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.node.call(self._stop)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._peers_changed in self.router.on_peers_changed:
            self.router.on_peers_changed.remove(self._peers_changed)
        if self.router.channels.get(CHANNEL) is self.channel:
            del self.router.channels[CHANNEL]

    def serve(self, address: str, port: int = 53, *, upstream: list[str] | None = None,
              timeout: float = 2.0, freebind: bool = False) -> Any:
        """Start a DNS server (UDP and TCP) answering from these entries. ``upstream``
        None: resolv.conf's servers; [] forwards nothing (SERVFAIL). ``freebind``: bind
        even before ``address`` is configured (the bridge may get it later)."""
        from fabric.weave.dns_server import DnsServer  # the server imports us for types
        self.server = DnsServer(self, address, port, upstream=upstream, timeout=timeout,
                                freebind=freebind).start()
        return self.server

    # ---- public operations (any thread) -----------------------------------------------------
    def add(self, hostname: str, ip: str, container_id: str = "") -> Entry | None:
        """Register ``hostname -> ip`` for a container; None if it is registered already."""
        host, addr = normalize_name(hostname, self.domain), check_ip(ip)
        cid = check_container_id(container_id)
        if not self.in_domain(host) or host == self.domain:
            raise ConfigError(f"hostname {hostname!r} is not in the weaveDNS domain "
                              f"{self.domain}", field="hostname",
                              fix=f"use NAME or NAME.{self.domain.rstrip('.')}")
        return self.node.call(self._add, host, addr, cid)

    def remove(self, hostname: str | None = None, ip: str | None = None,
               container_id: str | None = None) -> int:
        """Tombstone our entries matching every given field; return how many."""
        if hostname is None and ip is None and container_id is None:
            raise ConfigError("dns remove needs a hostname, an address or a container id",
                              fix="give at least one of hostname, ip, container_id")
        host = normalize_name(hostname, self.domain) if hostname is not None else None
        addr = check_ip(ip) if ip is not None else None

        def match(e: Entry) -> bool:
            return ((host is None or e.hostname == host) and (addr is None or e.ip == addr)
                    and (container_id is None or e.container_id == container_id))
        return self.node.call(self._tombstone, match)

    def remove_container(self, container_id: str) -> int:
        return self.remove(container_id=check_container_id(container_id))

    def remove_peer(self, name: int | str) -> int:
        """rmpeer: forget a dead peer's entries; refused while the peer is reachable."""
        return self.node.call(self._remove_peer, parse_name(name))

    def lookup(self, name: str) -> list[str]:
        """Addresses of live entries for ``name``, rotated on every call."""
        try:
            fq = normalize_name(name, self.domain)
        except ConfigError:
            return []
        return self.answer(fq)

    def answer(self, fq: str) -> list[str]:
        """Like lookup for an already normalised FQDN (the server's hot path)."""
        ips = self._index[0].get(fq, ())
        if len(ips) < 2:
            return list(ips)
        with self._rr_lock:
            if len(self._rr) > 10000:
                self._rr.clear()
            n = self._rr.get(fq, 0)
            self._rr[fq] = n + 1
        k = n % len(ips)
        return list(ips[k:] + ips[:k])

    def reverse(self, ip: str) -> list[str]:
        return list(self._index[1].get(ip, ()))

    def in_domain(self, fq: str) -> bool:
        return fq.endswith("." + self.domain) or fq == self.domain

    def entries(self) -> list[dict[str, Any]]:
        """Every known entry (``fabric dns list``), with whether it is answered now."""
        return self.node.call(self._entries)

    def status(self) -> dict[str, Any]:
        out = self.node.call(self._status)
        if self.server is not None:
            out["server"] = self.server.status()
        return out

    # ---- mesh thread ----------------------------------------------------------------------
    def _add(self, host: str, ip: str, cid: str) -> Entry | None:
        if len(self.store) >= MAX_ENTRIES:
            raise ConfigError(f"weaveDNS holds {MAX_ENTRIES} entries already",
                              fix="remove unused names first")
        e = self.store.add(host, ip, self.me, cid)
        if e is not None:
            self._changed([e])
        return e

    def _tombstone(self, match: Callable[[Entry], bool]) -> int:
        gone = self.store.tombstone(self.me, match, int(self.clock()))
        if gone:
            self._changed(gone)
        return len(gone)

    def _remove_peer(self, name: int) -> int:
        if name == self.me:
            raise ConfigError("cannot rmpeer this peer itself", field="name",
                              fix="run rmpeer on another peer")
        if name in self.reachable:
            raise ConfigError(f"peer {fmt_name(name)} is reachable", field="name",
                              fix="only remove peers that are gone for good (stop it first)")
        n = self.store.drop_origin(name)
        if not n and name in self.removed:
            raise NotFound(f"peer {fmt_name(name)} was removed already",
                           fix="see `fabric dns list` for the peers with entries")
        self.removed.add(name)
        _log.info("weaveDNS: rmpeer %s: forgot %d entries", fmt_name(name), n)
        self._save()
        self._rebuild()
        return n

    def _changed(self, entries: list[Entry]) -> None:
        """Our entries changed: persist first, then answer and gossip."""
        self._save()
        self._rebuild()
        if self.channel is not None:
            self.channel.gossip_broadcast(DnsEntries(entries))

    def _peers_changed(self, force: bool = False) -> None:
        reach = frozenset(self.router.topology.reachable()) | {self.me}
        if reach == self.reachable and not force:
            return
        self.reachable = reach
        back = self.removed & reach
        if back:  # a removed peer is alive after all: ask it for its names (the router
            self.removed -= back  # skips re-sent gossip we refused once, so plain
            self._save()  # gossip would not bring them back)
            _log.info("weaveDNS: removed peers are back: %s",
                      ", ".join(fmt_name(n) for n in sorted(back)))
            for name in sorted(back):
                if self.channel is not None:
                    self.channel.gossip_unicast(name, _ASK)
        self._rebuild()

    def _rebuild(self) -> None:
        names: dict[str, list[str]] = {}
        addrs: dict[str, list[str]] = {}
        for e in sorted(self.store, key=lambda e: (e.hostname, e.ip)):
            if e.live and e.origin in self.reachable:
                ips = names.setdefault(e.hostname, [])
                if e.ip not in ips:
                    ips.append(e.ip)
                hs = addrs.setdefault(e.ip, [])
                if e.hostname not in hs:
                    hs.append(e.hostname)
        self._index = ({k: tuple(v) for k, v in names.items()},
                       {k: tuple(v) for k, v in addrs.items()})

    def _gc_tick(self) -> None:
        own_before = len(self.store.of(self.me))
        n = self.store.gc(self.clock(), self.tombstone_ttl)
        if n:
            self.counters["tombstones_collected"] += n
            if len(self.store.of(self.me)) != own_before:
                self._save()
        self._timer = self.node.call_later(self.gc_interval, self._gc_tick)

    # ---- Gossiper ---------------------------------------------------------------------------
    def gossip(self) -> GossipData | None:
        return DnsEntries(self.store) if len(self.store) else None

    def on_gossip(self, sender: int, payload: bytes) -> GossipData | None:
        update = DnsEntries.decode(payload)  # FrameError: counted by the router
        theirs, reassert = [], []
        room = MAX_ENTRIES - len(self.store)  # for new keys: a cap against a flooding peer
        for e in update:
            if e.origin == self.me:
                fixed = self._own_claim(e)
                if fixed is not None:
                    reassert.append(fixed)
            elif e.origin in self.removed:
                self.counters["dropped_removed_peer"] += 1
            elif e.key in self.store.entries:
                theirs.append(e)
            elif room > 0:
                room -= 1
                theirs.append(e)
            else:
                self.counters["dropped_store_full"] += 1
        delta = self.store.merge_delta(DnsEntries(theirs))
        if reassert:
            self._changed(reassert)
        elif len(delta):
            self._rebuild()
        return delta if len(delta) else None

    def on_gossip_unicast(self, src: int, payload: bytes) -> None:
        """A peer that had removed us asks for our entries, or answers such a request."""
        if payload == _ASK:
            if self.channel is not None:
                self.channel.gossip_unicast(src, DnsEntries(self.store.of(self.me)).encode())
            return
        self.on_gossip(src, payload)

    def _own_claim(self, e: Entry) -> Entry | None:
        """Someone gossips one of our entries. We are its only writer: a version we do not
        hold (state lost or copied) is superseded by our view, or by a tombstone if we do
        not know the entry at all. Returns the entry to re-announce."""
        cur = self.store.entries.get(e.key)
        if cur is not None and not e.beats(cur):
            return None
        self.counters["own_entries_reasserted"] += 1
        _log.warning("weaveDNS: a peer holds %s -> %s of ours at version %d, which we do not "
                     "(state lost, or a copied state directory?); re-announcing ours",
                     e.hostname, e.ip, e.version)
        if cur is None:
            if not e.live:  # a tombstone of ours we had forgotten: keep it, nothing to say
                self.store.entries[e.key] = e
                self._save()
                return None
            fixed = attrs.evolve(e, version=e.version + 1, tombstone=max(1, int(self.clock())))
        else:
            fixed = attrs.evolve(cur, version=e.version + 1)
        self.store.entries[e.key] = fixed
        return fixed

    # ---- persistence ------------------------------------------------------------------------
    def _save(self) -> None:
        save_state(self.path, self.store.of(self.me), self.removed, self.domain)

    def _load(self) -> None:
        own, self.removed = load_state(self.path, self.me, self.domain)
        for e in own:
            self.store.put(e)
        if own or self.removed:
            self._save()

    # ---- views ------------------------------------------------------------------------------
    def _entries(self) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self.store, key=lambda e: (e.hostname, e.ip, e.origin)):
            out.append({"hostname": e.hostname, "ip": e.ip, "container_id": e.container_id,
                        "origin": fmt_name(e.origin),
                        "origin_nickname": self.router.peer_nickname(e.origin),
                        "version": e.version, "tombstone": e.tombstone,
                        "answered": e.live and e.origin in self.reachable})
        return out

    def _status(self) -> dict[str, Any]:
        live = [e for e in self.store if e.live]
        return {"domain": self.domain,
                "answered": sum(1 for e in live if e.origin in self.reachable),
                "hidden_unreachable": sum(1 for e in live if e.origin not in self.reachable),
                "tombstones": len(self.store) - len(live),
                "own": sum(1 for e in live if e.origin == self.me),
                "removed_peers": [fmt_name(n) for n in sorted(self.removed)],
                "counters": dict(self.counters),
                "rejected_gossip": self.router.rejected.get("bad-dns", 0)}


def _check_domain(domain: str) -> str:
    d = str(domain).strip().lower().strip(".")
    if not d:
        raise ConfigError("the weaveDNS domain is empty", field="domain",
                          fix="use a domain such as weave.local")
    return normalize_name("x." + d).removeprefix("x.")
