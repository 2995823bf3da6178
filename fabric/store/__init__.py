"""The datastore adapter: :func:`connect` returns a :class:`~fabric.store.base.Store`.

``base`` is the interface (public for backends), ``etcd`` the etcd v3 gateway
implementation, ``sync`` the list-then-watch helper (:class:`PrefixMirror`).
"""

from __future__ import annotations

from fabric.store.base import KeyValue, Store, StoreLease, Watch, WatchEvent

__all__ = ["connect", "KeyValue", "Store", "StoreLease", "Watch", "WatchEvent"]


def connect(url: str) -> Store:
    """A store for ``url`` (``http://host:port`` of an etcd >= 3.4). Does no I/O."""
    from fabric.store.etcd import EtcdStore

    return EtcdStore(url)
