"""Backends in emulated hosts without the agent: a driver process per host namespace
(``backend_driver.py``) and the two-host environment the kernel tests share."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.functional.jsonlines import JsonLinesProc
from tests.functional.netns_util import add_ns, namespaces, sh, wire

DRIVER = str(Path(__file__).with_name("backend_driver.py"))


class Driver(JsonLinesProc):
    """One backend in namespace ``ns``, its log in ``log``; ``d(op=...)`` answers a dict."""

    def __init__(self, ns: str, log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115 - closed by close()
        super().__init__([sys.executable, DRIVER], ns=ns, stderr=self.log, timeout=120.0)

    def __call__(self, **cmd: Any) -> dict[str, Any]:
        return self.request(json.dumps(cmd))

    def ok(self, **cmd: Any) -> Any:
        return self.cmd(json.dumps(cmd))

    def close(self) -> None:
        """End of input: the driver stops the backend and exits (killed after 20 s)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close()


@contextlib.contextmanager
def two_host_env(prefix: str, tmp_path: Path, *,
                 teardown: bool = False) -> Iterator[dict[str, Any]]:
    """Switch + two hosts on one segment + two pod namespaces, a backend driver per host."""
    with namespaces(prefix) as tag:
        sw, h1, h2, p1, p2 = (f"{tag}-{n}" for n in ("sw", "h1", "h2", "p1", "p2"))
        for ns in (sw, h1, h2, p1, p2):
            add_ns(ns)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=sw)
        sh("ip", "link", "set", "br0", "up", ns=sw)
        wire(sw, "br0", h1, "198.18.200.11/24", "s1")
        wire(sw, "br0", h2, "198.18.200.12/24", "s2")
        drivers = [Driver(h1, tmp_path / "h1.log"), Driver(h2, tmp_path / "h2.log")]
        try:
            yield {"ns": (h1, h2), "pods": (p1, p2), "drivers": drivers, "tmp": tmp_path}
        finally:
            for d in drivers:
                if teardown:
                    with contextlib.suppress(AssertionError, OSError, ValueError,
                                             RuntimeError, TimeoutError):
                        d(op="teardown")
                d.close()


def bring_up(env: dict[str, Any], backend: str, config: dict | None = None) -> list[Any]:
    """Both hosts: init with chunks 10.99.1.0/24 and 10.99.2.0/24, peer each other, one pod
    each (10.99.1.5, 10.99.2.5). Returns each host's backend data."""
    drivers = env["drivers"]
    chunks = ("10.99.1.0/24", "10.99.2.0/24")
    ips = ("198.18.200.11", "198.18.200.12")
    data = [d.ok(op="init", net="t", cidr="10.99.0.0/16", backend=backend, config=config or {},
                 node=f"h{i+1}", ip=ips[i], state=str(env["tmp"] / f"h{i+1}"),
                 chunk=chunks[i]) for i, d in enumerate(drivers)]
    for i, d in enumerate(drivers):
        j = 1 - i
        d.ok(op="peer", name=f"h{j+1}", ip=ips[j], chunk=chunks[j], data=data[j])
    for i, d in enumerate(drivers):
        d.ok(op="attach", cid=f"c{i}", netns=f"/run/netns/{env['pods'][i]}",
             pod_ip=f"10.99.{i+1}.5", chunk=chunks[i])
    return data
