"""The weave IPAM ring as a CRDT.

The address range ``[start, end)`` is cut by tokens; a token owns the addresses
from itself up to the next token (the last one up to ``end``). Each token has
an owner, a version and the owner's count of free addresses in it. Only the
owner changes its tokens (allocation counts, donation to another peer, a new
token when it splits its own range), always bumping the version; merge keeps
the higher ``(version, owner)`` per token, so merging is commutative,
associative and idempotent. Tokens are never deleted. ``ring_id`` names one
initialisation (consensus result or seed list): rings with different ids are
never merged — that is reported as an inconsistency naming both sides.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

import attrs

from fabric.errors import IPAMError

__all__ = ["Entry", "Ring", "RingMismatch", "ring_id_for"]


class RingMismatch(IPAMError):
    """Two differently initialised rings met."""


@attrs.frozen
class Entry:
    token: int
    peer: int
    version: int
    free: int

    def key(self) -> tuple[int, int]:
        return (self.version, self.peer)


def ring_id_for(start: int, end: int, peers: Iterable[int], salt: str = "") -> str:
    text = f"{start}-{end}-{','.join(map(str, sorted(peers)))}-{salt}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Ring:
    def __init__(self, start: int, end: int, ring_id: str = "",
                 entries: Iterable[Entry] = ()) -> None:
        if not 0 <= start < end <= 1 << 32:
            raise IPAMError(f"ring range {start}-{end} is invalid")
        self.start, self.end, self.ring_id = start, end, ring_id
        self.gen = 0  # bumped on every change, for callers' caches
        self.entries: dict[int, Entry] = {}
        self.tokens: list[int] = []
        for e in entries:
            if not start <= e.token < end:
                raise IPAMError(f"token {IPv4Address(e.token)} outside the ring")
            self.entries[e.token] = e
        self.tokens = sorted(self.entries)
        # wire tuples of our entries: merge_wire skips identical entries with one set
        # difference instead of a Python loop over the whole ring
        self._wire = {(e.token, e.peer, e.version, e.free) for e in self.entries.values()}

    # ---- basics ---------------------------------------------------------------------
    def empty(self) -> bool:
        return not self.entries

    def _put(self, e: Entry) -> None:
        if not self.start <= e.token < self.end:
            raise IPAMError(f"token {IPv4Address(e.token)} outside the ring")
        self.gen += 1
        old = self.entries.get(e.token)
        if old is None:
            bisect.insort(self.tokens, e.token)
        else:
            self._wire.discard((old.token, old.peer, old.version, old.free))
        self.entries[e.token] = e
        self._wire.add((e.token, e.peer, e.version, e.free))

    def range_end(self, token: int) -> int:
        i = bisect.bisect_right(self.tokens, token)
        return self.tokens[i] if i < len(self.tokens) else self.end

    def owner_entry(self, addr: int) -> Entry | None:
        i = bisect.bisect_right(self.tokens, addr) - 1
        return self.entries[self.tokens[i]] if i >= 0 else None

    def owned(self, peer: int) -> list[tuple[int, int]]:
        return [(t, self.range_end(t)) for t in self.tokens if self.entries[t].peer == peer]

    def peers(self) -> set[int]:
        return {e.peer for e in self.entries.values()}

    def free_by_peer(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for e in self.entries.values():
            out[e.peer] = out.get(e.peer, 0) + e.free
        return out

    def size_by_peer(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for t in self.tokens:
            p = self.entries[t].peer
            out[p] = out.get(p, 0) + self.range_end(t) - t
        return out

    # ---- changes by the owner -------------------------------------------------------
    def claim_for_peers(self, peers: list[int], ring_id: str) -> None:
        """Initialise: split the range evenly between ``peers`` (deterministic)."""
        if not self.empty():
            raise IPAMError("ring already initialised")
        peers = sorted(set(peers))
        size = self.end - self.start
        self.ring_id = ring_id
        for i, p in enumerate(peers):
            lo = self.start + size * i // len(peers)
            hi = self.start + size * (i + 1) // len(peers)
            if hi > lo:
                self._put(Entry(lo, p, 1, hi - lo))

    def set_entry(self, token: int, peer: int, free: int) -> Entry:
        """Create or update a token, bumping its version."""
        old = self.entries.get(token)
        e = Entry(token, peer, (old.version + 1) if old else 1, free)
        self._put(e)
        return e

    # ---- merge ----------------------------------------------------------------------
    def merge(self, other: Ring) -> list[Entry]:
        """Merge ``other``; return the entries that changed here. Raises RingMismatch."""
        if (other.start, other.end) != (self.start, self.end):
            raise RingMismatch(f"ring ranges differ: {self.start}-{self.end} vs "
                               f"{other.start}-{other.end}",
                               fix="give every peer the same IPAM range")
        if other.empty():
            return []
        if self.empty():
            self.ring_id = other.ring_id
        elif other.ring_id != self.ring_id:
            raise RingMismatch(f"ring {other.ring_id} was initialised separately from ours "
                               f"({self.ring_id})",
                               fix="run `reset` on the peers of one of the two rings, or "
                                   "re-seed them with the same seed list")
        changed = []
        for tok, e in other.entries.items():
            cur = self.entries.get(tok)
            if cur is None or e.key() > cur.key():
                self._put(e)
                changed.append(e)
        return changed

    def merge_wire(self, raw: Any) -> list[tuple[Entry | None, Entry]]:
        """Merge a ring in wire form without building it: only entries newer than ours
        are validated and constructed. Returns (old, new) per changed token; raises
        ValueError for malformed input, RingMismatch for a foreign ring."""
        try:
            start, end, rid, entries = int(raw["start"]), int(raw["end"]), str(raw["id"]), \
                raw["entries"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed ring: {exc}") from exc
        if (start, end) != (self.start, self.end):
            raise RingMismatch(f"ring ranges differ: {self.start}-{self.end} vs {start}-{end}",
                               fix="give every peer the same IPAM range")
        if not isinstance(entries, list):
            raise ValueError("malformed ring: entries")
        if not entries:
            return []
        if self.empty():
            self.ring_id = rid
        elif rid != self.ring_id:
            raise RingMismatch(f"ring {rid} was initialised separately from ours "
                               f"({self.ring_id})",
                               fix="run `reset` on the peers of one of the two rings, or "
                                   "re-seed them with the same seed list")
        size = end - start
        newer = []
        cur_get = self.entries.get
        try:
            fresh = set(map(tuple, entries)) - self._wire
        except TypeError as exc:
            raise ValueError("malformed ring entry") from exc
        for item in fresh:
            if len(item) != 4:
                raise ValueError("malformed ring entry")
            tok, peer, ver, free = item
            cur = cur_get(tok)
            if cur is not None and (cur.version, cur.peer) >= (ver, peer):
                continue
            if type(tok) is not int or not start <= tok < end or type(ver) is not int \
                    or ver < 0 or type(free) is not int or not 0 <= free <= size \
                    or type(peer) is not int:
                raise ValueError("malformed ring entry")
            newer.append((cur, Entry(tok, peer, ver, free)))
        out = []
        for cur, e in newer:
            now = self.entries.get(e.token)
            if now is None or e.key() > now.key():
                self._put(e)
                out.append((cur, e))
        return out

    # ---- wire -----------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "id": self.ring_id,
                "entries": [[e.token, e.peer, e.version, e.free]
                            for e in (self.entries[t] for t in self.tokens)]}

    def subset(self, tokens: Iterable[int]) -> Ring:
        return Ring(self.start, self.end, self.ring_id, (self.entries[t] for t in tokens))

    @classmethod
    def from_wire(cls, raw: Any) -> Ring:
        try:
            r = cls(int(raw["start"]), int(raw["end"]), str(raw["id"]))
            size = r.end - r.start
            for tok, peer, ver, free in raw["entries"]:
                if type(tok) is not int or not r.start <= tok < r.end or type(ver) is not int \
                        or ver < 0 or type(free) is not int or not 0 <= free <= size \
                        or type(peer) is not int:
                    raise ValueError("entry out of range")
                r.entries[tok] = Entry(tok, peer, ver, free)
            r.tokens = sorted(r.entries)
            r._wire = {(e.token, e.peer, e.version, e.free) for e in r.entries.values()}
        except (KeyError, TypeError, ValueError, IPAMError) as exc:
            raise ValueError(f"malformed ring: {exc}") from exc
        return r

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Ring) and self.ring_id == other.ring_id
                and self.entries == other.entries)

    __hash__ = None  # type: ignore[assignment]
