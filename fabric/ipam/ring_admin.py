"""Ring administration and refusals: ``rmpeer``, ``reset``, why a peer will not allocate
and why it is still waiting for a ring. A mixin of :class:`RingAllocator`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fabric.errors import IPAMError
from fabric.ipam.ring_crdt import Entry
from fabric.ipam.ring_guard import IpamData
from fabric.mesh.names import fmt_name

if TYPE_CHECKING:
    from fabric.ipam.ring_alloc import RingAllocator

__all__ = ["RingAdmin"]


class RingAdmin:
    def _heir(self: RingAllocator, dead: int, tokens: list[int]) -> int | None:
        """Owner of the nearest preceding token not owned by ``dead`` (deterministic)."""
        if not tokens:
            return None
        idx = self.ring.tokens.index(tokens[0])
        for k in range(1, len(self.ring.tokens) + 1):
            e = self.ring.entries[self.ring.tokens[idx - k]]
            if e.peer != dead:
                return e.peer
        return None

    def rmpeer(self: RingAllocator, dead: int) -> int:
        """Hand a dead peer's tokens to a deterministic heir. Issued on several hosts at
        once, every host computes the same entries (same heir, version + 1), so the merge
        is idempotent instead of conflicting (weave PR 3078). Refused while it is alive.
        The peer is remembered as removed everywhere: if it comes back it refuses to
        allocate instead of taking its old ranges back."""
        if dead == self.me:
            raise IPAMError("cannot rmpeer ourselves", fix="use reset on this peer")
        if dead in self.router.topology.reachable():
            raise IPAMError(f"peer {fmt_name(dead)} is reachable",
                            fix="stop it first, or run reset on it")
        tokens = [t for t in self.ring.tokens if self.ring.entries[t].peer == dead]
        heir = self._heir(dead, tokens)
        if heir is None:
            return 0
        for t in tokens:
            e = self.ring.entries[t]
            self.ring._put(Entry(t, heir, e.version + 1, self.ring.range_end(t) - t))
        name = fmt_name(dead)
        if name not in self.guards.removed:
            self.guards.removed[name] = {"heir": fmt_name(heir), "by": fmt_name(self.me),
                                         "time": f"{self.wall():.0f}"}
            if self.db is not None:
                self.db.put("removed", self.guards.removed)
            self.channel.gossip(IpamData(removed={name: self.guards.removed[name]}))
        self.router.log(logging.WARNING, "rmpeer", name, "ring: rmpeer %s: %d range(s) "
                        "handed to %s", name, len(tokens), fmt_name(heir))
        self._changed(tokens + (self._refresh_free() if heir == self.me else []))
        return len(tokens)

    def reset(self: RingAllocator, heir: int | None = None) -> int:
        """Hand all our tokens to ``heir`` (default: deterministic neighbour), drop our
        allocations and Paxos state; the ring is kept so we rejoin as an observer-like peer."""
        tokens = [t for t, _ in self.owned()]
        heir = heir if heir is not None else self._heir(self.me, tokens)
        if tokens and heir is None:
            raise IPAMError("no other peer to hand our ranges to",
                            fix="connect to another peer first")
        for t in tokens:
            e = self.ring.entries[t]
            self.ring._put(Entry(t, heir or 0, e.version + 1, self.ring.range_end(t) - t))
        self.allocs.clear()
        self.used.clear()
        if self.db is not None:
            self.db.clear_allocs()
            self.db.delete("paxos")
        self._changed(tokens)
        if tokens:
            self.channel.gossip_broadcast(IpamData(self._with_next(tokens)))
        return len(tokens)

    # ---- refusals ---------------------------------------------------------------------
    def refusal(self: RingAllocator) -> tuple[str, str] | None:
        """(message, fix) when this peer must not allocate, else None."""
        coll = self.router.name_collision
        if coll is not None:
            return coll["message"], coll["fix"]
        gone = self.guards.removed.get(fmt_name(self.me))
        if gone is not None:
            return (f"this peer ({fmt_name(self.me)}) was removed with rmpeer by {gone['by']}; "
                    f"its ranges now belong to {gone['heir']}: it refuses to allocate",
                    "stop this peer, remove its state directory (mesh.db, ring.db) and start "
                    "it again: it rejoins under a new name")
        if not self.ring.empty():
            others = self.guards.active_conflicts(self.ring.ring_id, self.wall())
            if others:
                return (f"ring conflict: our ring {self.ring.ring_id} and ring(s) "
                        f"{', '.join(others)} were initialised separately and meet in this "
                        "mesh (mismatched seed lists or separate consensus); allocation is "
                        "stopped on every peer of both rings to avoid duplicates",
                        "give every peer the same seed list (or one consensus), then run "
                        "`reset` on the peers of one of the rings; allocation resumes once "
                        "the rings no longer meet")
        return None

    def check_refusal(self: RingAllocator) -> None:
        why = self.refusal()
        if why is not None:
            self.router.log(logging.ERROR, "refusing", fmt_name(self.me),
                            "ring: refusing to allocate: %s", why[0])
            raise IPAMError(why[0], fix=why[1])

    def waiting_reason(self: RingAllocator) -> str | None:
        """Why no ring exists yet when nobody will ever create one, else None."""
        if not self.ring.empty():
            return None
        reach = self.router.topology.reachable() | {self.me}
        modes = [self.guards.waiting.get(fmt_name(n)) for n in reach]
        if all(m == "observer" for m in modes):
            why = (f"no peer in this mesh will create the IPAM ring: all {len(reach)} "
                   "reachable peer(s) are observers")
        elif self.mode == "seed" and not reach & set(self.seeds):
            why = (f"waiting for the seed peer(s) {', '.join(map(fmt_name, self.seeds))}: "
                   "none is reachable")
        else:
            return None
        self.router.log(logging.WARNING, "no-ring", fmt_name(self.me), "ring: %s", why)
        return why

    def require_ready(self: RingAllocator) -> None:
        if self.ready():
            return
        why = self.waiting_reason()
        if why and "observer" in why:
            raise IPAMError(why, fix="start at least one peer with init consensus[=N] or "
                                     "seed=NAME,..., or connect to a mesh that has a ring")
        raise IPAMError(why or f"the IPAM ring is not ready (init {self.mode})",
                        fix="connect this peer to the others, or lower consensus=N to the "
                            "number of peers")

    def describe_guards(self: RingAllocator) -> dict[str, Any]:
        why = self.refusal()
        return {"refusing": why[0] if why else None, "waiting": self.waiting_reason(),
                "removed": sorted(self.guards.removed),
                "conflicts": sorted(self.guards.live_conflicts(self.wall()))}
