"""The ring allocator: one peer's IPAM state machine on the mesh ``ipam`` gossip channel.

Single-threaded like the router it runs on. ``try_allocate`` answers at once:
an address, or ``None`` after asking the peer with most free space for some
(the donation arrives by unicast and gossip; call again). Init modes:
``consensus`` (Paxos over gossip, ``quorum`` peers; proposing, backoff and ring hand-out
in ``fabric.ipam.ring_consensus``), ``seed`` (every seed peer builds the same ring from the
seed list) and ``observer`` (never owns space until it asks for some). Conflicts found
while merging are kept in ``inconsistencies``, logged (rate-limited) and repaired (see
:meth:`_check_lost`); removed peers, ring conflicts and waiting peers travel with the ring
(``fabric.ipam.ring_guard``) and stop allocation where it would duplicate addresses
(:meth:`refusal`).
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fabric.errors import ConfigError, IPAMError
from fabric.ipam.ring_admin import RingAdmin
from fabric.ipam.ring_consensus import RingConsensus
from fabric.ipam.ring_crdt import Entry, Ring, RingMismatch, ring_id_for
from fabric.ipam.ring_donate import RingDonation
from fabric.ipam.ring_guard import Guards, IpamData
from fabric.ipam.ring_paxos import Paxos
from fabric.mesh.db import MeshDB
from fabric.mesh.gossip import GossipData, Gossiper
from fabric.mesh.names import fmt_name
from fabric.mesh.router import Router
from fabric.mesh.wire import FrameError

__all__ = ["IpamData", "RingAllocator", "CHANNEL"]  # IpamData: from ring_guard

CHANNEL = "ipam"


class RingAllocator(RingAdmin, RingDonation, RingConsensus, Gossiper):
    def __init__(self, router: Router, start: int, end: int, *, mode: str = "consensus",
                 quorum: int = 1, seeds: list[int] | None = None, db: MeshDB | None = None,
                 retry: float = 1.0) -> None:
        if mode not in ("consensus", "seed", "observer"):
            raise ConfigError(f"IPAM init mode {mode!r} is invalid",
                              fix="use consensus[=N], seed=NAME,NAME... or observer")
        if mode == "seed" and not seeds:
            raise ConfigError("IPAM init seed needs at least one peer name",
                              fix="give seed=NAME,NAME...")
        if quorum < 1:
            raise ConfigError(f"consensus quorum {quorum} must be at least 1")
        self.router, self.me = router, router.name
        self.mode, self.seeds, self.db, self.retry = mode, sorted(seeds or []), db, retry
        self.ring = Ring(start, end)
        # every seed-mode peer knows which ring its seed list makes: it adopts no other
        self.expected_id = ring_id_for(start, end, self.seeds, "seed") if mode == "seed" else ""
        self.guards = Guards(ttl=max(10.0, 10 * router.cfg.gossip_interval))
        self.wall: Callable[[], float] = getattr(router.env, "wall", time.time)
        self._foreign: dict[int, str] = {}  # neighbour -> its conflicting ring id
        self.paxos = Paxos(self.me, quorum) if mode == "consensus" else None
        self.allocs: dict[str, int] = {}
        self.used: list[int] = []
        self.inconsistencies: list[dict[str, Any]] = []
        self.refused: set[int] = set()
        self.requesting = False
        self.on_change: list[Callable[[], None]] = []
        self._timer: Any = None  # space request timeout
        self._paxos_timer: Any = None  # next proposal
        self._paxos_heard = float("-inf")  # when another node's claims last changed
        self._proposals = 0
        self._skipped = False  # the last proposal tick deferred to another proposer
        self._heard_ipam = False  # any ipam gossip arrived (see RingConsensus._propose)
        self._consensus_since = 0.0
        self._answered: dict[int, float] = {}  # neighbour -> when we sent it our ring
        self._owned: list[tuple[int, int]] = []
        self._free_dirty = db is not None  # loaded free counts may be stale
        self._owned_gen: tuple[int, int] = (0, -1)
        self.stats = {"donated": 0, "requests": 0, "allocated": 0}
        if db is not None:
            raw = db.get("ring")
            if raw:
                saved = Ring.from_wire(raw)
                if (saved.start, saved.end) != (start, end):
                    raise ConfigError(f"the database {db.path} holds a ring for another range",
                                      fix="use the same IPAM range, or reset this peer")
                if self.expected_id and saved.ring_id != self.expected_id:
                    raise ConfigError(f"the database {db.path} holds a ring of another seed "
                                      "list (or another init) than seed="
                                      + ",".join(map(fmt_name, self.seeds)),
                                      fix="use the seed list the ring was made with, or "
                                          "remove ring.db to start afresh")
                self.ring = saved
            self.guards.removed.update(db.get("removed") or {})
            for h, a in db.allocs().items():
                self.allocs[h] = a
                bisect.insort(self.used, a)
            claims = db.get("paxos")
            if claims and self.paxos is not None:
                self.paxos.claims[self.me] = Paxos.from_wire({str(self.me): claims})[self.me]
        self.channel = router.new_gossip(CHANNEL, self)

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self.ring.empty():
            # peers that will not create a ring say so: an all-observer mesh can then tell
            # it is stuck (consensus peers show up in the Paxos claims instead)
            if self.mode != "consensus":
                self.guards.waiting[fmt_name(self.me)] = self.mode
                self.channel.gossip(IpamData(waiting={fmt_name(self.me): self.mode}))
            if self.mode == "seed" and self.me in self.seeds:
                self._init_ring(self.seeds, "seed")
            elif self.mode == "consensus":
                self._start_consensus()
        hello = self.gossip() if self.ring.empty() and self.router.conns else None
        if hello is not None:
            # neighbours connected before this channel existed sent their state into the
            # void (unknown channel): tell every peer we have no ring, ring holders answer
            self.channel.gossip_broadcast(hello)

    def _init_ring(self, peers: list[int], salt: str) -> None:
        self.ring.claim_for_peers(peers, ring_id_for(self.ring.start, self.ring.end, peers, salt))
        self._refresh_free()
        self._changed(list(self.ring.tokens))

    def stop(self) -> None:
        for timer in (self._timer, self._paxos_timer):
            if timer is not None:
                timer.cancel()

    # ---- helpers ----------------------------------------------------------------------
    def _with_next(self, tokens: list[int] | set[int]) -> Ring:
        """A sub-ring of ``tokens`` plus each one's successor: whoever learns that it owns
        a token must also learn where its range ends."""
        out = set(tokens)
        for t in tokens:
            nxt = self.ring.range_end(t)
            if nxt < self.ring.end:
                out.add(nxt)
        return self.ring.subset(sorted(out))

    def _changed(self, tokens: list[int]) -> None:
        if self.db is not None:
            self.db.put("ring", self.ring.to_wire())
        if tokens:
            self.channel.gossip(IpamData(self._with_next(tokens)))
        for cb in self.on_change:
            cb()

    def _used_in(self, lo: int, hi: int) -> int:
        return bisect.bisect_left(self.used, hi) - bisect.bisect_left(self.used, lo)

    def _refresh_free(self) -> list[int]:
        """Update our tokens' free counts; return tokens that changed."""
        changed = []
        for t, hi in list(self.owned()):
            free = hi - t - self._used_in(t, hi)
            if self.ring.entries[t].free != free:
                self.ring.set_entry(t, self.me, free)
                changed.append(t)
        return changed

    def owned(self) -> list[tuple[int, int]]:
        """Our ranges (cached per ring generation: the ring may hold thousands of tokens)."""
        if self._owned_gen != (id(self.ring), self.ring.gen):
            self._owned = self.ring.owned(self.me)
            self._owned_gen = (id(self.ring), self.ring.gen)
        return self._owned

    def ready(self) -> bool:
        return not self.ring.empty()

    def free(self) -> int:
        return sum(hi - lo - self._used_in(lo, hi) for lo, hi in self.owned())

    # ---- allocation -------------------------------------------------------------------
    def try_allocate(self, handle: str) -> int | None:
        if handle in self.allocs:
            return self.allocs[handle]
        self.check_refusal()
        for lo, hi in self.owned():
            if self._used_in(lo, hi) >= hi - lo:
                continue
            i = bisect.bisect_left(self.used, lo)
            addr = lo
            while i < len(self.used) and self.used[i] == addr:
                i, addr = i + 1, addr + 1
            return self._take(handle, addr)
        self.request_space()
        return None

    def claim(self, handle: str, addr: int) -> int | None:
        """Allocate a specific address; None while the ring is not ready."""
        if self.allocs.get(handle) == addr:
            return addr
        if self.ring.empty():
            return None
        self.check_refusal()
        owner = self.ring.owner_entry(addr)
        if not self.ring.start <= addr < self.ring.end or owner is None:
            raise IPAMError(f"address {addr} is outside the IPAM range")
        if owner.peer != self.me:
            raise IPAMError(f"address is owned by peer {fmt_name(owner.peer)}",
                            fix="claim it on that peer, or let this peer allocate one")
        i = bisect.bisect_left(self.used, addr)
        if i < len(self.used) and self.used[i] == addr:
            raise IPAMError("address is already allocated to another handle")
        return self._take(handle, addr)

    def _take(self, handle: str, addr: int) -> int:
        if self.db is not None:
            self.db.put_alloc(handle, addr)  # on disk before it is handed out
        self.allocs[handle] = addr
        bisect.insort(self.used, addr)
        self.stats["allocated"] += 1
        self._free_hint_changed(addr)
        return addr

    def _free_hint_changed(self, addr: int) -> None:
        """Free counts are hints for donor choice: gossip them at once only when a range
        becomes full or stops being full; otherwise with the next full gossip."""
        owner = self.ring.owner_entry(addr)
        if owner is None:
            return
        hi = self.ring.range_end(owner.token)
        free = hi - owner.token - self._used_in(owner.token, hi)
        if (free == 0) != (owner.free == 0):
            self._changed(self._refresh_free())
        else:
            self._free_dirty = True

    def release(self, handle: str) -> int | None:
        addr = self.allocs.pop(handle, None)
        if addr is None:
            return None
        if self.db is not None:
            self.db.del_alloc(handle)
        self.used.remove(addr)
        self._free_hint_changed(addr)
        return addr

    # ---- Gossiper ---------------------------------------------------------------------
    def gossip(self) -> GossipData | None:
        g = self.guards
        for peer, rid in list(self._foreign.items()):  # rings still touching: re-report
            if peer in self.router.conns:
                g.conflict_seen(self.ring.ring_id or self.expected_id, rid, self.wall())
            else:
                del self._foreign[peer]
        data = IpamData(removed=g.removed, conflicts=g.live_conflicts(self.wall()),
                        waiting=g.waiting if self.ring.empty() and not self.paxos else None)
        if not self.ring.empty():
            if self._free_dirty:
                self._free_dirty = False
                if self._refresh_free() and self.db is not None:
                    self.db.put("ring", self.ring.to_wire())
            data.ring = self.ring
        elif self.paxos is not None:
            data.paxos = self.paxos.to_wire()
        return None if data.empty() else data

    def on_gossip(self, sender: int, payload: bytes) -> GossipData | None:
        try:
            d = json.loads(payload)
            if not isinstance(d, dict):
                raise ValueError("not an object")
            self._heard_ipam = True
            raw_ring = d.get("ring")
            paxos = Paxos.from_wire(d["paxos"]) if "paxos" in d else None
            if raw_ring is not None and not isinstance(raw_ring, dict):
                raise ValueError("ring is not an object")
            delta = self.guards.merge(d, self.wall())  # before the ring: see _check_lost
        except (ValueError, TypeError, KeyError, IndexError, AttributeError,
                RecursionError) as exc:
            raise FrameError("bad-ipam", str(exc)[:80]) from exc
        if fmt_name(self.me) in (delta.removed or {}):
            self._report(sender, "removed", f"we were removed with rmpeer (our ranges went "
                         f"to {self.guards.removed[fmt_name(self.me)]['heir']}): we refuse to "
                         "allocate and yield our old ranges")
        if self.guards.removed:
            back = {fmt_name(n) for n in self.router.topology.reachable()} & set(
                self.guards.removed) - {fmt_name(self.me)}
            for name in sorted(back):
                self._report(sender, "removed-back", f"peer {name}, removed with rmpeer, is "
                             "reachable again: it refuses to allocate until it restarts "
                             "under a new name")
        if raw_ring is not None:
            try:
                rid = raw_ring.get("id") if isinstance(raw_ring, dict) else None
                if (self.expected_id and rid != self.expected_id and raw_ring.get("entries")
                        and (self.ring.empty() or self.ring.ring_id == self.expected_id)):
                    raise RingMismatch(f"ring {rid} is not the ring our seed list makes "
                                       f"({self.expected_id})")
                changed = self.ring.merge_wire(raw_ring)
            except RingMismatch as exc:
                self._report(sender, "ring-mismatch", str(exc))
                self._foreign[sender] = str(rid)
                seen = self.guards.conflict_seen(self.ring.ring_id or self.expected_id,
                                                 str(rid), self.wall())
                if seen is not None:
                    delta.merge(seen)
                return None if delta.empty() else delta
            except ValueError as exc:
                raise FrameError("bad-ipam", str(exc)[:80]) from exc
            if changed:
                lost = [old.token for old, new in changed
                        if old is not None and old.peer == self.me and new.peer != self.me]
                fixed = self._check_lost(lost, sender) if lost else []
                delta.ring = self._with_next({e.token for _, e in changed} | set(fixed))
                self.requesting = self.requesting and self.free() == 0
                self._changed([])
                self._ring_adopted()
        elif not self.ring.empty():
            self._answer_ringless(sender, d)
        elif paxos is not None and self.paxos is not None:
            self._on_paxos(paxos, delta)
        return None if delta.empty() else delta

    def _check_lost(self, lost: list[int], sender: int) -> list[int]:
        """Tokens we owned that a merge gave away (only we may do that): reassert those
        holding our allocations (version above the intruder's), yield empty ones."""
        fixed = []
        removed = fmt_name(self.me) in self.guards.removed  # never fight for old ranges
        for t in lost:
            e = self.ring.entries[t]
            hi = self.ring.range_end(t)
            gone = fmt_name(e.peer) in self.guards.removed  # stale entries of a removed peer
            if (self._used_in(t, hi) or gone) and not removed:
                self.ring._put(Entry(t, self.me, e.version + 1, hi - t - self._used_in(t, hi)))
                fixed.append(t)
                self._report(sender, "reasserted", f"peer {fmt_name(e.peer)} took our range "
                             f"at token {t} holding live allocations; we reasserted ownership")
            else:
                self._report(sender, "yielded", f"range at token {t} moved to "
                             f"{fmt_name(e.peer)} without our consent; it was empty")
        return fixed

    def _report(self, sender: int, kind: str, message: str) -> None:
        entry = {"kind": kind, "from": fmt_name(sender), "message": message,
                 "time": round(self.router.env.now(), 3)}
        if not self.inconsistencies or self.inconsistencies[-1]["message"] != message:
            self.inconsistencies.append(entry)
            del self.inconsistencies[:-50]
        self.router.log(logging.WARNING, kind, entry["from"], "ring: %s from %s: %s", kind,
                        entry["from"], message)

    # ---- status -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        sizes = self.ring.size_by_peer()
        free = self.ring.free_by_peer()
        total = self.ring.end - self.ring.start
        return {
            "mode": self.mode, "ring_id": self.ring.ring_id, "ready": self.ready(),
            "range": [self.ring.start, self.ring.end],
            "owners": [{"peer": fmt_name(p), "nickname": self.router.peer_nickname(p),
                        "size": sizes[p], "free": free.get(p, 0),
                        "share": round(100.0 * sizes[p] / total, 2),
                        "reachable": p in self.router.topology.reachable()}
                       for p in sorted(sizes)],
            "allocated_here": len(self.allocs),
            "consensus": self.paxos.describe() if self.paxos is not None else None,
            "seeds": [fmt_name(s) for s in self.seeds], "requesting": self.requesting,
            "inconsistencies": list(self.inconsistencies), "stats": dict(self.stats),
            **self.describe_guards(),
        }
