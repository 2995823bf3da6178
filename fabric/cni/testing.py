"""Test helpers for CNI clients: a scripted agent socket and an in-process plugin run.

:class:`FakeAgent` is a real unix-socket server speaking the control protocol (one JSON
line in, one out); ``reply(request)`` decides each answer. It lets tests of `fabric-cni`
and of ``fabric.control`` reach paths a healthy agent never takes (hangs, resets,
garbage). End-to-end behaviour is tested against the real agent.

    with FakeAgent(path, lambda req: ok({"ips": []})) as agent:
        rc, out, err = invoke({"CNI_COMMAND": "ADD", ...}, conf)
        assert agent.requests[0]["op"] == "cni.add"
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from fabric.control import close_listener

__all__ = ["FakeAgent", "ok", "fail", "HANG", "CLOSE", "Raw", "invoke", "Runner"]

HANG = "hang"  # read the request, never answer (until the agent is closed)
CLOSE = "close"  # read the request, close without answering


class Raw(bytes):
    """Bytes sent verbatim as the answer."""


def ok(result: Any = None) -> dict[str, Any]:
    return {"ok": True, "result": result}


def fail(
    kind: str, message: str, fix: str | None = None, field: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"kind": kind, "message": message, "fix": fix}
    if field:
        error["field"] = field
    return {"ok": False, "error": error}


Reply = Callable[[dict[str, Any]], Any]


class FakeAgent:
    def __init__(self, path: str | os.PathLike[str], reply: Reply) -> None:
        self.path = os.fspath(path)
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FakeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(16)
        self._sock = sock
        t = threading.Thread(target=self._accept, daemon=True, name="fake-agent")
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            request = json.loads(buf.split(b"\n", 1)[0])
            self.requests.append(request)
            answer = self.reply(request)
            if answer == HANG:
                self._closing.wait(60)
                return
            if answer == CLOSE:
                return
            data = answer if isinstance(answer, Raw) else json.dumps(answer).encode() + b"\n"
            with contextlib.suppress(OSError):
                conn.sendall(data)

    def close(self) -> None:
        self._closing.set()
        close_listener(self._sock, self.path)
        self._sock = None
        for t in self._threads:
            t.join(2)


def invoke(environ: dict[str, str], conf: Any = None, stdin: bytes | None = None,
           ) -> tuple[int, Any, str]:
    """Run `fabric-cni` in-process: (exit status, decoded stdout or None, stderr).

    ``conf`` is JSON-encoded onto stdin unless raw ``stdin`` bytes are given."""
    from fabric.cni.main import run

    data = stdin if stdin is not None else json.dumps(conf).encode()
    out, err = io.StringIO(), io.StringIO()
    rc = run(environ, io.BytesIO(data), out, err)
    text = out.getvalue()
    if text.count("\n") > 1:
        raise AssertionError(f"fabric-cni printed more than one JSON document: {text!r}")
    return rc, json.loads(text) if text else None, err.getvalue()


class Runner:
    """`fabric-cni` calls for one agent socket with default CNI_* variables.

    ``runner("ADD", conf, env={"CNI_NETNS": None})``: ``None`` removes a variable."""

    def __init__(self, socket_path: str | os.PathLike[str], *, container_id: str = "c1",
                 ifname: str = "eth0", netns: str = "/proc/self/ns/net",
                 cni_path: str = "/usr/lib/cni") -> None:
        self.socket = os.fspath(socket_path)
        self.env = {"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname,
                    "CNI_NETNS": netns, "CNI_PATH": cni_path}

    def conf(self, version: str = "1.1.0", **kw: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "netfabric", "type": "fabric-cni",
                "agentSocket": self.socket, **kw}

    def __call__(self, verb: str, conf: Any = None, env: dict[str, str | None] | None = None,
                 stdin: bytes | None = None) -> tuple[int, Any, str]:
        merged: dict[str, str | None] = {"CNI_COMMAND": verb, **self.env, **(env or {})}
        environ = {k: v for k, v in merged.items() if v is not None}
        return invoke(environ, self.conf() if conf is None else conf, stdin)
