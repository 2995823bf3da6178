"""The datastore adapter's interface: what IPAMs and backends may use of etcd.

Keys and values are ``str`` (values are usually JSON). Revisions are etcd's
cluster-wide revision numbers. Every method raises only :mod:`fabric.errors`
store errors: ``StoreUnavailable`` when etcd cannot be reached,
``StoreCompacted`` when a watch start revision was compacted.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from typing import Literal

import attrs

from fabric.errors import ConfigError

__all__ = ["KeyValue", "WatchEvent", "WatchCallback", "WatchErrorCallback", "StoreLease", "Watch",
           "Store", "TLSFiles"]


@attrs.frozen
class TLSFiles:
    """Client TLS for etcd, flannel's ``-etcd-cafile/-etcd-certfile/-etcd-keyfile``.

    ``cafile`` alone verifies the server; ``certfile`` + ``keyfile`` (both or none) also
    authenticate this client (etcd's ``--client-cert-auth``).
    """

    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""

    def __attrs_post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--etcd-certfile and --etcd-keyfile go together",
                              fix="pass both (the client certificate and its key) or neither")

    def check(self) -> None:
        """The files are readable (checked on connect, not when a saved config is loaded:
        `fabric down` must work after the certificates were rotated away)."""
        for opt, path in (("--etcd-cafile", self.cafile), ("--etcd-certfile", self.certfile),
                          ("--etcd-keyfile", self.keyfile)):
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{opt} {path}: not a readable file", field=opt,
                                  fix="give the path of a PEM file the agent can read")

    def __bool__(self) -> bool:
        return bool(self.cafile or self.certfile)


@attrs.frozen
class KeyValue:
    key: str
    value: str
    mod_revision: int
    create_revision: int = 0
    lease: int = 0  # lease id, 0 when none


@attrs.frozen
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue  # for a delete, value is "" and mod_revision the deletion's revision


WatchCallback = Callable[[list[WatchEvent]], None]  # a batch of events, in revision order
WatchErrorCallback = Callable[[Exception], None]  # the watch ended for good (e.g. compacted)


class StoreLease(abc.ABC):
    """An etcd lease: keys attached to it vanish when it expires or is revoked."""

    id: int
    ttl: int

    @abc.abstractmethod
    def refresh(self) -> int:
        """Keep alive once; returns the remaining TTL. Raises StoreError if expired."""

    @abc.abstractmethod
    def revoke(self) -> None: ...


class Watch(abc.ABC):
    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the watch; the callback is not called after this returns."""


class Store(abc.ABC):
    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` and the store revision they were read at."""

    @abc.abstractmethod
    def put(self, key: str, value: str, lease: StoreLease | None = None) -> int:
        """Write unconditionally; returns the new revision."""

    @abc.abstractmethod
    def create(self, key: str, value: str, lease: StoreLease | None = None) -> bool:
        """Write only if ``key`` does not exist (one transaction). True if written."""

    @abc.abstractmethod
    def compare_and_swap(
        self, key: str, value: str, mod_revision: int, lease: StoreLease | None = None
    ) -> bool:
        """Write only if ``key``'s mod_revision is still ``mod_revision`` (0: absent)."""

    @abc.abstractmethod
    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete (only at ``mod_revision`` if given). True if something was deleted."""

    @abc.abstractmethod
    def lease(self, ttl: int, lease_id: int | None = None) -> StoreLease:
        """Grant a lease of ``ttl`` seconds."""

    @abc.abstractmethod
    def watch_prefix(self, prefix: str, callback: WatchCallback, start_revision: int,
                     on_error: WatchErrorCallback | None = None) -> Watch:
        """Stream changes under ``prefix`` from ``start_revision`` on a background thread.

        Reconnects by itself while etcd is down. If ``start_revision`` has been
        compacted, ``on_error`` receives ``StoreCompacted`` and the watch ends:
        the caller re-lists with :meth:`get_prefix` and watches again.
        See :func:`fabric.store.sync.PrefixMirror` for the list-then-watch loop.
        """

    @abc.abstractmethod
    def close(self) -> None: ...
