"""Helpers for the weave unit tests (simulated mesh, no sockets)."""

from __future__ import annotations

from fabric.mesh.router import Router
from fabric.mesh.sim import SimNet


class SimHost:
    """A MeshHost over a simulated router: calls run inline, timers on the SimNet."""

    def __init__(self, net: SimNet, router: Router) -> None:
        self.net, self.router = net, router

    def call(self, fn, *args, timeout: float = 30):
        return fn(*args)

    def call_later(self, delay, fn):
        return self.net.call_later(delay, fn)
