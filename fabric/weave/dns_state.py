"""weaveDNS persistence: this peer's own entries (tombstones too) and the peers it removed,
in ``STATE/dns.json``, written as temp file + fsync + rename (+ fsync of the directory), so
a kill -9 leaves either the old or the new file, never half of one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fabric.errors import ConfigError
from fabric.fsutil import atomic_write
from fabric.weave.dns_records import Entry, check_container_id, check_ip, normalize_name

__all__ = ["STATE_FILE", "save_state", "load_state"]

STATE_FILE = "dns.json"


def save_state(path: Path, own: Iterable[Entry], removed: Iterable[int], domain: str) -> None:
    doc = {"format": 1, "domain": domain, "removed": sorted(removed),
           "entries": [[e.hostname, e.ip, e.container_id, e.version, e.tombstone]
                       for e in sorted(own, key=lambda e: e.key)]}
    atomic_write(path, json.dumps(doc))


def load_state(path: Path, me: int, domain: str) -> tuple[list[Entry], set[int]]:
    """Own entries (as peer ``me``, one version up: a restart re-announces them newer than
    any copy out there) and removed peers; empty without a file. ConfigError if corrupt."""
    if not path.exists():
        return [], set()
    try:
        doc = json.loads(path.read_text())
        removed = {int(n) for n in doc.get("removed", [])}
        own = [Entry(str(h), check_ip(ip), me, check_container_id(str(c)), int(v) + 1, int(t))
               for h, ip, c, v, t in doc["entries"]]
        for e in own:
            if normalize_name(e.hostname, domain) != e.hostname:
                raise ValueError(f"hostname {e.hostname!r} not normalised")
    except (OSError, ValueError, TypeError, KeyError, ConfigError) as exc:
        raise ConfigError(f"weaveDNS state file {path} is unreadable: {exc}",
                          field="state_dir",
                          fix=f"restore it, or delete {path} to start without this peer's "
                          "DNS names") from exc
    return own, removed
