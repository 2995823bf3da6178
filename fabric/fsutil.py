"""File-system chores shared by the agent, the lab, the dataplane and the backends.

``atomic_write`` replaces a file so that a crash (kill -9, power loss when ``durable``) leaves
either the old or the new content, never half of it: temp file in the same directory (so the
rename stays on one file system), fsync of the file, rename, fsync of the directory (so the
rename itself survives a power loss)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) with permission ``mode``.

    The parent directory is created if missing. ``durable=False`` skips both fsyncs: still
    atomic against a crashed process, not against a power loss (for files rewritten often,
    such as status snapshots). The temp file is created 0600, so a secret never shows with
    looser permissions, and is removed again if anything fails."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
