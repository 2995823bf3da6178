"""Consensus init liveness (weave's ``ipam`` allocator around ``ipam/paxos``), a RingAllocator
mixin: when to propose, backing off from a competing proposer, and how a peer without a
ring gets one.

* Proposers retry on a randomized, growing interval; a tick on which another proposer's
  higher round made progress lately is skipped (never two in a row), so two proposers do
  not keep pre-empting each other (a duel): the leading one finishes.
* The decided ring is broadcast (every peer, along the broadcast trees) besides the
  usual relay; the ring id depends on the agreed value only, so learners that see the
  same value decided under different rounds build the same ring.
* A peer that has a ring answers Paxos (or "waiting") gossip from a peer without one
  with its ring by unicast, as weave's ``sendRingUpdate``: a peer that missed the decision
  learns the ring on its next proposal instead of at the next periodic gossip (30 s).
* A ring learned from gossip ends our proposing for good; a peer told targets proposes
  only once a neighbour's gossip arrived (or after 3 x retry), which carries the ring if
  the mesh has one: a peer joining later learns the ring without a Paxos round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric.ipam.ring_guard import IpamData
from fabric.ipam.ring_paxos import Claims

if TYPE_CHECKING:
    from fabric.ipam.ring_alloc import RingAllocator

__all__ = ["RingConsensus"]

MAX_BACKOFF = 3  # the retry interval grows to at most 3 x retry * U(1, 2)


class RingConsensus:
    def _start_consensus(self: RingAllocator) -> None:
        self._consensus_since = self.router.env.now()
        self._paxos_timer = self.router.env.call_later(
            self.router.rng.uniform(0, self.retry / 4), self._propose)

    def _propose(self: RingAllocator) -> None:
        self._paxos_timer = None
        if not self.ring.empty() or self.paxos is None:
            return
        now = self.router.env.now()
        if (not self._heard_ipam and self.paxos.quorum > 1 and self.router.targets
                and now - self._consensus_since < 3 * self.retry):
            # the first word of a neighbour carries its ring if the mesh has one: wait
            # for it rather than start a round a ring holder would only answer
            self._paxos_timer = self.router.env.call_later(
                self.router.rng.uniform(0.1, 0.2) * self.retry, self._propose)
            return
        leader = self.paxos.leader()
        if (leader not in (0, self.me) and now - self._paxos_heard < self.retry
                and not self._skipped):
            self._skipped = True  # another proposer is getting somewhere: let it finish
        else:  # (but never skip twice: it may be unable to finish)
            self._skipped = False
            self._proposals += 1
            self.paxos.propose()
            self._paxos_step(True)
        if not self.ring.empty():
            return  # quorum 1: decided at once
        backoff = min(self._proposals, MAX_BACKOFF) or 1
        self._paxos_timer = self.router.env.call_later(
            self.retry * backoff * self.router.rng.uniform(1, 2), self._propose)

    def _paxos_step(self: RingAllocator, changed: bool) -> None:
        assert self.paxos is not None
        changed = self.paxos.think() or changed
        if self.db is not None and changed:
            self.db.put("paxos", self.paxos.claims[self.me].to_wire())
        if self.paxos.decided is not None and self.ring.empty():
            _, value = self.paxos.decided
            self._init_ring(list(value), "paxos")
            self.channel.gossip_broadcast(IpamData(self.ring))
            self._ring_adopted()
        elif changed:
            self.channel.gossip(IpamData(paxos={str(self.me): self.paxos.claims[self.me]
                                                .to_wire()}))

    def _on_paxos(self: RingAllocator, paxos: dict[int, Claims], delta: IpamData) -> None:
        """Paxos gossip while we have no ring: merge, relay what was new, think."""
        assert self.paxos is not None
        new = self.paxos.merge(paxos)
        if new:
            self._paxos_heard = self.router.env.now()
            delta.paxos = {str(k): self.paxos.claims[k].to_wire() for k in new}
        self._paxos_step(False)

    def _ring_adopted(self: RingAllocator) -> None:
        """We have a ring (decided, or learned from gossip): Paxos is over for us."""
        if self.paxos is not None:
            self.paxos.proposing = False
        if self._paxos_timer is not None:
            self._paxos_timer.cancel()
            self._paxos_timer = None

    def _answer_ringless(self: RingAllocator, sender: int, d: dict[str, Any]) -> None:
        """``sender`` gossiped Paxos claims or that it waits, so some peer has no ring:
        send it ours (at most once per ``retry`` per neighbour)."""
        if self.ring.empty() or not (d.get("paxos") or d.get("waiting")):
            return
        now = self.router.env.now()
        if now - self._answered.get(sender, float("-inf")) < self.retry:
            return
        self._answered[sender] = now
        data = self.gossip()
        if data is not None:
            self.channel.gossip_unicast(sender, b'{"op":"ring","data":' + data.encode() + b"}")
