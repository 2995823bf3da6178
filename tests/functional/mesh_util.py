"""Ring IPAM peers for the mesh tests: ``python -m fabric.ipam.ring_peer`` processes on
loopback addresses, a ring IPAM context, and a poll that returns the first true value."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from fabric.api import NetworkContext, NetworkSpec, Node
from tests.functional.jsonlines import JsonLinesProc


def ring_ctx(tmp: Path, **cfg: Any) -> NetworkContext:
    """A ring IPAM context for 10.32.0.0/16 on 127.77.1.1 (consensus of one by default)."""
    spec = NetworkSpec("ringt", IPv4Network("10.32.0.0/16"), "fake", ipam="ring",
                       ipam_config={"port": 0, "init": "consensus=1", "gossip_interval": 1,
                                    "wait": 10, **cfg})
    return NetworkContext(spec, Node("n1", IPv4Address("127.77.1.1"), "lo", 1500), tmp)


class Peer(JsonLinesProc):
    """A ring peer process; ``name`` and ``address`` come from its hello line."""

    def __init__(self, state: Path, host: str, *extra: str, port: int = 0) -> None:
        super().__init__([sys.executable, "-m", "fabric.ipam.ring_peer", "--state", str(state),
                          "--host", host, "--port", str(port), "--init", "consensus=3",
                          "--gossip-interval", "0.5", *extra], stderr=None, timeout=60.0)

    def spawn(self) -> None:
        super().spawn()
        hello = json.loads(self.line())
        assert hello["ready"], hello
        self.name, self.address = hello["name"], hello["address"]

    start = spawn


def until(pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``pred`` every 0.1 s; its first true value, or AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        res = pred()
        if res:
            return res
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
