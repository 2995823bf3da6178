"""The control socket under a burst: every simultaneous client gets its answer.

Issue 16: 200 clients at once saw 17-24 % fail with EAGAIN (backlog 64, and a client
whose non-blocking connect gave up at once instead of waiting for its deadline).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from fabric.agent.server import ControlServer
from fabric.control import call
from fabric.errors import FabricError


def _burst(sock: Path, clients: int, timeout: float) -> list[str]:
    """``clients`` threads connect at the same instant; returns the failures."""
    failures: list[str] = []
    start = threading.Barrier(clients)

    def one(i: int) -> None:
        start.wait()
        try:
            assert call(sock, {"op": "echo", "i": i}, timeout=timeout) == i
        except (FabricError, AssertionError) as exc:
            failures.append(f"{i}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return failures


def test_clients_wait_while_the_backlog_is_full(tmp_path: Path) -> None:
    """A listener with backlog 1 that accepts only after 0.5 s: nobody may give up early."""
    path = tmp_path / "slow.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        time.sleep(0.5)
        for _ in range(20):
            conn, _ = listener.accept()
            with conn:
                req = json.loads(conn.makefile().readline())
                conn.sendall(json.dumps({"ok": True, "result": req["i"]}).encode() + b"\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        failures = _burst(path, 20, timeout=10)
    finally:
        server.join(15)
        listener.close()
    assert failures == [], failures


def test_200_simultaneous_clients_all_get_answers(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "agent.sock", lambda req: req["i"])
    server.start()
    try:
        failures = _burst(server.path, 200, timeout=20)
    finally:
        server.close()
    assert failures == []
