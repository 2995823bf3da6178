"""Who is connected to whom: peer records gossiped on the ``topology`` channel, and routes.

A record is owned by its peer; only that peer changes it and bumps ``version``
(a restarted peer starts from a higher version: wall-clock milliseconds in
real mode). Merge keeps the higher version per peer, so it is a CRDT.
Routes run BFS over *symmetric* connections (both ends list each other),
with neighbours visited in name order so every peer builds the same trees.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from functools import cached_property
from typing import Any

import attrs

from fabric.mesh.gossip import GossipData
from fabric.mesh.wire import FrameError

__all__ = ["PeerRecord", "TopologyUpdate", "Topology"]


_HDR = struct.Struct(">6sQI")  # name, version, body length
_INTERN: dict[tuple[int, int, bytes], PeerRecord] = {}


@attrs.frozen(slots=False)
class PeerRecord:
    name: int
    nickname: str
    uid: int
    version: int
    conns: tuple[tuple[int, str, bool], ...] = ()  # (peer, address, outbound)

    @cached_property
    def body(self) -> bytes:
        """Wire body (JSON ``[nickname, uid, [[peer, address, outbound]...]]``), cached."""
        return json.dumps([self.nickname, self.uid, [[p, a, int(o)] for p, a, o in self.conns]],
                          separators=(",", ":")).encode()

    @classmethod
    def from_wire(cls, name: int, version: int, body: bytes) -> PeerRecord:
        """Decode a record; identical (name, version, body) share one immutable object
        process-wide, so many in-process peers (the simulator) decode each once."""
        key = (name, version, body)
        rec = _INTERN.get(key)
        if rec is None:
            rec = cls._decode(name, version, body)
            if len(_INTERN) >= 100_000:
                _INTERN.pop(next(iter(_INTERN)))
            _INTERN[key] = rec
        return rec

    @classmethod
    def _decode(cls, name: int, version: int, body: bytes) -> PeerRecord:
        try:
            nick, uid, conns = json.loads(body)
            rec = cls(name, str(nick), int(uid), version,
                      tuple((int(p), str(a), bool(o)) for p, a, o in conns))
            rec.__dict__["body"] = body  # relay the bytes we got, do not re-encode
        except (TypeError, ValueError, RecursionError) as exc:
            raise FrameError("bad-topology", "malformed record") from exc
        if not 0 < rec.name < (1 << 48) or len(rec.nickname) > 64 or len(rec.conns) > 4096:
            raise FrameError("bad-topology", "record out of range")
        return rec


class TopologyUpdate(GossipData):
    """Records by name. Decoded updates keep raw wire records (``raw``) and build
    :class:`PeerRecord` objects only for those that turn out to be newer."""

    def __init__(self, records: dict[int, PeerRecord] | None = None,
                 raw: list[Any] | None = None) -> None:
        self.records = records or {}
        self.raw = raw or []
        self._encoded: bytes | None = None

    def encode(self) -> bytes:
        """``u32 count | count x (name6, version u64, body length u32) | bodies``: a
        receiver reads the fixed-size headers and decodes only the bodies it lacks."""
        if self._encoded is None:
            recs = [self.records[n] for n in sorted(self.records)]
            head = b"".join(_HDR.pack(r.name.to_bytes(6, "big"), r.version, len(r.body))
                            for r in recs)
            self._encoded = struct.pack(">I", len(recs)) + head + b"".join(r.body for r in recs)
        return self._encoded

    @classmethod
    def decode(cls, payload: bytes) -> TopologyUpdate:
        """Returns an update whose ``raw`` holds (name, version, body) triples."""
        if len(payload) < 4:
            raise FrameError("bad-topology", "truncated")
        (count,) = struct.unpack_from(">I", payload)
        end = 4 + count * _HDR.size
        if count > 65536 or len(payload) < end:
            raise FrameError("bad-topology", "truncated header")
        raw = []
        off = end
        for name6, version, blen in _HDR.iter_unpack(payload[4:end]):
            raw.append((int.from_bytes(name6, "big"), version, payload[off:off + blen]))
            off += blen
        if off != len(payload):
            raise FrameError("bad-topology", "body lengths do not add up")
        return cls(raw=raw)

    def merge(self, other: GossipData) -> TopologyUpdate:
        assert isinstance(other, TopologyUpdate)
        self._encoded = None
        for name, rec in other.records.items():
            cur = self.records.get(name)
            if cur is None or rec.version > cur.version:
                self.records[name] = rec
        return self


class Topology:
    """This peer's view: every known record, plus lazily computed routes."""

    def __init__(self, me: PeerRecord) -> None:
        self.me = me.name
        self.records: dict[int, PeerRecord] = {me.name: me}
        self.digest = 0  # order-free hash of (name, version) pairs, for cheap comparison
        self._digest_add(me)
        self._unicast: dict[int, int] | None = None
        self._bcast: dict[int, list[int]] = {}
        self._full: TopologyUpdate | None = None
        self._full_digest = -1
        self._adj: dict[int, list[int]] | None = None

    def _digest_add(self, rec: PeerRecord, sign: int = 1) -> None:
        self.digest = (self.digest + sign * hash((rec.name, rec.version))) & ((1 << 64) - 1)

    def _set(self, rec: PeerRecord) -> None:
        old = self.records.get(rec.name)
        if old is not None:
            self._digest_add(old, -1)
        self.records[rec.name] = rec
        self._digest_add(rec)
        self._unicast = None
        self._adj = None
        self._bcast.clear()

    def update_self(self, rec: PeerRecord) -> None:
        self._set(rec)

    def apply(self, update: TopologyUpdate) -> TopologyUpdate:
        """Merge an update; return the records that were new. Foreign claims on our
        own record are ignored (ours is authoritative)."""
        delta: dict[int, PeerRecord] = {}
        lost_edge = False
        records, me = self.records, self.me
        newer: list[PeerRecord] = [r for r in update.records.values()
                                   if r.name != me and (r.name not in records
                                                        or r.version > records[r.name].version)]
        for name, version, body in update.raw:
            cur = records.get(name)
            if (cur is None or version > cur.version) and name != me:
                newer.append(PeerRecord.from_wire(name, version, body))
        for rec in newer:
            cur = records.get(rec.name)
            if cur is not None and rec.version <= cur.version:
                continue  # a duplicate inside this update
            if cur is not None and not {p for p, _a, _o in cur.conns} <= {
                    p for p, _a, _o in rec.conns}:
                lost_edge = True
            self._set(rec)
            delta[rec.name] = rec
        if lost_edge:
            self.gc()
        return TopologyUpdate(delta)

    def full(self) -> TopologyUpdate:
        if self._full is None or self._full_digest != self.digest:
            self._full, self._full_digest = TopologyUpdate(dict(self.records)), self.digest
        return self._full

    def gc(self) -> list[int]:
        """Forget peers no declared connection path from us reaches."""
        seen = {self.me}
        todo = [self.me]
        while todo:
            rec = self.records.get(todo.pop())
            if rec is None:
                continue
            for p, _a, _o in rec.conns:
                if p not in seen and p in self.records:
                    seen.add(p)
                    todo.append(p)
        gone = [n for n in self.records if n not in seen]
        for n in gone:
            self._digest_add(self.records.pop(n), -1)
        if gone:
            self._unicast = None
            self._adj = None
            self._bcast.clear()
        return gone

    def _adjacency(self) -> dict[int, list[int]]:
        """Symmetric connections of every known peer, sorted; cached until a change."""
        if self._adj is None:
            declared = {n: {p for p, _a, _o in r.conns} for n, r in self.records.items()}
            self._adj = {n: sorted(p for p in ps if n in declared.get(p, ()))
                         for n, ps in declared.items()}
        return self._adj

    def neighbours(self, name: int) -> list[int]:
        """Peers with a symmetric connection to ``name``, in name order."""
        return self._adjacency().get(name, [])

    def _bfs(self, root: int) -> dict[int, int]:
        adj = self._adjacency()
        parent = {root: root}
        q = deque([root])
        while q:
            n = q.popleft()
            for p in adj.get(n, ()):
                if p not in parent:
                    parent[p] = n
                    q.append(p)
        return parent

    def unicast_routes(self) -> dict[int, int]:
        """dst -> next hop from us (us -> us)."""
        if self._unicast is None:
            parent = self._bfs(self.me)
            routes: dict[int, int] = {}
            for dst in parent:
                hop = dst
                while parent[hop] != self.me and hop != self.me:
                    hop = parent[hop]
                routes[dst] = hop
            self._unicast = routes
        return self._unicast

    def broadcast_hops(self, src: int) -> list[int]:
        """Our children in ``src``'s BFS tree: where to relay a broadcast from ``src``."""
        hops = self._bcast.get(src)
        if hops is None:
            parent = self._bfs(src)
            hops = sorted(n for n, par in parent.items() if par == self.me and n != self.me)
            self._bcast[src] = hops
        return hops

    def reachable(self) -> set[int]:
        return set(self.unicast_routes())
