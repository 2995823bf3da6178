"""Rate-limited mesh logs: one line per (reason, peer) per interval, suppressed count."""

from __future__ import annotations

import logging

import pytest

from fabric.mesh.ratelog import RateLimitedLog


def test_one_line_per_reason_and_peer_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("fabric.mesh.t"), interval=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="fabric.mesh.t")
    for _ in range(5):
        log(logging.WARNING, "bad-preamble", "10.0.0.1", "refused %s", "10.0.0.1")
    log(logging.WARNING, "bad-preamble", "10.0.0.2", "refused %s", "10.0.0.2")
    log(logging.WARNING, "timeout", "10.0.0.1", "timed out %s", "10.0.0.1")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 10.0.0.1", "refused 10.0.0.2", "timed out 10.0.0.1"]
    now[0] = 11.0
    assert log(logging.WARNING, "bad-preamble", "10.0.0.1", "refused %s", "10.0.0.1")
    assert caplog.records[-1].getMessage() == "refused 10.0.0.1 (4 similar suppressed)"
    assert not log(logging.WARNING, "bad-preamble", "10.0.0.1", "refused %s", "10.0.0.1")


def test_bounded_memory() -> None:
    log = RateLimitedLog(logging.getLogger("fabric.mesh.t"), max_keys=8)
    for i in range(100):
        log(logging.DEBUG, "r", str(i), "x")
    assert len(log._last) == 8
