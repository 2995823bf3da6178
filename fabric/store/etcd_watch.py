"""``EtcdWatch``: one prefix watch over the v3 gateway's streaming ``/watch``.

Read here directly because etcd3gw's ``Watcher`` hides ``compact_revision`` and
reconnects. It uses the store's TLS session settings and endpoint list: a broken
stream makes the store fail over to its next endpoint, and the watch resumes there
from the last revision it delivered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import requests

from fabric.errors import StoreCompacted, StoreError, StoreUnavailable
from fabric.store.base import Watch, WatchEvent
from fabric.store.etcd_codec import b64, kv_from_json, prefix_end

if TYPE_CHECKING:
    from fabric.store.etcd import EtcdStore

__all__ = ["EtcdWatch"]

log = logging.getLogger("fabric.store")

_WATCH_READ_TIMEOUT = 15 * 60.0  # > etcd's 10 min progress-notify interval
_RETRY_MIN, _RETRY_MAX = 0.1, 5.0


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
            "key": b64(self.prefix),
            "range_end": b64(prefix_end(self.prefix)),
            "start_revision": self.next_revision,
            "progress_notify": True,
        }
        session = self.store.new_session()
        url = self.store.url
        try:
            self._resp = session.post(
                f"{url}/v3/watch",
                json={"create_request": create},
                stream=True,
                timeout=(self.store.timeout, _WATCH_READ_TIMEOUT),
                **self.store.tls_kwargs(),
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
                self.store.failover(url)
                raise StoreUnavailable(f"watch stream to {url} broke: {exc}") from exc
        except (OSError, AttributeError, ValueError) as exc:  # socket shut under the reader
            if not self._stopped.is_set():
                self.store.failover(url)
                raise StoreUnavailable(f"watch stream to {url} broke: {exc}") from exc
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
            kv = kv_from_json(ev.get("kv", {}))
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
