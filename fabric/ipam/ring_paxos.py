"""Paxos over gossip (weave's ``ipam/paxos`` idea) to agree on the initial ring peers.

Every participant owns one :class:`Claims` entry (promise, accepted proposal
and value) and gossips the whole map; merge keeps each node's newest entry.
``think()`` runs one step of the three roles after each merge:

* acceptor: promise the highest proposal seen; accept a proposer's value
  when its accepted id equals our promise;
* proposer: once a quorum promised our id, accept (with the value of the
  highest earlier acceptance among them, else the peers that promised our id);
* learner: a quorum accepted the same id -> ``decided`` holds the value.

Liveness (when to propose again, backing off from a competing proposer, adopting a
ring learned from gossip) is the allocator's job: :mod:`fabric.ipam.ring_alloc`.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Claims", "Paxos"]

_ZERO = (0, 0)


@attrs.frozen
class Claims:
    promise: tuple[int, int] = _ZERO  # (round, proposer)
    accepted: tuple[int, int] = _ZERO
    value: tuple[int, ...] = ()

    def key(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (self.promise, self.accepted)

    def to_wire(self) -> list[Any]:
        return [list(self.promise), list(self.accepted), list(self.value)]

    @classmethod
    def from_wire(cls, raw: Any) -> Claims:
        p, a, v = raw
        nums = [p[0], p[1], a[0], a[1], *v]
        if len(p) != 2 or len(a) != 2 or not all(type(x) is int and x >= 0 for x in nums):
            raise ValueError("malformed Paxos claims")
        return cls((p[0], p[1]), (a[0], a[1]), tuple(v))


class Paxos:
    def __init__(self, me: int, quorum: int) -> None:
        self.me = me
        self.quorum = quorum
        self.claims: dict[int, Claims] = {me: Claims()}
        self.proposing = False
        self.decided: tuple[tuple[int, int], tuple[int, ...]] | None = None

    def merge(self, other: dict[int, Claims]) -> list[int]:
        """Keep each other node's newest claims; the nodes whose claims were new."""
        changed = []
        for node, c in other.items():
            if node == self.me:
                continue
            cur = self.claims.get(node)
            if cur is None or c.key() > cur.key():
                self.claims[node] = c
                changed.append(node)
        return changed

    def leader(self) -> int:
        """The proposer of the highest round anybody promised (0: none yet)."""
        return max(c.promise for c in self.claims.values())[1]

    def propose(self) -> None:
        """Start (or restart with a higher round) a proposal of our own."""
        top = max(max(c.promise[0], c.accepted[0]) for c in self.claims.values())
        mine = self.claims[self.me]
        self.claims[self.me] = attrs.evolve(mine, promise=(top + 1, self.me))
        self.proposing = True

    def think(self) -> bool:
        """One step of every role; True if our own entry changed."""
        mine = self.claims[self.me]
        new = mine
        # acceptor: promise the highest proposal anybody made
        best = max(c.promise for c in self.claims.values())
        if best > new.promise:
            new = attrs.evolve(new, promise=best)
        # acceptor: accept the value of the proposer we promised, once it accepted itself
        prop = self.claims.get(new.promise[1])
        if (prop is not None and new.promise != _ZERO and prop.accepted == new.promise
                and new.accepted != new.promise):
            new = attrs.evolve(new, accepted=new.promise, value=prop.value)
        # proposer: quorum of promises for our id -> accept
        if self.proposing and new.promise[1] == self.me and new.accepted != new.promise:
            promised = [c for c in self.claims.values() if c.promise == new.promise]
            if len(promised) >= self.quorum:
                prior = max(promised, key=lambda c: c.accepted)
                # the value is the set that agreed (promised this round): they are alive
                # and connected now; peers merely heard of may be gone (weave hands the
                # range to the round's peer set too). Later peers get space by donation.
                agreed = tuple(sorted(n for n, c in self.claims.items()
                                      if c.promise == new.promise or n == self.me))
                value = prior.value if prior.accepted != _ZERO else agreed
                new = attrs.evolve(new, accepted=new.promise, value=value)
        self.claims[self.me] = new
        # learner
        if self.decided is None:
            count: dict[tuple[int, int], int] = {}
            for c in self.claims.values():
                if c.accepted != _ZERO:
                    count[c.accepted] = count.get(c.accepted, 0) + 1
            for pid, n in count.items():
                if n >= self.quorum:
                    val = next(c.value for c in self.claims.values() if c.accepted == pid)
                    self.decided = (pid, val)
        return new != mine

    def to_wire(self) -> dict[str, Any]:
        return {str(k): v.to_wire() for k, v in self.claims.items()}

    @staticmethod
    def from_wire(raw: Any) -> dict[int, Claims]:
        return {int(k): Claims.from_wire(v) for k, v in raw.items()}

    def describe(self) -> dict[str, Any]:
        return {"quorum": self.quorum, "participants": len(self.claims),
                "proposing": self.proposing,
                "decided": None if self.decided is None else list(self.decided[1])}
