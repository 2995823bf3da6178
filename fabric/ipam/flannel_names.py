"""flannel's backend type names, as they appear in etcd (config ``Backend.Type``, lease
``BackendType``) and in ``net-conf.json``: ``udp``, ``vxlan``, ``host-gw``.

Our entry-point names differ for two of them (``flannel-udp``, ``hostgw``). Records we
write use flannel's name, so flannel nodes and tools (``etcdctl get``, flannel's own
daemon) read them; names we read are mapped back to ours.
"""

from __future__ import annotations

__all__ = ["FLANNEL_TYPES", "canonical_backend", "flannel_type"]

# flannel Type -> our backend entry point
FLANNEL_TYPES = {"udp": "flannel-udp", "vxlan": "vxlan", "host-gw": "hostgw"}
_OURS = {ours: theirs for theirs, ours in FLANNEL_TYPES.items()}


def canonical_backend(name: str) -> str:
    """Our backend name for a flannel type name (case-insensitive); others unchanged."""
    return FLANNEL_TYPES.get(name.lower(), name) if isinstance(name, str) else name


def flannel_type(backend: str) -> str:
    """The type name to write into flannel's etcd records for one of our backends."""
    return _OURS.get(canonical_backend(backend), backend)
