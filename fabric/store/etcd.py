"""``EtcdStore``: :class:`fabric.store.base.Store` over etcd's v3 JSON gateway.

Unary calls go through etcd3gw's client (``/v3/kv/*``, ``/v3/lease/*``); the
watch stream is read here directly because etcd3gw's ``Watcher`` hides
``compact_revision`` and reconnects. Every failure leaves as a
:mod:`fabric.errors` store error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as gwexc

from fabric.errors import ConfigError, StoreCompacted, StoreError, StoreUnavailable
from fabric.store.base import KeyValue, Store, StoreLease, Watch, WatchEvent

__all__ = ["EtcdStore", "EtcdLease", "EtcdWatch", "prefix_end"]

log = logging.getLogger("fabric.store")

_REQUEST_TIMEOUT = 5.0  # seconds, every unary call
_WATCH_READ_TIMEOUT = 15 * 60.0  # > etcd's 10 min progress-notify interval
_RETRY_MIN, _RETRY_MAX = 0.1, 5.0


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def _unb64(data: str) -> str:
    return base64.b64decode(data).decode(errors="replace")


def prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix" (last byte + 1)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"
    raw[-1] += 1
    return raw.decode(errors="surrogateescape")


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(item.get("key", "")),
        value=_unb64(item.get("value", "")),
        mod_revision=int(item.get("mod_revision", 0)),
        create_revision=int(item.get("create_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


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
    """Talks to one etcd endpoint URL (``http://host:port``)."""

    def __init__(self, url: str, *, timeout: float = _REQUEST_TIMEOUT) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"etcd URL {url!r} is invalid",
                fix="use http://HOST:PORT, e.g. http://198.18.0.2:2379",
            )
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self._client = etcd3gw.Etcd3Client(
            host=parts.hostname,
            port=parts.port or 2379,
            protocol=parts.scheme,
            timeout=timeout,
            api_path="/v3/",  # etcd >= 3.4; skips the /version discovery round trip
        )
        self._watches: set[EtcdWatch] = set()
        self._lock = threading.Lock()

    # -- plumbing --
    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._client.post(self._client.get_url(path), json=body)
        except (gwexc.ConnectionFailedError, gwexc.ConnectionTimeoutError) as exc:
            raise StoreUnavailable(
                f"etcd at {self.url} is unreachable: {exc.detail_text or exc}",
                fix="check that etcd runs and the URL is right; the agent retries",
            ) from exc
        except gwexc.Etcd3Exception as exc:
            raise StoreError(f"etcd at {self.url} refused {path}: {_detail(exc)}") from exc
        except requests.RequestException as exc:
            raise StoreUnavailable(f"etcd at {self.url} is unreachable: {exc}") from exc
        except ValueError as exc:  # a non-JSON answer
            raise StoreError(f"etcd at {self.url} sent a malformed answer to {path}") from exc

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

    def watch_prefix(
        self,
        prefix: str,
        callback: Callable[[list[WatchEvent]], None],
        start_revision: int,
        on_error: Callable[[Exception], None] | None = None,
    ) -> Watch:
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
        self._client.session.close()

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r})"


def _detail(exc: gwexc.Etcd3Exception) -> str:
    text = exc.detail_text or ""
    try:
        return str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        return text or type(exc).__name__


