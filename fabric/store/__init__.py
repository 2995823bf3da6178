"""The datastore adapter: :func:`connect` returns a :class:`~fabric.store.base.Store`.

``base`` is the interface (public for backends), ``etcd`` the etcd v3 gateway
implementation, ``sync`` the list-then-watch helper (:class:`PrefixMirror`).
"""

from __future__ import annotations

from collections.abc import Sequence

from fabric.store.base import KeyValue, Store, StoreLease, TLSFiles, Watch, WatchEvent

__all__ = ["connect", "KeyValue", "Store", "StoreLease", "TLSFiles", "Watch", "WatchEvent"]


def connect(urls: str | Sequence[str], tls: TLSFiles | None = None) -> Store:
    """A store for etcd >= 3.4 at ``urls`` (one URL, a comma list or a sequence: failover,
    in order), with client TLS files if given. Does no I/O."""
    from fabric.store.etcd import EtcdStore

    return EtcdStore(urls, tls=tls)
