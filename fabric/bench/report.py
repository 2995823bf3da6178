"""Shared benchmark output: JSON on stdout (and optionally a file), a small table on stderr;
the matrix's Markdown table and `fabric bench report` (table and plots from its JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from fabric.table import format_table

__all__ = ["format_table", "emit", "progress", "format_markdown", "emit_matrix",
           "write_outputs", "register", "MATRIX_COLUMNS"]


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the JSON document)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


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


# -- fabric bench matrix: Markdown table, plots, `fabric bench report RESULTS.json` --------
# (column, header, format) of the Markdown table; a row lacking a value shows "-"
MATRIX_COLUMNS = [
    ("tcp1_gbps", "TCP 1 Gbit/s", "{:.2f}"), ("tcp4_gbps", "TCP 4 Gbit/s", "{:.2f}"),
    ("ratio_to_underlay", "/ underlay", "{:.2f}"), ("ratio_to_reference", "/ reference", "{:.2f}"),
    ("cpu_s_per_gb", "CPU s/GB", "{:.2f}"), ("rr_per_s", "RR/s", "{:.0f}"),
    ("rtt_p50_us", "RTT p50 µs", "{:.0f}"), ("rtt_p99_us", "RTT p99 µs", "{:.0f}"),
    ("ping_ms", "ping ms", "{:.3f}"), ("cni_add_p50_ms", "ADD p50 ms", "{:.0f}"),
    ("cni_add_p99_ms", "ADD p99 ms", "{:.0f}"), ("cni_del_p50_ms", "DEL p50 ms", "{:.0f}"),
    ("cni_add20_p99_ms", "20 ADD p99 ms", "{:.0f}"), ("agent_rss_mb", "RSS MB", "{:.0f}"),
    ("join_s", "join s", "{:.1f}"), ("leave_s", "leave s", "{:.1f}"),
]


def row_label(row: Mapping[str, Any]) -> str:
    """``backend`` or ``backend (variant)``; reference rows as they are named."""
    v = row.get("variant")
    return row["backend"] if not v or v == "default" else f"{row['backend']} ({v})"


def format_markdown(data: Mapping[str, Any]) -> str:
    """The matrix as a Markdown table, errors listed under it, machine facts above it."""
    m = data.get("machine", {})
    lines = [f"Machine: {m.get('cpu_model') or '?'}, {m.get('cpus')} CPUs, kernel "
             f"{m.get('kernel')}, load {m.get('loadavg_before', ['?'])[0]} -> "
             f"{m.get('loadavg_after', ['?'])[0]}; {'quick' if data.get('quick') else 'full'} "
             f"run, {data.get('settings', {}).get('rounds')} rounds, "
             f"{data.get('duration_s')} s.", "",
             "| row | reference | " + " | ".join(h for _, h, _ in MATRIX_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(MATRIX_COLUMNS)]
    for row in data.get("rows", []):
        cells = []
        for key, _, fmt in MATRIX_COLUMNS:
            v = row.get(key)
            cells.append(fmt.format(v) if isinstance(v, int | float) else "-")
        name = row_label(row) + (" **error**" if row.get("error") else "")
        lines.append(f"| {name} | {row.get('reference') or '-'} | " + " | ".join(cells) + " |")
    errs = [(row_label(r), k, v) for r in data.get("rows", [])
            for k, v in ([("row", r["error"])] if r.get("error") else [])
            + sorted((r.get("errors") or {}).items())]
    if errs:
        lines += ["", "Errors:"] + [f"- {n}: {k}: {str(v)[:300]}" for n, k, v in errs]
    return "\n".join(lines) + "\n"


def emit_matrix(data: dict[str, Any], out: Path | None) -> None:
    """JSON on stdout; with ``out``: matrix.json, matrix.md and the plots there."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        data["plots"] = write_outputs(data, out)
    print(json.dumps(data, indent=2, default=str), flush=True)
    print(format_markdown(data), file=sys.stderr, flush=True)


def write_outputs(data: Mapping[str, Any], out: Path) -> list[str] | str:
    """matrix.json, matrix.md, plots; returns the plot files or why there are none."""
    from fabric.bench.plots import write_plots

    plots = write_plots(data, out)
    (out / "matrix.md").write_text(format_markdown(data))
    (out / "matrix.json").write_text(json.dumps({**data, "plots": plots}, indent=2,
                                                default=str) + "\n")
    return plots


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="table and plots from a `bench matrix` JSON")
    p.add_argument("results", type=Path, help="the JSON `fabric bench matrix` printed")
    p.add_argument("--out", type=Path, help="directory (default: the JSON's directory)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: Any) -> int:
    from fabric.errors import ConfigError

    try:
        data = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {args.results}: {exc}",
                          fix="pass the JSON file `fabric bench matrix` wrote") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ConfigError(f"{args.results} is not a `fabric bench matrix` result (no rows)",
                          fix="pass the JSON file `fabric bench matrix` wrote")
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    plots = write_outputs(data, out)
    print(format_markdown(data), end="")
    print(f"plots: {plots if isinstance(plots, str) else ', '.join(plots)}", file=sys.stderr)
    return 0
