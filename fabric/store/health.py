"""Is the datastore reachable? A probe thread that makes outages visible.

The agent keeps serving while etcd is down (leases and routes stay), so nothing failed
loudly: an outage went unnoticed (issue 16). :class:`HealthMonitor` probes every
``interval`` seconds with one cheap read; the first failure logs a warning and status says
``reachable: false`` with the time it was first seen failing; the first success after
that logs the recovery and how long it lasted. A stopped (SIGSTOPped) etcd accepts TCP
connections but never answers, and the store's own request timeout is longer: a probe
that has not answered within ``timeout`` counts as a failure at once (it finishes in the
background), so an outage shows within ``interval + timeout`` (4 s by default).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fabric.errors import FabricError

__all__ = ["HealthMonitor", "PROBE_KEY"]

log = logging.getLogger("fabric.store")

PROBE_KEY = "/netfabric/.health"  # read, never written: a range request on a missing key


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


class HealthMonitor:
    """``probe()`` raises when the datastore does not answer; ``status()`` says since when."""

    def __init__(self, probe: Callable[[], Any], name: str, interval: float = 2.0,
                 timeout: float = 2.0) -> None:
        self.probe = probe
        self.name = name  # e.g. "etcd at http://198.18.0.2:2379"
        self.interval = interval
        self.timeout = timeout
        self._inflight: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reachable: bool | None = None  # None: not probed yet
        self._since: float | None = None  # when the current state began
        self._last_ok: float | None = None
        self._error: str | None = None
        self._outages = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HealthMonitor:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="store-health", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def check(self) -> bool:
        """Probe once now and record the outcome; True when the datastore answered."""
        try:
            self.probe()
        except FabricError as exc:
            self._record(False, str(exc))
            return False
        except Exception as exc:  # a client bug must still show as an outage, not kill us
            self._record(False, repr(exc))
            return False
        self._record(True, None)
        return True

    def _record(self, ok: bool, error: str | None) -> None:
        now = time.time()
        with self._lock:
            was, since = self._reachable, self._since
            if ok:
                self._last_ok = now
            self._error = error
            if was == ok:
                return
            self._reachable, self._since = ok, now
            if not ok:
                self._outages += 1
        if not ok:
            log.warning("datastore %s is unreachable (%s); the node keeps its leases and "
                        "routes and retries", self.name, error)
        elif was is False:
            log.warning("datastore %s is reachable again after %.0f s", self.name,
                        now - (since or now))

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._inflight is None or not self._inflight.is_alive():
                self._inflight = threading.Thread(target=self.check, name="store-probe",
                                                  daemon=True)
                self._inflight.start()
            self._inflight.join(self.timeout)
            if self._inflight.is_alive():  # a hung datastore: say so now, not at its timeout
                self._record(False, f"no answer within {self.timeout:g} s")
            self._stop.wait(self.interval)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "reachable": self._reachable,
                "since": _iso(self._since),
                "down_for": round(time.time() - self._since, 1)
                if self._reachable is False and self._since else None,
                "last_ok": _iso(self._last_ok),
                "error": self._error,
                "outages": self._outages,
            }
