"""Shared benchmark output: JSON on stdout (and optionally a file), a small table on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["format_table", "emit", "progress"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the JSON document)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows of dicts as aligned text columns (missing values as '-')."""
    cells = [list(columns)] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def emit(data: Mapping[str, Any], *, rows: Sequence[Mapping[str, Any]] = (),
         columns: Sequence[str] = (), json_file: Path | None = None,
         table_out: TextIO | None = None) -> None:
    """Print ``data`` as JSON on stdout, write it to ``json_file``, the table to stderr."""
    text = json.dumps(data, indent=2, default=str)
    print(text, flush=True)
    if json_file is not None:
        json_file.write_text(text + "\n")
    if rows and columns:
        print(format_table(rows, columns), file=table_out or sys.stderr, flush=True)
