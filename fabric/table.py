"""One plain-text table formatter for every command that prints tables (`fabric plugins`,
`fabric status`, `fabric policy`, the benches)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "cell"]


def cell(value: Any) -> str:
    """How a value shows in a table: floats with 3 decimals, lists joined, None as '-'."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "-" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                 headers: Sequence[str] | None = None, indent: str = "") -> str:
    """Rows of mappings as aligned text columns under a header line (missing values '-')."""
    cells = [list(headers or columns)] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip() for row in cells)
