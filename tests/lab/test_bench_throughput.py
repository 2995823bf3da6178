"""`fabric bench --backend NAME`: JSON shape and consistency (no timed pass/fail)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.lab.lab_util import needs_root, stack_missing

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]


def test_bench_prints_json_and_table(tmp_path) -> None:
    if why := stack_missing("vxlan"):
        pytest.skip(why)
    out = tmp_path / "bench.json"
    res = subprocess.run(["fabric", "bench", "--backend", "vxlan", "--duration", "1",
                          "--repeat", "2", "--pin", "one", "--json", str(out)],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert json.loads(out.read_text()) == data
    assert data["backend"] == "vxlan" and data["target_ratio"] == 0.85
    assert data["underlay_gbps"] > 0 and data["pod_gbps"] > 0
    kinds = [(r["run"], r["kind"]) for r in data["runs"]]
    assert kinds == [(1, "underlay"), (1, "pod"), (2, "pod"), (2, "underlay")]
    assert len(data["ratio_per_round"]) == 2
    assert min(data["ratio_per_round"]) <= data["ratio"] <= max(data["ratio_per_round"])
    assert data["pod_mtu"] == 1450  # vxlan: 50 bytes of encapsulation under 1500
    assert data["meets_target"] == (data["ratio"] >= 0.85)
    assert "pod/underlay" in res.stderr  # the table
    assert data["pin"] == "one" and data["pinned_cpus"] == [0, 0]  # both ends on CPU 0
