"""systemd's sd_notify protocol over ``$NOTIFY_SOCKET`` (stdlib only, no libsystemd).

With ``Type=notify`` systemd considers the unit started when ``READY=1`` arrives and
shows ``STATUS=`` lines in ``systemctl status``; ``STOPPING=1`` says a stop is under
way. Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. The socket
is a unix datagram socket; a name starting with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "ready", "stopping", "status"]

log = logging.getLogger("fabric.agent")


def notify(*fields: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``KEY=VALUE`` lines as one datagram; True if sent. Errors are logged, not raised:
    a notify failure must not stop the agent (systemd then times the start out by itself)."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path[0] not in "/@":
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name; ignored", path)
        return False
    addr = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), addr)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", path, exc)
        return False
    return True


def ready(message: str = "") -> bool:
    return notify("READY=1", f"STATUS={message}" if message else "STATUS=ready",
                  f"MAINPID={os.getpid()}")


def stopping(message: str = "stopping") -> bool:
    return notify("STOPPING=1", f"STATUS={message}")


def status(message: str) -> bool:
    return notify(f"STATUS={message}")
