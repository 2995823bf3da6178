"""Crash-safe local database of one mesh peer (sqlite, synchronous=FULL).

Holds the peer's name, its connection targets, the IPAM ring, its own Paxos
claims and its allocations. Every write is one transaction, committed before
the caller goes on (so an address is on disk before it is handed out).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError

__all__ = ["MeshDB"]


class MeshDB:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            self._db.execute("CREATE TABLE IF NOT EXISTS allocs (handle TEXT PRIMARY KEY, "
                             "addr INTEGER NOT NULL UNIQUE)")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open mesh database {self.path}: {exc}",
                              fix="check the state directory's permissions and free space"
                              ) from exc
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM meta WHERE k=?", (key,))

    def allocs(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT handle, addr FROM allocs").fetchall())

    def put_alloc(self, handle: str, addr: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO allocs VALUES (?, ?)", (handle, addr))

    def del_alloc(self, handle: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM allocs WHERE handle=?", (handle,))

    def clear_allocs(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM allocs")

    def close(self) -> None:
        with self._lock:
            self._db.close()
