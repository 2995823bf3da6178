"""The agent's control socket: one JSON request line in, one JSON answer line out.

The socket is created with mode 0600 under a 0700 directory: only root talks to
the agent. Each connection is served on its own thread; a bad request gets an
error answer and never disturbs the agent.

Bursts (a runtime starting hundreds of pods, `fabric status` loops): the listen
backlog is large (``BACKLOG``, capped by ``net.core.somaxconn``) and the accept loop
only accepts and hands off. An accept error (EMFILE, ENOMEM, a thread that cannot
start) is logged, waited out briefly and retried: the loop ends only on ``close()``.
Clients wait in the kernel while the backlog is full (``fabric.control``).
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fabric.control import close_listener
from fabric.errors import ConfigError, FabricError

__all__ = ["ControlServer", "MAX_REQUEST", "BACKLOG", "RawAnswer"]

log = logging.getLogger("fabric.agent")
MAX_REQUEST = 4 * 1024 * 1024
BACKLOG = 1024
MAX_FDS = 4  # descriptors one request may carry (a CNI call passes its netns: one)

Handler = Callable[[dict[str, Any]], Any]


class RawAnswer(bytes):
    """A handler result sent verbatim instead of the JSON answer (``cni.exec``: a native
    forwarder reads ``EXIT-STATUS\\n`` and the plugin's stdout, and parses no JSON)."""


def error_answer(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, FabricError):
        error = {"kind": type(exc).__name__, "message": exc.message, "fix": exc.fix}
        if getattr(exc, "field", None):
            error["field"] = exc.field
        return {"ok": False, "error": error}
    return {"ok": False, "error": {"kind": "InternalError",
                                   "message": f"{type(exc).__name__}: {exc}", "fix": None}}


class ControlServer:
    def __init__(self, path: Path, dispatch: Handler) -> None:
        self.path = path
        self.dispatch = dispatch
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        if self.path.exists():
            if _answers(self.path):
                raise ConfigError(
                    f"another agent is already serving {self.path}",
                    fix="stop it first (fabric down) or use another --state-dir",
                )
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(BACKLOG)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = sock.accept()
            except OSError as exc:
                if self._closing.is_set():
                    return
                log.warning("control socket: accept failed (%s); retrying", exc)
                time.sleep(0.05)  # EMFILE/ENOMEM: give the serving threads time to finish
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
            except RuntimeError as exc:  # cannot start a thread: answer inline, keep going
                log.warning("control socket: no thread for a request (%s)", exc)
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            conn.settimeout(30)
            try:
                request = _read_request(conn, fds)
                result = self.dispatch(request)
                if isinstance(result, RawAnswer):
                    with contextlib.suppress(OSError):
                        conn.sendall(result)
                    return
                answer = {"ok": True, "result": result}
            except Exception as exc:
                if not isinstance(exc, FabricError):
                    log.exception("control request failed")
                answer = error_answer(exc)
            finally:
                for fd in fds:  # descriptors passed with the request live as long as it
                    with contextlib.suppress(OSError):
                        os.close(fd)
            with contextlib.suppress(OSError):  # client went away: nothing else to do
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self._closing.set()
        close_listener(self._sock, self.path)
        self._sock = None



def _read_request(conn: socket.socket, fds: list[int]) -> dict[str, Any]:
    """One request line; file descriptors sent with it (SCM_RIGHTS) are appended to ``fds``
    and given to the handler as ``request["_fds"]`` (only those: a client's own "_fds"
    key is dropped)."""
    buf = bytearray()
    ancillary = socket.CMSG_SPACE(MAX_FDS * 4)
    while b"\n" not in buf:
        chunk, cmsgs, _flags, _addr = conn.recvmsg(65536, ancillary)
        for level, kind, data in cmsgs:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ConfigError(f"request larger than {MAX_REQUEST} bytes")
    line = bytes(buf).split(b"\n", 1)[0]
    try:
        req = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"request is not valid JSON: {exc}") from exc
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ConfigError("request must be a JSON object with a string 'op'")
    if len(fds) > MAX_FDS:
        raise ConfigError(f"a request may carry at most {MAX_FDS} file descriptors")
    req.pop("_fds", None)  # never a client's word for which agent descriptors to use
    if fds:
        req["_fds"] = list(fds)
    return req


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
