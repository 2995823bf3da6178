"""HealthMonitor: outage and recovery logged once each, a hung probe counts at its timeout."""

from __future__ import annotations

import logging
import threading
import time

from fabric.errors import StoreUnavailable
from fabric.store.health import HealthMonitor
from tests.util import wait_for


def test_outage_and_recovery_are_logged_once_with_since(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="fabric.store")
    up = {"ok": True}

    def probe() -> None:
        if not up["ok"]:
            raise StoreUnavailable("connection refused")

    mon = HealthMonitor(probe, "etcd at http://x:2379", interval=0.05).start()
    try:
        assert wait_for(lambda: mon.status()["reachable"] is True, 2)
        up["ok"] = False
        assert wait_for(lambda: mon.status()["reachable"] is False, 2)
        time.sleep(0.3)  # several failed probes: still one warning
        st = mon.status()
        assert st["since"] and st["error"] == "connection refused" and st["outages"] == 1
        up["ok"] = True
        assert wait_for(lambda: mon.status()["reachable"] is True, 2)
    finally:
        mon.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and "is unreachable (connection refused)" in msgs[0]
    assert "reachable again" in msgs[1]


def test_a_hung_probe_is_an_outage_at_the_probe_timeout() -> None:
    release = threading.Event()
    hang = {"on": False}

    def probe() -> None:
        if hang["on"]:
            release.wait(10)

    mon = HealthMonitor(probe, "etcd", interval=0.05, timeout=0.2).start()
    try:
        assert wait_for(lambda: mon.status()["reachable"] is True, 2)
        hang["on"] = True
        t0 = time.monotonic()
        assert wait_for(lambda: mon.status()["reachable"] is False, 2)
        assert time.monotonic() - t0 < 1.0
        assert "no answer within 0.2 s" in mon.status()["error"]
        hang["on"] = False
        release.set()
        assert wait_for(lambda: mon.status()["reachable"] is True, 2)
    finally:
        release.set()
        mon.stop()
