"""The v3 JSON gateway's encoding: base64 keys/values, prefix ranges, key-value records."""

from __future__ import annotations

import base64
from typing import Any

from fabric.store.base import KeyValue

__all__ = ["b64", "unb64", "prefix_end", "kv_from_json"]


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def unb64(data: str) -> str:
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


def kv_from_json(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(item.get("key", "")),
        value=unb64(item.get("value", "")),
        mod_revision=int(item.get("mod_revision", 0)),
        create_revision=int(item.get("create_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


