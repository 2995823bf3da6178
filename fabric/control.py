"""Client of the agent's control socket (stdlib only: used by `fabric-cni` and `fabric`).

One request per connection: send one JSON object and ``\\n``, read one JSON answer
line (see docs/architecture.md, "Agent control protocol"). The whole exchange —
connect, send, answer — is bounded by one deadline.

Failures are :mod:`fabric.errors` types:

* :class:`AgentUnreachable` (an :class:`~fabric.errors.AgentUnavailable`): no agent
  answered — socket missing, connection refused, timeout, or the connection closed
  without a well-formed answer. ``reason`` says which; ``maybe_done`` is true when the
  request was sent, so the agent may have acted on it.
* an error answer ``{"ok": false, "error": {"kind": K, ...}}`` is raised as the
  ``fabric.errors`` class named ``K`` (:class:`AgentError` for kinds this version
  does not know, e.g. ``InternalError``); ``exc.kind`` always holds ``K``.
"""

from __future__ import annotations

import _socket as socket  # the C module: `socket` imports enum, selectors... (~9 ms a start)
import array
import errno
import os
import struct
import time

from fabric import errors as _errors
from fabric.errors import AgentUnavailable, FabricError

TYPE_CHECKING = False  # no `typing` at run time: fabric-cni imports this at every pod start
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# JSON on the C accelerator alone: `import json` compiles the regular expressions of
# json.decoder/scanner/encoder (with `re` and `enum`), ~10 ms of CPU at every start of
# `fabric-cni`, which a runtime starts per pod (docs/benchmarks.md). Same results; errors
# are ValueErrors (json.JSONDecodeError for malformed input).
try:
    import _json

    class _Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                          "NaN": float("nan")}.__getitem__

    def _not_serializable(obj: object) -> None:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    _scan = _json.make_scanner(_Context())
    _encode = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii,
                                 None, ": ", ", ", False, False, True)
except (ImportError, AttributeError, TypeError):  # another Python: the json module
    _scan = _encode = None

_SPACE = " \t\n\r"


def dumps(obj: Any) -> str:
    """``json.dumps(obj)``."""
    if _encode is None:
        import json

        return json.dumps(obj)
    return "".join(_encode(obj, 0))


def loads(text: str | bytes) -> Any:
    """``json.loads(text)`` (bytes must be UTF-8); ValueError if it is not one JSON value."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    if _scan is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    except SystemError:  # malformed: the C scanner can raise its JSONDecodeError only once
        import json  # json.decoder is loaded, so let json say what is wrong

        return json.loads(text)
    if text[end:].strip(_SPACE):
        raise ValueError(f"Extra data: char {end}")
    return value

__all__ = [
    "DEFAULT_SOCKET",
    "MAX_ANSWER",
    "AgentUnreachable",
    "AgentError",
    "call",
    "error_from_answer",
    "dumps",
    "loads",
    "close_listener",
]

DEFAULT_SOCKET = "/run/netfabric/agent.sock"
MAX_ANSWER = 16 * 1024 * 1024


class AgentUnreachable(AgentUnavailable):
    """No usable answer from the agent's socket (nothing came back from the agent itself)."""

    kind = "AgentUnavailable"

    def __init__(self, message: str, *, reason: str, path: str, maybe_done: bool = False,
                 fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason  # "missing", "refused", "timeout", "protocol", "os"
        self.path = path
        self.maybe_done = maybe_done


class AgentError(FabricError):
    """The agent answered with an error of a kind this client has no class for."""

    def __init__(self, message: str, *, kind: str, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.kind = kind


def error_from_answer(error: Any) -> FabricError:
    """The exception for an answer's ``error`` object, as the ``fabric.errors`` class it names."""
    if not isinstance(error, dict):
        return AgentError(f"the agent answered a malformed error: {error!r}", kind="Protocol")
    kind = str(error.get("kind") or "InternalError")
    message = str(error.get("message") or kind)
    fix = error.get("fix")
    fix = str(fix) if fix else None
    cls = getattr(_errors, kind, None) if kind in _errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, FabricError)):
        return AgentError(message, kind=kind, fix=fix)
    exc = cls.__new__(cls)  # some classes take other constructor arguments
    field = error.get("field")
    FabricError.__init__(exc, message, fix=fix, field=str(field) if field else None)
    exc.kind = kind  # type: ignore[attr-defined]
    return exc


