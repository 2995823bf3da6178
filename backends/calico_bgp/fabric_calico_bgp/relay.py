"""The API process exabgp runs: relays its stdin/stdout to the agent's unix socket.

exabgp talks to API processes it spawns itself over stdin/stdout. The agent
wants to be that process, so exabgp's ``run`` line starts this tiny relay,
which connects to the socket the agent listens on and copies bytes both ways.
When the agent side closes (the agent stopped or was killed) it ends its parent
exabgp too, which would otherwise outlive the agent. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time

__all__ = ["main"]


def _connect(path: str, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: relay.py SOCKET", file=sys.stderr)
        return 2
    try:
        sock = _connect(args[0])
    except OSError as exc:
        print(f"relay: cannot reach the agent at {args[0]}: {exc}", file=sys.stderr)
        return 1
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

    def exabgp_to_agent() -> None:
        try:
            while data := os.read(stdin, 65536):
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=exabgp_to_agent, daemon=True).start()
    try:
        while data := sock.recv(65536):
            os.write(stdout, data)
    except OSError:
        pass
    _end_parent_exabgp()
    return 0


def _end_parent_exabgp() -> None:
    """The agent is gone (even killed with -9): end the exabgp that runs us, so it
    never outlives its agent. exabgp does not exit by itself when its API process ends."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return
    if ppid > 1 and b"exabgp" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(ppid, signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
