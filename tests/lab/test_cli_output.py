"""CLI output for long work: progress lines on stderr, stdout one JSON document only; a lab
may be called `bench` (the `fabric bench` shorthand no longer rewrites that argument)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.lab.lab_util import lab_namespaces, needs_root, stack_missing

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]
FABRIC = [sys.executable, "-m", "fabric.cli"]


def _fabric(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    return subprocess.run([*FABRIC, *argv], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_lab_up_named_bench_json_on_stdout_progress_on_stderr() -> None:
    if why := stack_missing("hostgw"):
        pytest.skip(why)
    if "bench" in _fabric("lab", "list").stdout.split():
        pytest.skip("a lab named bench exists on this machine")
    try:
        up = _fabric("lab", "up", "--backend", "hostgw", "--hosts", "2", "--name", "bench",
                     "--json")
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)  # nothing else on stdout
        assert doc["name"] == "bench" and doc["converged"] is True
        assert "lab bench: building 2 host(s), backend(s) hostgw" in up.stderr
        assert "waiting up to" in up.stderr
    finally:
        down = _fabric("lab", "down", "--name", "bench")
    assert down.returncode == 0, down.stdout + down.stderr
    assert lab_namespaces("bench") == []


def test_bench_json_on_stdout_progress_on_stderr() -> None:
    if why := stack_missing("hostgw"):
        pytest.skip(why)
    run = _fabric("bench", "--backend", "hostgw", "--repeat", "1", "--duration", "1",
                  "--no-reference", timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)  # the table goes to stderr, not here
    assert doc["ratio"] > 0
    assert "bench: round 1/1 pod:" in run.stderr and "bench: lab b" in run.stderr
