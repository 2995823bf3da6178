"""`fabric bench cni` end to end, small: a one-host lab, both plugins timed, JSON shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not os.access("/usr/lib/cni/bridge", os.X_OK),
                       reason="containernetworking-plugins (the reference) is not installed"),
]


@pytest.mark.parametrize("plugin", ["installed", "native"])
def test_bench_cni_prints_both_plugins_and_targets(tmp_path: Path, plugin: str) -> None:
    if plugin == "native" and shutil.which("cc") is None:
        pytest.skip("no C compiler for the native forwarder")
    fabric = str(Path(sys.executable).with_name("fabric"))
    out = tmp_path / "cni.json"
    proc = subprocess.run([fabric, "bench", "cni", "--pods", "3", "--concurrent", "3",
                           "--rounds", "1", "--name", "tcnib", "--plugin", plugin,
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data == json.loads(out.read_text())
    assert data["plugin"] == plugin
    for key in ("sequential p50", "3 concurrent p99"):
        row = data["summary"][key]
        assert row["fabric_ms"] > 0 and row["reference_ms"] > 0 and row["ratio"] > 0
    assert len(data["samples_ms"]["sequential"]["fabric"]) == 3
    assert len(data["samples_ms"]["concurrent"]["reference"]) == 3
    assert set(data["targets_met"]) == {"sequential_p50", "concurrent_p99"}
    assert data["phases_ms"]["agent cni.add (no exec)"] > 0
    assert "sequential p50" in proc.stderr  # the table
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "nfl-tcnib" not in leftover
