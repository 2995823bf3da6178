"""Outages are visible (issue 16): `fabric status` (text and --json) names the datastore
unreachable within 10 s of etcd being paused (SIGSTOP) or killed, with since-when; the
agent logs a warning on loss and on recovery; pods keep talking meanwhile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fabric.lab import Lab
from fabric.lab.agents import tool
from tests.lab.lab_util import converged_lab, needs_root

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]


def status(lab: Lab, host: str, *, text: bool = False):
    h = lab.hosts[host]
    out = lab.exec(host, [tool("fabric"), "status", "--state-dir", h.state_dir,
                          *([] if text else ["--json"])], timeout=30)
    assert out.ok, out.stderr
    return out.stdout if text else json.loads(out.stdout)


def reachable(lab: Lab, host: str) -> bool | None:
    return status(lab, host)["datastore"]["reachable"]


def seconds_until(lab: Lab, check, timeout: float) -> float:
    t0 = time.monotonic()
    lab.wait(check, timeout=timeout, interval=0.2)
    return time.monotonic() - t0


def test_datastore_outage_is_visible_within_10s_and_recovery_logged(lab_name: str) -> None:
    with converged_lab(lab_name, "vxlan") as lab:
        lab.wait(lambda: all(reachable(lab, h) for h in lab.hosts), timeout=10)
        log = Path(lab.hosts["h1"].state_dir) / "agent.log"
        ping = lab.ping_stream("h1p1", "h2p1")
        try:
            lab.pause("etcd")  # a hung etcd: TCP connects, nothing answers
            took = seconds_until(lab, lambda: reachable(lab, "h1") is False, 10)
            st = status(lab, "h1")["datastore"]
            assert st["since"] and st["error"] and st["name"].startswith("etcd at")
            text = status(lab, "h1", text=True)
            assert "datastore: UNREACHABLE since" in text, text
            print(f"SIGSTOP seen after {took:.1f} s")
            lab.resume("etcd")
            seconds_until(lab, lambda: reachable(lab, "h1") is True, 10)

            lab.stop_process("etcd", kill9=True)  # a crash: connections refused
            took = seconds_until(lab, lambda: not any(reachable(lab, h) is not False
                                                      for h in lab.hosts), 10)
            print(f"kill -9 seen after {took:.1f} s")
            lab.start_process("etcd")
            seconds_until(lab, lambda: all(reachable(lab, h) for h in lab.hosts), 10)
            assert "reachable (since" in status(lab, "h1", text=True)
            assert status(lab, "h1")["datastore"]["outages"] == 2
        finally:
            sent, received = ping.stop()
        assert received >= sent - 2, (sent, received)  # the data path did not care
        lines = [ln for ln in log.read_text().splitlines() if "fabric.store: datastore" in ln]
        assert [("unreachable (" in ln, "WARNING" in ln) for ln in lines] == [
            (True, True), (False, True), (True, True), (False, True)], lines
        assert "reachable again" in lines[1] and "reachable again" in lines[3]
        assert lab.converge(timeout=10).ok
