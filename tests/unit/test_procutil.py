"""fabric.procutil: SIGTERM, grace period, SIGKILL — on real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fabric.procutil import pid_running, stop_pid, stop_process

_IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
                "print('ready', flush=True); time.sleep(60)"


def _ignoring_term() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _IGNORES_TERM], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_stop_process_terminates_then_kills() -> None:
    polite = subprocess.Popen(["sleep", "60"])
    t0 = time.monotonic()
    assert stop_process(polite, timeout=5)
    assert polite.returncode == -signal.SIGTERM and time.monotonic() - t0 < 2
    assert not stop_process(polite)  # already gone
    stubborn = _ignoring_term()
    t0 = time.monotonic()
    assert stop_process(stubborn, timeout=0.5)
    assert stubborn.returncode == -signal.SIGKILL and 0.5 <= time.monotonic() - t0 < 3


def test_stop_pid_with_liveness_guard_and_paused_process() -> None:
    proc = _ignoring_term()
    os.kill(proc.pid, signal.SIGSTOP)
    assert stop_pid(proc.pid, lambda: proc.poll() is None, timeout=0.3)
    assert proc.returncode == -signal.SIGKILL
    assert not pid_running(proc.pid)
    # a guard saying "not ours" means no signal at all
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert not stop_pid(other.pid, lambda: False)
        assert pid_running(other.pid) and other.poll() is None
    finally:
        stop_process(other)


def test_pid_running_is_false_for_a_zombie() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while pid_running(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_running(proc.pid)  # exited, not reaped yet
    assert os.path.exists(f"/proc/{proc.pid}")
    proc.wait()