class EtcdWatch(Watch):
    """One prefix watch on its own thread and HTTP stream; reconnects from the last revision."""

    def __init__(
        self,
        store: EtcdStore,
        prefix: str,
        callback: Callable[[list[WatchEvent]], None],
        start_revision: int,
        on_error: Callable[[Exception], None] | None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.on_error = on_error
        self.next_revision = max(1, start_revision)
        self.connected = threading.Event()  # set while a stream is established
        self._stopped = threading.Event()
        self._deliver = threading.RLock()  # held while calling back; cancel() waits on it
        self._resp: requests.Response | None = None
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {prefix}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stopped.set()
        self._abort_stream()
        with self._deliver:  # a callback in progress finishes; none starts after this
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self.store._forget(self)

    def _abort_stream(self) -> None:
        resp = self._resp
        if resp is None:
            return
        try:  # unblock the reader: shut the socket down under it
            sock = socket.fromfd(resp.raw.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except (OSError, AttributeError, ValueError):
            pass
        with contextlib.suppress(Exception):  # closing a broken stream must not raise
            resp.close()

    def _run(self) -> None:
        delay = _RETRY_MIN
        while not self._stopped.is_set():
            try:
                self._stream()
                delay = _RETRY_MIN  # the server closed a healthy stream: reconnect at once
            except StoreCompacted as exc:
                self._fail(exc)
                return
            except StoreError as exc:
                log.debug("watch %s: %s; retrying in %.1fs", self.prefix, exc, delay)
            except Exception:  # a bug must not end the watch silently
                log.exception("watch %s: unexpected error; retrying in %.1fs", self.prefix, delay)
            finally:
                self.connected.clear()
            if self._stopped.wait(delay):
                break
            delay = min(delay * 2, _RETRY_MAX)
        self.store._forget(self)

    def _fail(self, exc: Exception) -> None:
        with self._deliver:
            if self._stopped.is_set():
                return
            self._stopped.set()
            if self.on_error is not None:
                self.on_error(exc)
            else:
                log.error("watch %s ended: %s", self.prefix, exc)

    def _stream(self) -> None:
        create = {
            "key": _b64(self.prefix),
            "range_end": _b64(prefix_end(self.prefix)),
            "start_revision": self.next_revision,
            "progress_notify": True,
        }
        session = requests.Session()
        try:
            self._resp = session.post(
                self.store._client.get_url("/watch"),
                json={"create_request": create},
                stream=True,
                timeout=(self.store.timeout, _WATCH_READ_TIMEOUT),
            )
            if self._stopped.is_set():
                return
            if self._resp.status_code != 200:
                raise StoreError(f"etcd refused a watch on {self.prefix}: {self._resp.text}")
            for message in self._messages(self._resp):
                self._handle(message)
                if self._stopped.is_set():
                    return
        except requests.RequestException as exc:
            if not self._stopped.is_set():
                raise StoreUnavailable(f"watch stream to {self.store.url} broke: {exc}") from exc
        except (OSError, AttributeError, ValueError) as exc:  # socket shut under the reader
            if not self._stopped.is_set():
                raise StoreUnavailable(f"watch stream to {self.store.url} broke: {exc}") from exc
        finally:
            resp, self._resp = self._resp, None
            if resp is not None:
                resp.close()
            session.close()

    @staticmethod
    def _messages(resp: requests.Response) -> Iterator[dict[str, Any]]:
        buf = b""
        for chunk in resp.iter_content(chunk_size=None):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
        if buf.strip():
            yield json.loads(buf)

    def _handle(self, message: dict[str, Any]) -> None:
        if "error" in message:
            raise StoreUnavailable(f"watch on {self.prefix} failed: {message['error']}")
        result = message.get("result", {})
        compacted = int(result.get("compact_revision", 0))
        if compacted:
            raise StoreCompacted(
                f"watch on {self.prefix} from revision {self.next_revision} was compacted "
                f"(oldest kept revision {compacted})",
                compact_revision=compacted,
            )
        if result.get("created"):
            self.connected.set()
            return
        if result.get("canceled"):
            raise StoreUnavailable(f"etcd cancelled the watch on {self.prefix}")
        events = []
        for ev in result.get("events") or []:
            kv = _kv(ev.get("kv", {}))
            events.append(WatchEvent("delete" if ev.get("type") == "DELETE" else "put", kv))
        header_rev = int(result.get("header", {}).get("revision", 0))
        if events:
            self.next_revision = max(self.next_revision, events[-1].kv.mod_revision + 1)
            with self._deliver:
                if self._stopped.is_set():
                    return
                try:
                    self.callback(events)
                except Exception:  # a faulty callback must not kill the watch
                    log.exception("watch %s: callback failed", self.prefix)
        elif header_rev and not result.get("fragment"):  # progress notification
            self.next_revision = max(self.next_revision, header_rev + 1)
