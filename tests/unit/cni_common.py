"""Shared fixtures of the fabric-cni unit tests: a plugin runner and a scripted agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fabric.cni.testing import FakeAgent, Runner

NETNS = "/proc/self/ns/net"  # exists; nothing is created in it (the agent is scripted)
AGENT_RESULT = {
    "interfaces": [{"name": "fk.0a1b2c3d"},
                   {"name": "eth0", "mac": "0a:58:0a:32:01:02", "sandbox": NETNS, "mtu": 1450}],
    "ips": [{"address": "10.50.1.2/24", "gateway": "10.50.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.50.1.1"}],
    "dns": {},
}


class Plugin(Runner):
    def __init__(self, state: Path) -> None:
        super().__init__(state / "agent.sock", netns=NETNS)
        self.state = state


def agent(plugin: Plugin, reply) -> FakeAgent:
    return FakeAgent(plugin.socket, reply)


def assert_error(rc: int, out: Any, code: int, version: str = "1.1.0") -> None:
    assert rc == 1, out
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == code, out
    assert out["cniVersion"] == version
    assert isinstance(out["msg"], str) and out["msg"] and isinstance(out["details"], str)


# -- ADD --
