"""Share endpoints (address, namespace, labels) between nodes through the store.

Each agent publishes its local endpoints under ``<prefix>/policy/endpoints/<node>/<id>``
and mirrors everyone else's, so selectors match pods on every node. Without a store
only local pods are known (single node).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from fabric.errors import FabricError
from fabric.policy.compile import EndpointInfo, short_id

__all__ = ["EndpointDirectory"]

log = logging.getLogger("fabric.policy")


def _encode(ep: EndpointInfo, node: str) -> str:
    return json.dumps({"key": ep.key, "addresses": [str(a) for a in ep.addresses],
                       "namespace": ep.namespace, "labels": dict(ep.labels), "name": ep.name,
                       "node": node}, sort_keys=True)


def _decode(value: str) -> EndpointInfo | None:
    try:
        d = json.loads(value)
        return EndpointInfo(
            key=str(d["key"]), addresses=tuple(IPv4Address(a) for a in d["addresses"]),
            namespace=str(d.get("namespace", "default")),
            labels=tuple(sorted((str(k), str(v)) for k, v in d.get("labels", {}).items())),
            name=str(d.get("name", "")), node=str(d.get("node", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class EndpointDirectory:
    """Publishes local endpoints and calls ``on_change(remote)`` when others' change."""

    def __init__(self, store: Any, prefix: str, node: str,
                 on_change: Callable[[dict[str, EndpointInfo]], None]) -> None:
        self.store = store
        self.root = f"{prefix}/policy/endpoints/"
        self.node = node
        self.on_change = on_change
        self.remote: dict[str, EndpointInfo] = {}  # store key -> endpoint
        self.error: str | None = None
        self._watch: Any = None
        self._stopped = threading.Event()

    def _key(self, ep_key: str) -> str:
        return f"{self.root}{self.node}/{short_id(ep_key, 16)}"

    def publish(self, ep: EndpointInfo) -> None:
        try:
            self.store.put(self._key(ep.key), _encode(ep, self.node))
        except FabricError as exc:
            self.error = f"publishing {ep.display}: {exc}"
            log.warning("policy: %s", self.error)

    def unpublish(self, ep_key: str) -> None:
        try:
            self.store.delete(self._key(ep_key))
        except FabricError as exc:
            log.warning("policy: unpublishing %s: %s", ep_key, exc)

    def start(self, local_keys: set[str]) -> None:
        """Drop our stale entries, list everyone's, then watch."""
        self._relist(local_keys)

    def _relist(self, local_keys: set[str] | None = None) -> None:
        if self._stopped.is_set():
            return
        try:
            kvs, rev = self.store.get_prefix(self.root)
        except FabricError as exc:
            self.error = f"listing endpoints: {exc}"
            log.warning("policy: %s; retrying", self.error)
            t = threading.Timer(2.0, self._relist, args=(local_keys,))
            t.daemon = True
            t.start()
            return
        mine = {self._key(k) for k in (local_keys or ())}
        remote = {}
        for kv in kvs:
            if kv.key.startswith(f"{self.root}{self.node}/"):
                if local_keys is not None and kv.key not in mine:
                    self.unpublish_raw(kv.key)
                continue
            ep = _decode(kv.value)
            if ep is not None:
                remote[kv.key] = ep
        self.remote = remote
        self.error = None
        self.on_change(dict(self.remote))
        self._watch = self.store.watch_prefix(self.root, self._events, rev + 1,
                                              on_error=self._watch_error)

    def unpublish_raw(self, key: str) -> None:
        try:
            self.store.delete(key)
        except FabricError as exc:
            log.warning("policy: deleting stale %s: %s", key, exc)

    def _watch_error(self, exc: Exception) -> None:
        self.error = f"watch: {exc}"
        threading.Thread(target=self._relist, daemon=True).start()

    def _events(self, events: list[Any]) -> None:
        changed = False
        for ev in events:
            if ev.kv.key.startswith(f"{self.root}{self.node}/"):
                continue
            if ev.kind == "delete":
                changed |= self.remote.pop(ev.kv.key, None) is not None
            else:
                ep = _decode(ev.kv.value)
                if ep is not None and self.remote.get(ev.kv.key) != ep:
                    self.remote[ev.kv.key] = ep
                    changed = True
        if changed:
            self.on_change(dict(self.remote))

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
