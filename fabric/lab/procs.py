"""Processes the lab starts, recorded by pid so another process can end them.

A record keeps the pid, the kernel start time of that pid and a marker string
(the lab's state directory) that must appear in its command line: `stop`
only signals a pid when all three still match, so a recycled pid is never hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from fabric.lab.netns import LabError, ns_exec_argv
from fabric.procutil import stop_pid, wait_until

__all__ = ["ProcRecord", "spawn", "proc_start_time", "is_alive", "stop", "wait_dead", "pause",
           "resume", "is_paused"]


@attrs.frozen
class ProcRecord:
    role: str  # "agent:h1", "etcd", "bird:sw" ...
    pid: int
    start_time: int  # /proc/<pid>/stat field 22, guards against pid reuse
    marker: str  # must occur in /proc/<pid>/cmdline
    ns: str = ""
    log: str = ""
    # the command line as started (without `ip netns exec`): `Lab.restart` re-runs it
    argv: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcRecord:
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces: split after its closing parenthesis
    return raw[raw.rindex(")") + 2:].split()


def proc_start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 overall


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def is_alive(rec: ProcRecord) -> bool:
    """True when ``rec.pid`` is still the process we started (and not a zombie)."""
    fields = _stat(rec.pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == rec.start_time and rec.marker in _cmdline(rec.pid)


def spawn(role: str, ns: str | None, argv: Sequence[str], log: Path, marker: str,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, ProcRecord]:
    """Start ``argv`` in ``ns`` (via `ip netns exec`, which execs in place), output to ``log``."""
    if marker not in " ".join(map(str, argv)):
        raise LabError(f"{role}: marker {marker!r} is not in the command line")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(ns_exec_argv(ns, argv), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]} is not installed", fix=f"install {argv[0]}") from exc
    # until exec: the child still shows our command line; wait for the marker to appear
    end = time.monotonic() + 5
    while time.monotonic() < end and proc.poll() is None:
        start = proc_start_time(proc.pid)
        if start is not None:
            rec = ProcRecord(role, proc.pid, start, marker, ns or "", str(log),
                             tuple(map(str, argv)))
            if is_alive(rec):
                return proc, rec
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise LabError(f"{role} (pid {proc.pid}) did not start {argv[0]} within 5s")
    raise LabError(f"{role} exited at once (status {proc.returncode}); see {log}")


def _running(rec: ProcRecord, proc: subprocess.Popen | None) -> bool:
    return (proc is None or proc.poll() is None) and is_alive(rec)


def wait_dead(rec: ProcRecord, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    return wait_until(lambda: not _running(rec, proc), timeout)


def stop(rec: ProcRecord, *, timeout: float = 10, kill9: bool = False,
         proc: subprocess.Popen | None = None) -> bool:
    """End ``rec`` (SIGTERM then SIGKILL, or SIGKILL at once); False if it was not running."""
    if not stop_pid(rec.pid, lambda: _running(rec, proc), timeout=timeout, kill9=kill9):
        if proc is not None:
            proc.poll()
        return False
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{rec.role} (pid {rec.pid}) did not exit") from exc
    return True


def _signal(rec: ProcRecord, sig: signal.Signals) -> None:
    if not is_alive(rec):
        raise LabError(f"{rec.role} (pid {rec.pid}) is not running")
    os.kill(rec.pid, sig)


def is_paused(rec: ProcRecord) -> bool:
    """True when the process is stopped by a signal (state T)."""
    fields = _stat(rec.pid)
    return bool(fields) and fields[0] == "T" and is_alive(rec)


def pause(rec: ProcRecord, timeout: float = 5) -> None:
    """SIGSTOP ``rec`` (an outage that keeps its sockets open) and wait until it is stopped."""
    _signal(rec, signal.SIGSTOP)
    end = time.monotonic() + timeout
    while not is_paused(rec):
        if time.monotonic() > end:
            raise LabError(f"{rec.role} (pid {rec.pid}) did not stop within {timeout}s")
        time.sleep(0.01)


def resume(rec: ProcRecord) -> None:
    """SIGCONT a process paused with :func:`pause`."""
    _signal(rec, signal.SIGCONT)
