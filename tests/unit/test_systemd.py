"""systemd integration: sd_notify READY=1/STOPPING=1 from the real agent, journald and JSON
log formats, and the example unit file."""

from __future__ import annotations

import configparser
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fabric.agent import notify
from fabric.agent.logs import JournalFormatter, JsonFormatter, configure, under_journald
from fabric.errors import ConfigError
from tests.unit.agent_util import RunningAgent, one_net

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_agent_sends_ready_after_its_networks_then_stopping(notify_socket, tmp_path) -> None:
    run = RunningAgent(tmp_path / "state", [one_net("a"), one_net("b", "10.51.0.0/16")])
    with run:
        fields = notify_socket.recv(4096).decode().splitlines()
        assert "READY=1" in fields and f"MAINPID={os.getpid()}" in fields
        assert all(n.ready for n in run.agent.networks.values())  # READY only after both
        assert "STATUS=serving a, b" in fields
    assert "STOPPING=1" in notify_socket.recv(4096).decode().splitlines()


def test_notify_is_a_noop_outside_systemd_and_abstract_names_work() -> None:
    assert notify.notify("READY=1", environ={}) is False
    name = f"h7notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": "relative"}) is False


def _record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("fabric.agent", level, __file__, 1, msg, (), info)


def test_journal_format_has_priorities_and_no_timestamp() -> None:
    fmt = JournalFormatter()
    assert fmt.format(_record(logging.ERROR, "lease lost")) == "<3>fabric.agent: lease lost"
    assert fmt.format(_record(logging.WARNING, "w")).startswith("<4>")
    assert fmt.format(_record(logging.INFO, "i")).startswith("<6>")
    assert fmt.format(_record(logging.DEBUG, "d")).startswith("<7>")
    lines = fmt.format(_record(logging.ERROR, "failed", exc=True)).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)  # traceback too


def test_json_format_is_one_object_per_line() -> None:
    out = JsonFormatter().format(_record(logging.WARNING, "etcd down", exc=True))
    assert "\n" not in out
    data = json.loads(out)
    assert data["level"] == "warning" and data["message"] == "etcd down"
    assert data["logger"] == "fabric.agent" and data["time"].endswith("Z")
    assert "ValueError: boom" in data["exception"]


def test_auto_format_detects_journald_by_stderr_identity(monkeypatch) -> None:
    st = os.fstat(sys.stderr.fileno())
    assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})  # inherited
    assert not under_journald({})
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("info", "auto")
        assert isinstance(root.handlers[0].formatter, JournalFormatter)
        with pytest.raises(ConfigError):
            configure("info", "xml")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_unit_file_is_type_notify_and_runs_fabric_up() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive in systemd
    unit.read(ROOT / "examples/systemd/netfabric.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert " up " in svc["ExecStart"] and "--etcd-cafile" in svc["ExecStart"]
    assert svc["KillSignal"] == "SIGTERM"  # graceful: pods keep working
    assert "ExecStop" not in svc  # `fabric down` would remove the network on every restart
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = (ROOT / "examples/systemd/netfabric.service").read_text()
    unit = tmp_path / "netfabric.service"  # the binaries need not exist here
    unit.write_text(text.replace("/usr/local/bin/fabric", "/bin/true"))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "netfabric.service" not in proc.stderr, proc.stderr