class _BadAnswer(Exception):
    """The connection ended without a well-formed answer line."""


def _unreachable(path: str, reason: str, detail: str, sent: bool) -> AgentUnreachable:
    fixes = {
        "missing": "start the agent (fabric up) or point agentSocket / FABRIC_AGENT_SOCKET at it",
        "refused": "the agent is not running; start it (fabric up)",
        "timeout": "the agent is busy or hung; retry, and see its log",
    }
    return AgentUnreachable(
        f"agent at {path}: {detail}", reason=reason, path=path, maybe_done=sent,
        fix=fixes.get(reason, "retry; see the agent's log"),
    )


def call(path: str | os.PathLike[str], request: dict[str, Any], timeout: float = 30.0,
         fds: Sequence[int] = ()) -> Any:
    """Send ``request`` (with an ``op``) to the agent at ``path``; return the answer's result.

    ``fds`` are passed to the agent with the request (SCM_RIGHTS): `fabric-cni` sends
    the pod's network namespace so the agent never resolves a path in its own mount
    namespace. Raises :class:`AgentUnreachable` or the error the agent answered.
    """
    spath = os.fspath(path)
    deadline = time.monotonic() + timeout
    try:
        payload = dumps(request).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise _errors.ConfigError(f"request cannot be sent as JSON: {exc}") from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = False
    try:
        try:
            _connect(sock, spath, deadline)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            if fds:  # the descriptors ride on the first bytes of the request
                n = sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
                if n < len(payload):
                    sock.sendall(payload[n:])
            else:
                sock.sendall(payload)
            sent = True
            line = _read_line(sock, deadline)
        except TimeoutError as exc:
            raise _unreachable(spath, "timeout", f"no answer within {timeout:g} s", sent) from exc
        except _BadAnswer as exc:
            raise _unreachable(spath, "protocol", str(exc), sent) from exc
        except FileNotFoundError as exc:
            raise _unreachable(spath, "missing", "no such socket", sent) from exc
        except ConnectionRefusedError as exc:
            raise _unreachable(spath, "refused", "connection refused", sent) from exc
        except OSError as exc:
            reason = "missing" if exc.errno in (errno.ENOTDIR, errno.ENOENT) else "os"
            detail = exc.strerror or str(exc)
            raise _unreachable(spath, reason, detail, sent) from exc
    finally:
        sock.close()
    try:
        answer = loads(line)
    except ValueError as exc:
        raise _unreachable(spath, "protocol", f"answer is not JSON: {exc}", True) from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise _unreachable(spath, "protocol", "answer lacks a boolean 'ok'", True)
    if answer["ok"]:
        return answer.get("result")
    raise error_from_answer(answer.get("error"))


def _connect(sock: socket.SocketType, path: str, deadline: float) -> None:
    """Connect, waiting until ``deadline`` while the agent's listen backlog is full.

    A non-blocking (timeout-mode) connect to a unix socket whose backlog is full fails
    at once with EAGAIN: 17-24 % of 200 simultaneous clients failed that way. A blocking
    connect with SO_SNDTIMEO sleeps in the kernel until the agent accepts (issue 16).
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed while connecting")
        sock.settimeout(None)
        sec = int(remaining)
        usec = max(int((remaining - sec) * 1e6), 1 if sec == 0 else 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, usec))
        try:
            sock.connect(path)
            return
        except BlockingIOError:  # SO_SNDTIMEO ran out (or a spurious wake-up): re-check
            continue


def _read_line(sock: socket.SocketType, deadline: float) -> bytes:
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise _BadAnswer("the agent closed the connection without answering")
            return bytes(buf)  # an answer without the final newline is still an answer
        buf += chunk
        end = buf.find(b"\n")
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) > MAX_ANSWER:
            raise _BadAnswer(f"answer larger than {MAX_ANSWER} bytes")


def close_listener(sock: socket.socket | None, path: str | os.PathLike[str]) -> None:
    """Close a listening unix socket (waking a thread blocked in accept()) and remove its
    path; either may be gone already (the agent's control server, the tests' scripted one)."""
    # try/except, not contextlib: fabric-cni imports this module and starts in milliseconds
    if sock is not None:
        try:  # noqa: SIM105
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    try:  # noqa: SIM105
        os.unlink(path)
    except FileNotFoundError:
        pass
