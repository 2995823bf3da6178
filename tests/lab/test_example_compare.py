"""examples/compare.py, the library example: two backends from Python, typed results,
the comparison as one JSON document on stdout (progress on stderr), nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab.lab_util import lab_namespaces, needs_root, stack_missing
from tests.wheelhouse import REPO

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]


def test_compare_two_backends_from_python(lab_name: str) -> None:
    for backend in ("vxlan", "hostgw"):
        if why := stack_missing(backend):
            pytest.skip(why)
    prefix = lab_name[:6]  # compare.py names its labs PREFIX0, PREFIX1
    try:
        proc = subprocess.run([sys.executable, str(REPO / "examples" / "compare.py"),
                               "--backends", "vxlan,hostgw", "--seconds", "1", "--name", prefix,
                               "--json"], capture_output=True, text=True, timeout=400)
    finally:
        for i in (0, 1):
            subprocess.run([sys.executable, "-m", "fabric.cli", "lab", "down", "--name",
                            f"{prefix}{i}"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the JSON document alone
    rows = {r["backend"]: r for r in doc["results"]}
    assert set(rows) == {"vxlan", "hostgw"}
    for row in rows.values():
        assert row["ping_ok"] and row["ping"] == "2/2 ok", row
        assert row["rtt_ms"] is not None and row["rtt_ms"] > 0
        assert row["gbps"] is None or row["gbps"] > 0
    assert "[2/2] hostgw" in proc.stderr
    assert lab_namespaces(f"{prefix}0") == [] and lab_namespaces(f"{prefix}1") == []
