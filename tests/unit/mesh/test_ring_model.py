"""Model test: 50 ring peers, random partitions and heals, concurrent allocations.

Three seed peers start with the whole range, so most allocations need donations.
Invariants after every step: no address is held twice anywhere, and every peer's
allocations lie in ranges it owns in its own view. After a final heal every peer
agrees on the ring (same tokens, owners, versions).
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from .helpers import START, allocators, build, converged

N = 50


class RingModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.routers = build(N, seed=3)
        # three seeds own everything at first: the other 47 must get space by donation,
        # across partitions (consensus itself is covered in test_ring.py)
        # a small range (a /22) so ranges get cut fine and donors run dry
        self.allocs = allocators(self.routers, seeds=[r.name for r in self.routers[:3]],
                                 start=START, end=START + 1022)
        assert self.net.run_until(10.0, lambda: all(a.ready() for a in self.allocs))
        self.count = 0

    @rule(peers=st.lists(st.integers(0, N - 1), min_size=1, max_size=25),
          k=st.integers(1, 4))
    def allocate(self, peers: list[int], k: int) -> None:
        for i in peers:  # same simulated instant on every peer: concurrent
            for _ in range(k):
                self.count += 1
                self.allocs[i].try_allocate(f"h{self.count}")

    @rule(i=st.integers(0, N - 1), pick=st.integers(0, 1000))
    def release(self, i: int, pick: int) -> None:
        handles = sorted(self.allocs[i].allocs)
        if handles:
            self.allocs[i].release(handles[pick % len(handles)])

    @rule(side=st.lists(st.booleans(), min_size=N, max_size=N))
    def partition(self, side: list[bool]) -> None:
        groups = [[r.name for r, s in zip(self.routers, side, strict=True) if s is b]
                  for b in (True, False)]
        self.net.partition([g for g in groups if g])

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(dt=st.floats(0.01, 1.5))
    def advance(self, dt: float) -> None:
        self.net.run_until(self.net.now() + dt)

    @invariant()
    def no_duplicates_and_owned(self) -> None:
        seen: dict[int, str] = {}
        for a in self.allocs:
            for h, addr in a.allocs.items():
                assert addr not in seen, f"{addr} held by {h} and {seen[addr]}"
                seen[addr] = h
                assert a.ring.owner_entry(addr).peer == a.me

    def teardown(self) -> None:
        self.net.heal()
        for a in self.allocs:  # one more wave after the heal
            self.count += 1
            a.try_allocate(f"h{self.count}")

        def settled() -> bool:
            rings = {json.dumps(a.ring.to_wire()) for a in self.allocs}
            return converged(self.routers) and len(rings) == 1
        assert self.net.run_until(self.net.now() + 20.0, settled, check_every=0.1), \
            "rings did not agree after healing"
        self.no_duplicates_and_owned()
        assert not any(a.inconsistencies for a in self.allocs)


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
