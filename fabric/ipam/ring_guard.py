"""What the ring gossips besides tokens: removed peers, ring conflicts, who waits.

All three are CRDTs merged by every peer and carried on the ``ipam`` channel next to
the ring, so every peer learns them, not only the peers where they happened:

* ``removed``: peers handed away by ``rmpeer`` (grow-only, name -> heir, by whom,
  when). A removed peer that comes back with its old state refuses to allocate and never
  re-asserts its old ranges: it must start under a new name (issue 11: a restarted
  removed peer made 116 duplicates and two peers took a range back and forth forever).
* ``conflicts``: pairs of ring ids seen meeting (two separately initialised rings, e.g.
  mismatched seed lists), with the wall-clock time last seen (merge: max). While a
  conflict naming our ring was seen within ``ttl`` seconds, we refuse to allocate.
  Boundary peers re-report it as long as the rings touch; it expires after they part.
* ``waiting``: peers without a ring and their init mode, so an all-observer mesh can
  say that nobody will ever create a ring.
"""

from __future__ import annotations

import json
from typing import Any

from fabric.ipam.ring_crdt import Ring
from fabric.mesh.gossip import GossipData

__all__ = ["IpamData", "Guards", "conflict_key", "newest_claims"]


def conflict_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def newest_claims(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Union of two wire Paxos maps keeping each node's newest (promise, accepted): a
    relay queue must never let an echo of older claims replace newer ones queued before
    it (a proposer's own acceptance was lost that way and proposers duelled forever)."""
    out = dict(a)
    for node, claims in b.items():
        cur = out.get(node)
        if cur is None or (claims[0], claims[1]) > (cur[0], cur[1]):
            out[node] = claims
    return out


class IpamData(GossipData):
    def __init__(self, ring: Ring | None = None, paxos: dict | None = None, *,
                 removed: dict[str, Any] | None = None,
                 conflicts: dict[str, float] | None = None,
                 waiting: dict[str, str] | None = None) -> None:
        self.ring, self.paxos = ring, paxos
        self.removed, self.conflicts, self.waiting = removed, conflicts, waiting

    def encode(self) -> bytes:
        d: dict[str, Any] = {}
        if self.ring is not None:
            d["ring"] = self.ring.to_wire()
        for key in ("paxos", "removed", "conflicts", "waiting"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        return json.dumps(d, separators=(",", ":")).encode()

    def merge(self, other: GossipData) -> IpamData:
        assert isinstance(other, IpamData)
        if other.ring is not None:
            if self.ring is None:
                self.ring = other.ring.subset(other.ring.tokens)
            elif other.ring.ring_id == self.ring.ring_id:
                self.ring.merge(other.ring)
        if other.paxos:
            self.paxos = newest_claims(self.paxos or {}, other.paxos)
        for key in ("removed", "waiting"):
            if getattr(other, key):
                setattr(self, key, {**(getattr(self, key) or {}), **getattr(other, key)})
        if other.conflicts:
            mine = dict(self.conflicts or {})
            for k, t in other.conflicts.items():
                mine[k] = max(t, mine.get(k, t))
            self.conflicts = mine
        return self

    def empty(self) -> bool:
        return self.ring is None and not (self.paxos or self.removed or self.conflicts
                                          or self.waiting)


class Guards:
    """This peer's copy of the three maps; ``merge`` validates and returns what was new."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.removed: dict[str, dict[str, Any]] = {}
        self.conflicts: dict[str, float] = {}
        self.waiting: dict[str, str] = {}

    def merge(self, d: dict[str, Any], now: float) -> IpamData:
        """Merge the guard fields of a decoded ipam payload; ValueError if malformed.
        Conflict times from the future (beyond clock skew of ``ttl``) are refused: one
        would stop allocation for good."""
        new = IpamData()
        removed, conflicts, waiting = (d.get("removed") or {}, d.get("conflicts") or {},
                                       d.get("waiting") or {})
        if not all(isinstance(x, dict) for x in (removed, conflicts, waiting)):
            raise ValueError("malformed ipam guards")
        for name, info in removed.items():
            if not (isinstance(info, dict) and isinstance(info.get("heir"), str)):
                raise ValueError("malformed removed peer")
            if name not in self.removed:
                self.removed[str(name)] = {k: str(v) for k, v in info.items()}
                new.removed = {**(new.removed or {}), name: self.removed[name]}
        for key, when in conflicts.items():
            if type(when) not in (int, float) or key.count("|") != 1:
                raise ValueError("malformed ring conflict")
            if when > now + self.ttl:
                continue
            if when > self.conflicts.get(key, float("-inf")):
                self.conflicts[key] = float(when)
                new.conflicts = {**(new.conflicts or {}), key: float(when)}
        for name, mode in waiting.items():
            if mode not in ("observer", "seed", "consensus"):
                raise ValueError("malformed waiting peer")
            if self.waiting.get(name) != mode:
                self.waiting[name] = mode
                new.waiting = {**(new.waiting or {}), name: mode}
        return new

    def conflict_seen(self, ours: str, theirs: str, now: float) -> IpamData | None:
        """Note that ring ``theirs`` met ours; returns the delta to gossip, or None when
        it was reported recently (a flood per received gossip would be pointless)."""
        key = conflict_key(ours, theirs)
        if now - self.conflicts.get(key, float("-inf")) < self.ttl / 4:
            return None
        self.conflicts[key] = now
        return IpamData(conflicts={key: now})

    def active_conflicts(self, ring_id: str, now: float) -> list[str]:
        """Ring ids seen meeting ``ring_id`` within ``ttl``."""
        out = []
        for key, when in self.conflicts.items():
            a, b = key.split("|")
            if ring_id in (a, b) and now - when < self.ttl:
                out.append(b if a == ring_id else a)
        return sorted(out)

    def live_conflicts(self, now: float) -> dict[str, float]:
        return {k: t for k, t in self.conflicts.items() if now - t < self.ttl}
