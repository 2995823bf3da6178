"""Connection targets with exponential backoff (weave's ConnectionMaker), a Router mixin.

``connect``/``forget`` change the set of addresses the router keeps dialling; a failed
dial or a lost connection is retried after ``backoff_base * 2**failures`` (capped at
``backoff_max``, +-20 % jitter)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from fabric.mesh.router import Router

__all__ = ["Target", "Targets"]


@attrs.define
class Target:
    address: str
    state: str = "pending"  # pending | connecting | established | failed
    failures: int = 0
    last_error: str = ""
    timer: Any = None
    peer: int = 0  # who answered at this address last time


class Targets:
    def connect(self: Router, addresses: list[str]) -> None:
        for a in addresses:
            if a not in self.targets:
                t = self.targets[a] = Target(a)
                if self._periodic is not None:
                    self._dial(t)
        self._targets_changed()

    def forget(self: Router, addresses: list[str]) -> None:
        for a in addresses:
            t = self.targets.pop(a, None)
            if t is not None and t.timer is not None:
                t.timer.cancel()
        self._targets_changed()

    def _targets_changed(self: Router) -> None:
        if self.on_targets_changed:
            self.on_targets_changed(sorted(self.targets))

    def _dial(self: Router, t: Target) -> None:
        if self._stopped or t.address not in self.targets:
            return
        t.timer = None
        if t.peer in self.conns:
            t.state = "established"
            return
        t.state = "connecting"
        self.stats["dials"] += 1
        self.env.dial(self, t.address)

    def _retry_later(self: Router, t: Target, reason: str) -> None:
        t.failures += 1
        t.state, t.last_error = "failed", reason
        delay = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** min(t.failures - 1, 16))
        t.timer = self.env.call_later(delay * self.rng.uniform(0.8, 1.2),
                                      lambda: self._dial(t))

    def dial_failed(self: Router, address: str, reason: str) -> None:
        t = self.targets.get(address)
        if t is None or self._stopped:
            return
        self._retry_later(t, reason)

    def _redial_served_by(self: Router, peer: int, reason: str) -> None:
        """Targets served by ``peer`` (whose connection was lost) must be redialled."""
        for t in self.targets.values():
            if t.peer == peer and t.state == "established" and not self._stopped:
                self._retry_later(t, reason)
