"""``EtcdStore``: :class:`fabric.store.base.Store` over etcd's v3 JSON gateway.

Production etcd: a list of endpoints (flannel's ``-etcd-endpoints``) and client TLS
(:class:`~fabric.store.base.TLSFiles`), shared by unary calls and watch streams.
Calls go to the current endpoint; when it cannot be reached the store moves on to the
next one and, if the request never reached the old one (connection refused, TLS
handshake), sends it there at once. A request that may have been received (read
timeout, reset mid-answer) is not re-sent: a create or compare-and-swap could otherwise
apply twice; it fails with ``StoreUnavailable`` and the next call uses the next
endpoint. Every failure leaves as a :mod:`fabric.errors` store error.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from fabric.errors import ConfigError, StoreError, StoreUnavailable
from fabric.store.base import (
    KeyValue,
    Store,
    StoreLease,
    TLSFiles,
    Watch,
    WatchCallback,
    WatchErrorCallback,
)
from fabric.store.etcd_codec import b64 as _b64
from fabric.store.etcd_codec import kv_from_json as _kv
from fabric.store.etcd_codec import prefix_end
from fabric.store.etcd_watch import EtcdWatch

__all__ = ["EtcdStore", "EtcdLease", "EtcdWatch", "prefix_end", "parse_endpoints"]

log = logging.getLogger("fabric.store")

_REQUEST_TIMEOUT = 5.0  # seconds, every unary call


def parse_endpoints(urls: str | Sequence[str], tls: bool = False) -> list[str]:
    """``"https://a:2379,https://b:2379"`` (or a list) -> normalised URLs, in order.

    A bare ``HOST:PORT`` gets ``https://`` when TLS files are given, else ``http://``.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for raw in (u.strip() for u in items):
        if not raw:
            continue
        default = "https" if tls else "http"
        parts = urlsplit(raw if "://" in raw else f"{default}://{raw}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"etcd URL {raw!r} is invalid", field="--etcd-endpoints",
                fix="use http(s)://HOST:PORT, e.g. https://198.18.0.2:2379",
            )
        url = f"{parts.scheme}://{parts.hostname}:{parts.port or 2379}"
        if url not in out:
            out.append(url)
    if not out:
        raise ConfigError("no etcd endpoint given", field="--etcd-endpoints",
                          fix="e.g. --etcd-endpoints https://10.0.0.1:2379,https://10.0.0.2:2379")
    return out


class EtcdLease(StoreLease):
    def __init__(self, store: EtcdStore, lease_id: int, ttl: int) -> None:
        self.store = store
        self.id = lease_id
        self.ttl = ttl

    def refresh(self) -> int:
        result = self.store._call("/lease/keepalive", {"ID": self.id}).get("result", {})
        remaining = int(result.get("TTL", -1))
        if remaining <= 0:
            raise StoreError(f"etcd lease {self.id:x} has expired", fix="grant a new lease")
        return remaining

    def revoke(self) -> None:
        try:
            self.store._call("/lease/revoke", {"ID": self.id})
        except StoreError as exc:
            if "not found" not in str(exc):  # already expired or revoked: that is the goal
                raise

    def __repr__(self) -> str:
        return f"EtcdLease(id={self.id:x}, ttl={self.ttl})"


