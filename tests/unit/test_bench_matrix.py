"""`fabric bench matrix` without a lab: which rows, how ratios are taken, the Markdown table,
the plots (real matplotlib when installed) and `fabric bench report` on good and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fabric.bench import matrix, plots, report
from fabric.bench.matrix_rows import C_REF, UNDERLAY, VARIANTS, installed_backends, select_rows
from fabric.plugins import known_names


def test_all_rows_every_installed_backend_and_variant_plus_references() -> None:
    rows = select_rows("all")
    keys = [r.key for r in rows]
    assert keys[:4] == [UNDERLAY, "kernel-routed", "kernel-vxlan", C_REF]
    for b in installed_backends():
        for variant, _ in VARIANTS.get(b, [("default", {})]):
            assert f"{b}/{variant}" in keys
    assert "fake/default" not in keys  # test-only plugins are not compared
    assert "host-gw/default" not in keys  # an alias of hostgw: one row per implementation
    for r in rows:
        if r.kind == "backend":
            assert r.reference in ("kernel-routed", "kernel-vxlan", C_REF), r
    if "flannel-udp" in known_names("backend"):
        assert next(r for r in rows if r.backend == "flannel-udp").reference == C_REF
    if "calico-bgp" in known_names("backend"):
        by = {r.key: r.reference for r in rows}
        assert by["calico-bgp/native"] == "kernel-routed"
        assert by["calico-bgp/vxlan"] == "kernel-vxlan"


def test_unknown_backend_is_a_row_with_its_error() -> None:
    rows = select_rows(["nosuch"])
    bad = [r for r in rows if r.backend == "nosuch"]
    assert len(bad) == 1 and "unknown backend 'nosuch'" in bad[0].error
    assert "installed:" in bad[0].error


def _row(key: str, kind: str = "backend", reference: str | None = None,
         tcp1: list[float] | None = None) -> matrix._Row:
    from fabric.bench.matrix_rows import RowSpec

    b, _, v = key.partition("/")
    row = matrix._Row(RowSpec(b, v or "", kind, reference=reference))
    row.samples["tcp1_gbps"] = list(tcp1 or [])
    row.path = object()  # type: ignore[assignment]  # measured
    return row


def test_ratios_are_medians_of_same_round_ratios() -> None:
    under = _row(UNDERLAY, UNDERLAY, tcp1=[10.0, 5.0, 8.0])
    ref = _row("kernel-routed", "reference", tcp1=[9.0, 4.0, 8.0])
    hostgw = _row("hostgw/default", reference="kernel-routed", tcp1=[9.0, 5.0, math.nan])
    rows = [under, ref, hostgw]
    out = matrix._summary(hostgw, rows)
    # rounds 1-2 only (round 3 missed: NaN padding): 0.9 and 1.0 to the underlay
    assert out["ratio_to_underlay"] == pytest.approx(0.95)
    assert out["ratio_to_reference"] == pytest.approx((1.0 + 1.25) / 2)
    assert out["tcp1_gbps"] == 7.0 and out["tcp1_gbps_rounds"] == [9.0, 5.0]
    assert "tcp1_gbps" in out["metrics"] and out["error"] is None
    assert matrix._summary(under, rows)["ratio_to_reference"] is None


def test_backend_ratios_use_the_runs_paired_with_them() -> None:
    under = _row(UNDERLAY, UNDERLAY, tcp1=[10.0, 10.0])
    ref = _row("kernel-vxlan", "reference", tcp1=[9.0, 9.0])
    vx = _row("vxlan/default", reference="kernel-vxlan", tcp1=[4.0, 6.0])
    vx.paired = {"reference": [5.0, 6.0], "underlay": [math.nan, 8.0]}
    out = matrix._summary(vx, [under, ref, vx])
    assert out["ratio_to_reference"] == pytest.approx((0.8 + 1.0) / 2)
    assert out["ratio_to_underlay"] == pytest.approx(0.75)  # the missed pair drops its round
    assert out["paired_gbps_rounds"]["underlay"] == [None, 8.0]


def test_a_row_without_throughput_names_why() -> None:
    row = _row("vxlan/default", reference="kernel-vxlan")
    row.errors["tcp1"] = "iperf3 failed: boom"
    out = matrix._summary(row, [row])
    assert out["error"] == "no throughput measured: iperf3 failed: boom"


def _data() -> dict:
    return {"schema": matrix.SCHEMA, "quick": True, "settings": {"rounds": 2},
            "machine": {"cpus": 2, "kernel": "6.x", "loadavg_before": [1.0],
                        "loadavg_after": [2.0], "cpu_model": "cpu"},
            "duration_s": 10.0,
            "rows": [{"backend": UNDERLAY, "variant": "", "kind": UNDERLAY, "tcp1_gbps": 10.0,
                      "tcp4_gbps": 12.0, "rtt_p50_us": 20.0, "rtt_p99_us": 90.0,
                      "cpu_s_per_gb": 1.5, "errors": {}, "error": None},
                     {"backend": "kernel-routed", "variant": "", "kind": "reference",
                      "tcp1_gbps": 9.0, "cni_add_p50_ms": 10.0, "cni_plugin": "bridge+host-local",
                      "errors": {}, "error": None},
                     {"backend": "hostgw", "variant": "fastpath", "kind": "backend",
                      "reference": "kernel-routed", "tcp1_gbps": 9.5, "ratio_to_underlay": 0.95,
                      "ratio_to_reference": 1.05, "cni_add_p50_ms": 60.0, "agent_rss_mb": 50.0,
                      "errors": {"leave": "h3's routes still present after 20 s"},
                      "error": None},
                     {"backend": "nosuch", "variant": "default", "kind": "backend",
                      "errors": {}, "error": "unknown backend 'nosuch'"}]}


def test_markdown_table_rows_missing_values_and_errors() -> None:
    md = report.format_markdown(_data())
    lines = md.splitlines()
    assert any(line.startswith("| row | reference | TCP 1 Gbit/s") for line in lines)
    row = next(line for line in lines if line.startswith("| hostgw (fastpath) |"))
    assert "| kernel-routed | 9.50 |" in row and "| 0.95 | 1.05 |" in row
    assert "| nosuch **error** |" in md
    assert "- nosuch: row: unknown backend 'nosuch'" in md
    assert "- hostgw (fastpath): leave: h3's routes still present" in md
    assert "2 CPUs" in lines[0] and "quick run" in lines[0]


def test_plots_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    files = plots.write_plots(_data(), tmp_path)
    assert isinstance(files, list)
    for stem in ("throughput", "latency", "cpu", "cni"):
        assert f"{stem}.png" in files and f"{stem}.svg" in files
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (tmp_path / f"{stem}.svg").read_bytes()[:2000]
    # the reference plugin's CNI numbers are drawn once, under its own name
    assert plots._cni_rows(_data()["rows"][1:3])[0]["backend"] == "bridge+host-local"


def test_without_matplotlib_no_plots_and_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plots.write_plots(_data(), tmp_path) == plots.NO_MATPLOTLIB
    assert list(tmp_path.iterdir()) == []


def _fabric(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "fabric"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_report_regenerates_table_and_plots(tmp_path: Path) -> None:
    src = tmp_path / "results.json"
    src.write_text(json.dumps(_data()))
    out = tmp_path / "out"
    res = _fabric("bench", "report", str(src), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "| hostgw (fastpath) |" in res.stdout
    assert (out / "matrix.md").read_text() == res.stdout
    assert json.loads((out / "matrix.json").read_text())["rows"][2]["backend"] == "hostgw"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in res.stderr
    else:
        assert (out / "throughput.png").exists()


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"rows": 3}'])
def test_report_on_bad_input_says_what_to_pass(tmp_path: Path, content: str) -> None:
    src = tmp_path / "bad.json"
    src.write_text(content)
    res = _fabric("bench", "report", str(src))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "fabric bench matrix" in res.stderr  # the fix names what to pass


def test_matrix_cli_options() -> None:
    res = _fabric("bench", "matrix", "--help")
    assert res.returncode == 0
    for opt in ("--backends", "--quick", "--out", "--rounds"):
        assert opt in res.stdout
    assert matrix.SETTINGS["quick"]["rounds"] >= 2  # alternation needs two rounds
