"""A discrete-event simulated network for in-process mesh routers.

Connections have a fixed one-way latency each (so, like TCP, they keep order);
``loss`` drops messages (and dial attempts) at random; ``partition(groups)``
drops traffic between groups and, after ``heartbeat_timeout``, closes the
connections that cross them, as heartbeats would; ``heal()`` lets the routers'
reconnect backoff bring them back. Frames travel as bytes through the real
encoder and decoder. Time is simulated seconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from fabric.mesh.router import Router
from fabric.mesh.wire import FrameError, decode_body

__all__ = ["SimNet", "SimConn"]


class _Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimConn:
    def __init__(self, net: SimNet, router: Router, remote_router: Router, address: str,
                 outbound: bool, latency: float) -> None:
        self.net, self.router, self.peer_router = net, router, remote_router
        self.remote = remote_router.name
        self.remote_nickname = remote_router.nickname
        self.remote_uid = remote_router.uid
        self.address, self.outbound, self.latency = address, outbound, latency
        self.other: SimConn | None = None
        self.open = True

    def send(self, data: bytes) -> None:
        if not self.open or self.other is None:
            return
        if self.net.blocked(self.router, self.peer_router) or (
                self.net.loss and self.net.rng.random() < self.net.loss):
            self.net.dropped += 1
            return
        other = self.other
        self.net.call_later(self.latency, lambda: other._deliver(data))

    def _deliver(self, data: bytes) -> None:
        if not self.open:
            return
        try:
            frame = decode_body(data[4:])
        except FrameError as exc:
            self.router.rejected[exc.reason] += 1
            return
        self.router.handle_frame(self, frame, len(data))

    def close(self, reason: str) -> None:
        """Like TCP: frames already sent still arrive, then the other end sees the close."""
        for c, delay in ((self, 0.0), (self.other, self.latency)):
            if c is not None and c.open:
                self.net.call_later(delay, lambda c=c: c._closed(reason))
        self.open = False

    def _closed(self, reason: str) -> None:
        self.open = False
        self.router.remove_connection(self, reason)


class SimNet:
    def __init__(self, seed: int = 0, latency: tuple[float, float] = (0.001, 0.005),
                 loss: float = 0.0, heartbeat_timeout: float = 0.5) -> None:
        self.rng = random.Random(seed)
        self.latency, self.loss, self.hb_timeout = latency, loss, heartbeat_timeout
        self._now = 0.0
        self._heap: list[tuple[float, int, _Timer, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.routers: dict[str, Router] = {}  # address -> router
        self.group: dict[int, int] = {}  # router name -> partition group
        self.dropped = 0

    # ---- Env ------------------------------------------------------------------------
    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer()
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), t, fn))
        return t

    def dial(self, router: Router, address: str) -> None:
        target = self.routers.get(address)
        lat = self.rng.uniform(*self.latency)

        def done() -> None:
            if target is None or target._stopped or self.blocked(router, target) or (
                    self.loss and self.rng.random() < self.loss):
                router.dial_failed(address, "connection refused" if target is None
                                   else "timed out")
                return
            mine = SimConn(self, router, target, address, True, lat)
            theirs = SimConn(self, target, router, f"sim:{router.name}", False, lat)
            mine.other, theirs.other = theirs, mine
            router.add_connection(mine)
            target.add_connection(theirs)

        self.call_later(2 * lat, done)

    # ---- topology of the simulated network ------------------------------------------
    def add(self, address: str, router: Router) -> None:
        self.routers[address] = router

    def blocked(self, a: Router, b: Router) -> bool:
        return self.group.get(a.name, 0) != self.group.get(b.name, 0)

    def partition(self, groups: list[list[int]]) -> None:
        self.group = {n: i for i, g in enumerate(groups) for n in g}

        def expire() -> None:
            for r in self.routers.values():
                for c in list(r.conns.values()):
                    if isinstance(c, SimConn) and self.blocked(c.router, c.peer_router):
                        c.close("heartbeat timeout")
        self.call_later(self.hb_timeout, expire)

    def heal(self) -> None:
        self.group = {}

    def run_until(self, t_end: float, check: Callable[[], Any] | None = None,
                  check_every: float = 0.01) -> Any:
        """Run events up to ``t_end``; if ``check`` returns truthy at a check point, stop
        and return it."""
        next_check = self._now + check_every
        while self._heap and self._heap[0][0] <= t_end:
            when, _, timer, fn = heapq.heappop(self._heap)
            if check is not None and when >= next_check:
                self._now = next_check
                res = check()
                if res:
                    heapq.heappush(self._heap, (when, next(self._seq), timer, fn))
                    return res
                next_check += check_every
            self._now = when
            if not timer.cancelled:
                fn()
        self._now = max(self._now, t_end)
        return check() if check is not None else None
