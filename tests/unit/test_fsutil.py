"""fabric.fsutil.atomic_write: content, mode, no temp file left, old file kept on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fabric.fsutil import atomic_write


def test_text_and_bytes_replace_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.json"
    atomic_write(path, "one\n")
    assert path.read_text() == "one\n"
    atomic_write(path, b"\x00two", durable=False)
    assert path.read_bytes() == b"\x00two"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_mode_is_applied(tmp_path: Path) -> None:
    key = tmp_path / "key"
    atomic_write(key, b"k" * 32, mode=0o600)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = tmp_path / "pub"
    atomic_write(public, "x")
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, "old")
    os.mkdir(tmp_path / "g")  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write(tmp_path / "g", "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "g"]
