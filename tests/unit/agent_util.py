"""The real agent in this process for unit tests (in-memory fake backend and IPAM: no root,
no kernel), and fabric-cni run in-process against it."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fabric.agent.config import AgentConfig
from fabric.agent.daemon import Agent
from fabric.cni.main import run

NETNS = "/proc/self/ns/net"  # exists; the fake backend creates nothing in it


def start_in_thread(agent: Agent) -> threading.Thread:
    """``agent.run()`` in a daemon thread; returns once every network is ready."""
    t = threading.Thread(target=agent.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not all(n.ready for n in agent.networks.values()):
        assert time.monotonic() < deadline, "agent did not become ready"
        time.sleep(0.02)
    return t


@contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    """The agent running (start_in_thread) for the block; stopped afterwards."""
    t = start_in_thread(agent)
    try:
        yield agent
    finally:
        agent.request_stop()
        t.join(5)


class RunningAgent:
    """The real agent in a thread of this process (fake backend/IPAM); a context manager."""

    def __init__(self, state: Path, nets: list[dict[str, Any]]) -> None:
        cfg = AgentConfig.from_json({"node": {"name": "n1", "iface": "lo"},
                                     "stateDir": str(state), "networks": nets})
        self.agent = Agent(cfg)
        self.socket = str(state / "agent.sock")

    def __enter__(self) -> RunningAgent:
        self.thread = start_in_thread(self.agent)
        return self

    def stop(self, teardown: bool = False) -> None:
        self.agent.request_stop(teardown)
        self.thread.join(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def one_net(name: str = "fk", cidr: str = "10.50.0.0/16") -> dict[str, Any]:
    return {"backend": "fake", "network": cidr, "name": name}


def cni(verb: str, conf: dict[str, Any], cid: str = "c1", ifname: str = "eth0",
        **env: str) -> tuple[int, Any]:
    environ = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
               "CNI_NETNS": NETNS, "CNI_PATH": "/usr/lib/cni", **env}
    out = io.StringIO()
    rc = run(environ, io.BytesIO(json.dumps(conf).encode()), out, io.StringIO())
    return rc, json.loads(out.getvalue()) if out.getvalue() else None


def netconf(sock: str, version: str = "1.1.0", **kw: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "netfabric", "type": "fabric-cni",
            "agentSocket": sock, **kw}
