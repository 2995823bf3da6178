"""Ending supervised processes (public, for backends and the lab): SIGTERM, a grace period,
then SIGKILL — one implementation for exabgp (calico-bgp), BIRD and the lab's processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["KILL_WAIT", "pid_running", "stop_pid", "stop_process", "wait_until"]

KILL_WAIT = 5.0  # s to wait after SIGKILL (the kernel frees the process by then)


def stop_process(proc: subprocess.Popen, *, timeout: float = 10.0) -> bool:
    """End our child ``proc``: SIGTERM, wait ``timeout`` s, then SIGKILL and reap it.
    False if it had exited already. subprocess.TimeoutExpired if even SIGKILL did not end
    it within KILL_WAIT (an uninterruptible sleep in the kernel)."""
    if proc.poll() is not None:
        return False
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(KILL_WAIT)
    return True


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process nobody reaped yet)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2:][:1] not in ("Z", "X", "")  # state follows (comm)


def wait_until(done: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout`` s passed (False)."""
    end = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(step)


def stop_pid(pid: int, alive: Callable[[], bool], *, timeout: float = 10.0,
             kill9: bool = False) -> bool:
    """End process ``pid`` (not necessarily our child): SIGTERM, up to ``timeout`` s for
    ``alive()`` to turn false, then SIGKILL (``kill9``: SIGKILL at once) and KILL_WAIT s more.

    ``alive`` must say whether ``pid`` is still the process meant (start time, command line):
    the pid may have been reused, and nothing is signalled once it says no. Each signal is
    followed by SIGCONT so a paused (SIGSTOPped) process acts on it. False if it was not
    alive to begin with; True otherwise (also when it outlived SIGKILL's wait)."""
    if not alive():
        return False
    steps = [(signal.SIGKILL, KILL_WAIT)] if kill9 else [
        (signal.SIGTERM, timeout), (signal.SIGKILL, KILL_WAIT)]
    for sig, wait in steps:
        if not alive():
            break
        try:
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            break
        if wait_until(lambda: not alive(), wait):
            break
    return True
