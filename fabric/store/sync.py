"""``PrefixMirror``: keep a local copy of every key under a prefix, list-then-watch.

The mirror lists the prefix, reports everything as ``put`` events, then
watches from the list's revision + 1. When the watch start revision was
compacted it re-lists and reports only the difference (puts for new or
changed keys, deletes for keys that vanished), so no change is lost. When
etcd is down it retries with exponential backoff. ``on_events`` is called
from the mirror's threads, never concurrently with itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fabric.errors import StoreCompacted, StoreError
from fabric.store.base import KeyValue, Store, Watch, WatchEvent

__all__ = ["PrefixMirror", "diff"]

log = logging.getLogger("fabric.store.sync")

EventsCallback = Callable[[list[WatchEvent]], None]


def diff(old: dict[str, KeyValue], new: dict[str, KeyValue], revision: int) -> list[WatchEvent]:
    """Events turning ``old`` into ``new`` (deletes carry ``revision``)."""
    events = [
        WatchEvent("put", kv)
        for key, kv in sorted(new.items())
        if key not in old or old[key].mod_revision != kv.mod_revision
    ]
    events += [
        WatchEvent("delete", KeyValue(key, "", revision)) for key in sorted(old) if key not in new
    ]
    return events


class PrefixMirror:
    """``PrefixMirror(store, "/netfabric/x/subnets/", on_events).start()``, later ``stop()``."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        on_events: EventsCallback,
        *,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.on_events = on_events
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.revision = 0  # the store revision the mirror is known to be current at
        self.relists = 0  # how many times a list was (re)done, for status and tests
        self.compactions = 0  # how many watches ended on a compacted revision
        self.last_error: str | None = None
        self._items: dict[str, KeyValue] = {}
        self._lock = threading.RLock()  # guards _items and serialises on_events
        self._stop = threading.Event()
        self._relist = threading.Event()
        self._synced = threading.Event()
        self._watch: Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"mirror {prefix}", daemon=True)

    # -- public --
    def start(self) -> PrefixMirror:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listing and watching; ``on_events`` is not called after this returns."""
        self._stop.set()
        self._relist.set()
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:  # wait out a delivery in progress
            pass

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list has been delivered."""
        return self._synced.wait(timeout)

    @property
    def lock(self) -> threading.RLock:
        """Held while events are delivered; hold it to read :meth:`items` consistently."""
        return self._lock

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def items(self) -> dict[str, KeyValue]:
        with self._lock:
            return dict(self._items)

    # -- internals --
    def _run(self) -> None:
        delay = self.retry_min
        outage = False
        while not self._stop.is_set():
            self._relist.clear()
            try:
                self._list_and_watch()
                if outage:
                    log.info("mirror %s: listing and watching again", self.prefix)
                delay, outage = self.retry_min, False
            except Exception as exc:  # StoreError while etcd is down; anything else is a bug
                self.last_error = str(exc)
                if isinstance(exc, StoreError):
                    # one warning per outage (the agent's health probe reports it too), not
                    # one per retry
                    level = logging.DEBUG if outage else logging.WARNING
                    outage = True
                    log.log(level, "mirror %s: %s; retrying (backoff up to %.0fs)",
                            self.prefix, exc, self.retry_max)
                else:
                    log.exception("mirror %s: unexpected error; retrying", self.prefix)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.retry_max)
                continue
            self._relist.wait()  # set by a compaction or by stop()

    def _list_and_watch(self) -> None:
        kvs, revision = self.store.get_prefix(self.prefix)
        with self._lock:
            if self._stop.is_set():
                return
            new = {kv.key: kv for kv in kvs}
            events = diff(self._items, new, revision)
            self._items = new
            self.revision = revision
            self.relists += 1
            self.last_error = None
            self._emit(events)
            self._synced.set()
            old, self._watch = self._watch, None
        if old is not None:
            old.cancel()
        watch = self.store.watch_prefix(self.prefix, self._on_watch, revision + 1, self._on_error)
        with self._lock:
            if self._stop.is_set():
                stale = watch
            else:
                self._watch, stale = watch, None
        if stale is not None:
            stale.cancel()

    def _emit(self, events: list[WatchEvent]) -> None:
        if not events:
            return
        try:
            self.on_events(events)
        except Exception:  # the consumer's bug must not stop the mirror
            log.exception("mirror %s: on_events failed", self.prefix)

    def _on_watch(self, events: list[WatchEvent]) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            for ev in events:
                if ev.kind == "put":
                    self._items[ev.kv.key] = ev.kv
                else:
                    self._items.pop(ev.kv.key, None)
                self.revision = max(self.revision, ev.kv.mod_revision)
            self._emit(events)

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, StoreCompacted):
            self.compactions += 1
            log.info("mirror %s: %s; re-listing", self.prefix, exc)
        else:
            log.warning("mirror %s: watch ended: %s; re-listing", self.prefix, exc)
        self.last_error = str(exc)
        self._relist.set()
