"""Plots of a ``fabric bench matrix`` result: horizontal bars per row (PNG and SVG) for
throughput, latency, CPU per GB and CNI latency. matplotlib is the optional extra
``netfabric[bench]``; without it :func:`write_plots` says so and writes none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_plots", "PLOTS", "NO_MATPLOTLIB"]

NO_MATPLOTLIB = "matplotlib is not installed: no plots (pip install 'netfabric[bench]')"
# file stem -> (title, x label, [(metric, legend)]); the first metric sorts nothing: rows
# keep the matrix's order (underlay and references first) so every plot reads alike
PLOTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "throughput": ("TCP throughput pod to pod (higher is better)\n"
                   "in brackets: 1 stream's ratio to the row's reference", "Gbit/s",
                   [("tcp1_gbps", "1 stream"), ("tcp4_gbps", "4 streams")]),
    "latency": ("TCP request/response round trip (lower is better)", "µs",
                [("rtt_p50_us", "p50"), ("rtt_p99_us", "p99")]),
    "cpu": ("CPU cost, both hosts together (lower is better)", "CPU seconds per GB",
            [("cpu_s_per_gb", "1 stream")]),
    "cni": ("CNI plugin latency (lower is better)", "ms",
            [("cni_add_p50_ms", "ADD p50"), ("cni_add_p99_ms", "ADD p99"),
             ("cni_del_p50_ms", "DEL p50"), ("cni_add20_p99_ms", "20 concurrent ADD p99")]),
}
_PALE = {"underlay", "reference"}  # drawn paler, labelled grey
_SERIES = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


def write_plots(data: Mapping[str, Any], out: Path) -> list[str] | str:
    """Write every plot as PNG and SVG into ``out``; the file names, or why none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return NO_MATPLOTLIB
    from fabric.bench.report import row_label

    rows = list(data.get("rows", []))
    files: list[str] = []
    for stem, (title, xlabel, series) in PLOTS.items():
        shown = [r for r in rows if any(isinstance(r.get(m), int | float) for m, _ in series)]
        if stem == "cni":  # the reference plugin's numbers sit on both kernel rows: once
            shown = _cni_rows(shown)
        if not shown:
            continue
        fig = _bars(plt, shown, series, title, xlabel, row_label)
        for ext in ("png", "svg"):
            path = out / f"{stem}.{ext}"
            fig.savefig(path, dpi=110 if ext == "png" else None, bbox_inches="tight")
            files.append(path.name)
        plt.close(fig)
    return files


def _cni_rows(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out, seen = [], set()
    for r in rows:
        plugin = r.get("cni_plugin")
        if plugin:
            if plugin in seen:
                continue
            seen.add(plugin)
            r = {**r, "backend": plugin, "variant": ""}
        out.append(r)
    return out


def _bars(plt: Any, rows: Sequence[Mapping[str, Any]], series: list[tuple[str, str]],
          title: str, xlabel: str, label: Any) -> Any:
    n, k = len(rows), len(series)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(9, 0.45 * n * max(1, k * 0.6) + 1.4))
    for j, (metric, legend) in enumerate(series):
        ys = [i + (j - (k - 1) / 2) * height for i in range(n)]
        vals = [r.get(metric) if isinstance(r.get(metric), int | float) else 0 for r in rows]
        bars = ax.barh(ys, vals, height=height * 0.95, color=_SERIES[j % len(_SERIES)],
                       label=legend)
        for bar, r in zip(bars, rows, strict=True):  # underlay and references: paler
            if r.get("kind") in _PALE:
                bar.set_alpha(0.45)
        top = max(vals) if vals else 0
        for bar, r, v in zip(bars, rows, vals, strict=True):
            text = "n/a" if not isinstance(r.get(metric), int | float) else _fmt(v)
            ratio = r.get("ratio_to_reference")
            if metric == "tcp1_gbps" and isinstance(ratio, int | float):
                text += f"  ({ratio:.2f}x {r.get('reference')})"  # the framework's own cost
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, text,
                    va="center", fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels([label(r) + (" (ref)" if r.get("kind") == "reference" else "")
                        for r in rows], fontsize=9)
    for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
        if r.get("kind") in _PALE:
            tick.set_color("#555555")
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(x=0.28)  # room for the value labels
    if k > 1:  # handles of their own: a legend taken from a pale reference bar misleads
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=_SERIES[j % len(_SERIES)], label=legend)
                           for j, (_, legend) in enumerate(series)],
                  fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