class EtcdStore(Store):
    """Talks to a list of etcd endpoints (``http(s)://host:port``), one at a time."""

    def __init__(self, urls: str | Sequence[str], *, tls: TLSFiles | None = None,
                 timeout: float = _REQUEST_TIMEOUT) -> None:
        self.tls = tls or TLSFiles()
        self.tls.check()
        self.endpoints = parse_endpoints(urls, bool(self.tls))
        if self.tls and not any(u.startswith("https:") for u in self.endpoints):
            raise ConfigError("TLS files given but every etcd endpoint is http://",
                              field="--etcd-endpoints", fix="use https:// endpoints")
        self.timeout = timeout
        self._current = 0
        self._session = self.new_session()
        self._watches: set[EtcdWatch] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The endpoint calls go to now."""
        return self.endpoints[self._current]

    def new_session(self) -> requests.Session:
        """A session for this store's requests (watches open one each)."""
        return requests.Session()

    def tls_kwargs(self) -> dict[str, Any]:
        """Per-request TLS arguments: a session's ``verify`` would lose against
        $REQUESTS_CA_BUNDLE, a request's does not."""
        out: dict[str, Any] = {}
        if self.tls.cafile:
            out["verify"] = self.tls.cafile
        if self.tls.certfile:
            out["cert"] = (self.tls.certfile, self.tls.keyfile)
        return out

    def failover(self, failed_url: str) -> None:
        """Move to the endpoint after ``failed_url`` (no-op if another caller already did)."""
        with self._lock:
            if len(self.endpoints) > 1 and self.endpoints[self._current] == failed_url:
                self._current = (self._current + 1) % len(self.endpoints)
                log.warning("etcd at %s is unreachable; using %s", failed_url, self.url)

    # -- plumbing --
    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        last: BaseException | None = None
        for _ in self.endpoints:
            url = self.url
            try:
                return self._post(url, path, body)
            except _NotSent as exc:  # never reached that member: safe to send elsewhere
                errors.append(str(exc))
                last = exc.__cause__
                self.failover(url)
            except StoreUnavailable:
                self.failover(url)
                raise
        raise StoreUnavailable(
            f"etcd is unreachable: {'; '.join(errors)}",
            fix=_TLS_FIX if any("TLS" in e for e in errors) else
            "check that etcd runs and the URLs are right; the agent retries",
        ) from last

    def _post(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._session.post(f"{url}/v3{path}", json=body, timeout=self.timeout,
                                      **self.tls_kwargs())
        except requests.exceptions.SSLError as exc:
            raise _NotSent(f"TLS with {url} failed: {_reason(exc)}") from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise _NotSent(f"{url}: connect timed out") from exc
        except requests.exceptions.ConnectionError as exc:
            if _refused(exc):
                raise _NotSent(f"{url}: {_reason(exc)}") from exc
            raise StoreUnavailable(f"etcd at {url} is unreachable: {exc}",
                                   fix="the agent retries; the next call uses the next "
                                       "endpoint") from exc
        except requests.RequestException as exc:
            raise StoreUnavailable(f"etcd at {url} is unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise StoreError(f"etcd at {url} refused {path}: {_detail(resp.text)}")
        try:
            return resp.json()
        except ValueError as exc:  # a non-JSON answer
            raise StoreError(f"etcd at {url} sent a malformed answer to {path}") from exc

    def _txn(self, compare: list[dict], success: list[dict]) -> dict[str, Any]:
        return self._call("/kv/txn", {"compare": compare, "success": success, "failure": []})

    @staticmethod
    def _put_op(key: str, value: str, lease: StoreLease | None) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            put["lease"] = lease.id
        return {"request_put": put}

    # -- Store --
    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("/kv/range", {"key": _b64(key)}).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        result = self._call("/kv/range", body)
        revision = int(result.get("header", {}).get("revision", 0))
        return [_kv(item) for item in result.get("kvs") or []], revision

    def put(self, key: str, value: str, lease: StoreLease | None = None) -> int:
        body = self._put_op(key, value, lease)["request_put"]
        return int(self._call("/kv/put", body).get("header", {}).get("revision", 0))

    def create(self, key: str, value: str, lease: StoreLease | None = None) -> bool:
        cmp = {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
        return bool(self._txn([cmp], [self._put_op(key, value, lease)]).get("succeeded"))

    def compare_and_swap(
        self, key: str, value: str, mod_revision: int, lease: StoreLease | None = None
    ) -> bool:
        if mod_revision == 0:
            return self.create(key, value, lease)
        cmp = {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}
        return bool(self._txn([cmp], [self._put_op(key, value, lease)]).get("succeeded"))

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        if mod_revision is None:
            return int(self._call("/kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0
        cmp = {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}
        result = self._txn([cmp], [{"request_delete_range": {"key": _b64(key)}}])
        if not result.get("succeeded"):
            return False
        resp = (result.get("responses") or [{}])[0].get("response_delete_range", {})
        return int(resp.get("deleted", 0)) > 0

    def lease(self, ttl: int, lease_id: int | None = None) -> StoreLease:
        """Grant a lease; with ``lease_id``, re-attach to that lease if it is alive with ``ttl``."""
        if ttl < 1:
            raise ConfigError(f"lease TTL {ttl} is invalid", fix="use a TTL of at least 1 second")
        if lease_id:
            existing = EtcdLease(self, lease_id, ttl)
            try:
                if existing.refresh() == ttl:  # keepalive answers the granted TTL
                    return existing
            except StoreUnavailable:
                raise
            except StoreError:
                pass  # expired: grant a fresh one below
        result = self._call("/lease/grant", {"TTL": ttl, "ID": 0})
        if result.get("error") or not result.get("ID"):
            raise StoreError(f"etcd refused a lease: {result.get('error') or result}")
        return EtcdLease(self, int(result["ID"]), int(result.get("TTL", ttl)))

    def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (for tests and maintenance)."""
        self._call("/kv/compaction", {"revision": revision, "physical": True})

    def watch_prefix(self, prefix: str, callback: WatchCallback, start_revision: int,
                     on_error: WatchErrorCallback | None = None) -> Watch:
        watch = EtcdWatch(self, prefix, callback, start_revision, on_error)
        with self._lock:
            self._watches.add(watch)
        watch.start()
        return watch

    def _forget(self, watch: EtcdWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.cancel()
        self._session.close()

    def __repr__(self) -> str:
        return f"EtcdStore({', '.join(self.endpoints)!r})"


_TLS_FIX = "check --etcd-cafile/--etcd-certfile/--etcd-keyfile against etcd's certificates"


class _NotSent(Exception):
    """The request never reached the endpoint (refused / TLS handshake): re-send elsewhere."""


def _refused(exc: requests.exceptions.ConnectionError) -> bool:
    """No TCP connection came up (refused, no route): urllib3's NewConnectionError inside."""
    text = str(exc)
    return "NewConnectionError" in text or "Failed to establish a new connection" in text


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "certificate required", "Connection refused",
                   "unknown ca", "bad certificate", "No route to host"):
        if marker.lower() in text.lower():
            return marker
    return text[:200]


def _detail(text: str) -> str:
    try:
        return str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        return text or "no detail"


