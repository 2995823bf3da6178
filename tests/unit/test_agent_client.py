"""fabric.control against scripted sockets and the real control server (no root)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fabric.agent.server import ControlServer
from fabric.cni.testing import CLOSE, HANG, FakeAgent, Raw, fail, ok
from fabric.control import AgentError, AgentUnreachable, call, error_from_answer
from fabric.errors import (
    AgentUnavailable,
    ConfigError,
    FabricError,
    KernelFeatureMissing,
    NotFound,
    PoolExhausted,
)


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "agent.sock"


def test_result_is_returned_and_request_sent_as_one_line(sock: Path) -> None:
    with FakeAgent(sock, lambda req: ok({"echo": req})) as agent:
        out = call(sock, {"op": "status", "x": [1, 2]})
    assert out == {"echo": {"op": "status", "x": [1, 2]}}
    assert agent.requests == [{"op": "status", "x": [1, 2]}]


def test_null_result(sock: Path) -> None:
    with FakeAgent(sock, lambda req: ok(None)):
        assert call(sock, {"op": "cni.del"}) is None


@pytest.mark.parametrize("kind, cls", [
    ("ConfigError", ConfigError),
    ("NotFound", NotFound),
    ("PoolExhausted", PoolExhausted),
    ("AgentUnavailable", AgentUnavailable),
    ("KernelFeatureMissing", KernelFeatureMissing),
])
def test_error_answers_raise_the_named_class(sock: Path, kind: str, cls: type) -> None:
    reply = lambda req: fail(kind, "it broke", "do this")  # noqa: E731
    with FakeAgent(sock, reply), pytest.raises(cls) as info:
        call(sock, {"op": "cni.add"})
    exc = info.value
    assert type(exc) is cls and exc.message == "it broke" and exc.fix == "do this"
    assert exc.kind == kind and str(exc) == "it broke (do this)"
    assert not isinstance(exc, AgentUnreachable)  # the agent itself answered


def test_unknown_kind_is_agent_error(sock: Path) -> None:
    reply = lambda req: fail("InternalError", "KeyError: 'x'")  # noqa: E731
    with FakeAgent(sock, reply), pytest.raises(AgentError) as info:
        call(sock, {"op": "status"})
    assert info.value.kind == "InternalError" and info.value.message == "KeyError: 'x'"
    assert isinstance(info.value, FabricError)


def test_error_from_answer_rejects_non_error_classes() -> None:
    # only fabric.errors' public classes are instantiated, never arbitrary attributes
    assert type(error_from_answer({"kind": "annotations", "message": "m"})) is AgentError
    assert type(error_from_answer("oops")) is AgentError
    assert type(error_from_answer({"kind": "FabricError", "message": "m"})) is FabricError


def test_missing_socket_is_unreachable_before_sending(tmp_path: Path) -> None:
    with pytest.raises(AgentUnreachable) as info:
        call(tmp_path / "nope" / "agent.sock", {"op": "status"}, timeout=2)
    exc = info.value
    assert exc.reason == "missing" and exc.maybe_done is False
    assert isinstance(exc, AgentUnavailable) and "fabric up" in exc.fix


def test_stale_socket_file_is_refused(sock: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))  # bound, never listening: what a crashed agent leaves behind
    try:
        with pytest.raises(AgentUnreachable) as info:
            call(sock, {"op": "status"}, timeout=2)
    finally:
        s.close()
    assert info.value.reason == "refused"


def test_hung_agent_times_out_within_the_bound(sock: Path) -> None:
    with FakeAgent(sock, lambda req: HANG):
        start = time.monotonic()
        with pytest.raises(AgentUnreachable) as info:
            call(sock, {"op": "cni.add"}, timeout=0.3)
        elapsed = time.monotonic() - start
    assert info.value.reason == "timeout" and info.value.maybe_done is True
    assert 0.25 <= elapsed < 2.0, elapsed


def test_slow_dribbling_answer_is_still_bounded(sock: Path) -> None:
    """A peer sending one byte at a time cannot extend the deadline."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock))
    srv.listen(1)
    def dribble() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(1000)
            for _ in range(40):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.05)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        start = time.monotonic()
        with pytest.raises(AgentUnreachable) as info:
            call(sock, {"op": "status"}, timeout=0.5)
        assert time.monotonic() - start < 1.5
        assert info.value.reason == "timeout"
    finally:
        t.join(5)
        srv.close()


@pytest.mark.parametrize("answer, needle", [
    (CLOSE, "without answering"),
    (Raw(b"not json\n"), "not JSON"),
    (Raw(b'{"result": 1}\n'), "boolean 'ok'"),
    (Raw(b"[1, 2]\n"), "boolean 'ok'"),
])
def test_broken_answers_are_unreachable_protocol(sock: Path, answer, needle: str) -> None:
    with FakeAgent(sock, lambda req: answer), pytest.raises(AgentUnreachable) as info:
        call(sock, {"op": "status"}, timeout=3)
    assert info.value.reason == "protocol" and needle in info.value.message


def test_answer_without_final_newline_and_large_answer(sock: Path) -> None:
    big = {"ok": True, "result": "x" * 300_000}
    with FakeAgent(sock, lambda req: Raw(json.dumps(big).encode())):
        assert call(sock, {"op": "status"}) == "x" * 300_000


def test_unserialisable_request_is_config_error(sock: Path) -> None:
    with pytest.raises(ConfigError):
        call(sock, {"op": "status", "bad": object()})


def test_real_control_server_round_trip(tmp_path: Path) -> None:
    def dispatch(req):
        if req["op"] == "boom":
            raise NotFound("network 'x' is not served by this agent", fix="served: a",
                           field="network")
        if req["op"] == "crash":
            raise KeyError("k")
        return {"got": req}

    server = ControlServer(tmp_path / "state" / "agent.sock", dispatch)
    server.start()
    try:
        path = tmp_path / "state" / "agent.sock"
        assert call(path, {"op": "hello", "n": 1}) == {"got": {"op": "hello", "n": 1}}
        with pytest.raises(NotFound) as info:
            call(path, {"op": "boom"})
        assert info.value.fix == "served: a"
        with pytest.raises(AgentError) as crash:
            call(path, {"op": "crash"})
        assert crash.value.kind == "InternalError" and "KeyError" in crash.value.message
    finally:
        server.close()
    with pytest.raises(AgentUnreachable):
        call(path, {"op": "hello"}, timeout=1)


def test_client_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import fabric.control;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(new))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    new = set(json.loads(out.replace("'", '"')))
    stdlib = set(sys.stdlib_module_names)
    assert new - stdlib <= {"fabric"}, new - stdlib
