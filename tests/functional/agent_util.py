"""A real agent (`fabric up`: hostgw backend, fake IPAM) in a host namespace of its own, for
the functional tests of fabric-cni and of the policy engine; pods are namespaces next to it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from fabric.control import call
from fabric.errors import FabricError
from tests.functional.netns_util import sh

FABRIC = str(Path(sys.executable).with_name("fabric"))


class AgentHost:
    """Namespace ``<tag>-h`` whose eth0 (one end of a veth pair) has ``address``, running
    the agent for one network ``name`` on ``cidr`` (policy engine ``engine`` if given).
    ``stop()`` ends the agent (`fabric down`) and deletes every namespace named ``<tag>*``."""

    def __init__(self, tag: str, tmp: Path, *, name: str, cidr: str, address: str,
                 engine: str | None = None) -> None:
        self.tag, self.name, self.cidr, self.address, self.engine = tag, name, cidr, address, engine
        self.host = f"{tag}-h"
        self.state = tmp / "state"
        self.sock = self.state / "agent.sock"
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen | None = None

    def create(self, bridge_nf: int | None = None) -> None:
        """The host namespace; ``bridge_nf`` sets its net.bridge.bridge-nf-call-iptables."""
        sh("ip", "netns", "add", self.host)
        sh("ip", "link", "set", "lo", "up", ns=self.host)
        if bridge_nf is not None:
            sh("sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={bridge_nf}", ns=self.host)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=self.host)
        sh("ip", "addr", "add", self.address, "dev", "eth0", ns=self.host)
        for dev in ("eth0", "eth0p"):
            sh("ip", "link", "set", dev, "up", ns=self.host)

    def start_agent(self) -> None:
        """`fabric up` in the host namespace; returns once every network is ready."""
        policy = ["--policy", self.engine] if self.engine else []
        argv = ["ip", "netns", "exec", self.host, FABRIC, "up", "--backend", "hostgw",
                "--network", self.cidr, "--name", self.name, "--ipam", "fake", *policy,
                "--iface", "eth0", "--node-name", "n1", "--state-dir", str(self.state)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "a"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st = call(self.sock, {"op": "status"}, timeout=2)
                if all(n["ready"] for n in st["networks"]):
                    return
            except FabricError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            time.sleep(0.2)
        raise AssertionError("agent not ready: " + self.log.read_text()[-2000:])

    def stop_agent(self) -> None:
        """SIGTERM: a graceful stop that leaves pods and kernel state in place."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    @contextmanager
    def started(self, bridge_nf: int | None = None) -> Iterator[Self]:
        """create() and start_agent(); stop() afterwards whatever happened."""
        try:
            self.create(bridge_nf)
            self.start_agent()
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run([FABRIC, "down", "--state-dir", str(self.state)],
                           capture_output=True, timeout=60)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith(self.tag):
                subprocess.run(["ip", "netns", "del", line.split()[0]], check=False)
