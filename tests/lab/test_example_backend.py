"""The third-party backend in examples/macvlan, as a user gets it: its wheel built from the
example folder, installed next to the core wheel in a fresh venv, listed by that venv's
`fabric plugins`, and a 2-host lab with it (2 pods per host) passes pings between all pods.
Its own tests (examples/macvlan/tests) run here too, against the example's source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.lab_util import needs_root, stack_missing
from tests.wheelhouse import EXAMPLE_MACVLAN, REPO, build_wheels, fresh_venv, lab_cycle, plugins

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root, pytest.mark.timeout(900)]


def test_example_package_tests_pass() -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE_MACVLAN)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLE_MACVLAN / "tests")], capture_output=True, text=True,
                          env=env, cwd=EXAMPLE_MACVLAN, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout, proc.stdout[-500:]


def test_macvlan_wheel_in_a_fresh_venv_runs_a_lab(tmp_path: Path, lab_name: str) -> None:
    if why := stack_missing("hostgw"):  # the tools a lab needs (root, ip, ping, etcd)
        pytest.skip(why)
    wheels = build_wheels([REPO, EXAMPLE_MACVLAN], tmp_path / "wheels")
    bin_dir = fresh_venv(tmp_path / "venv", wheels.values())
    listed = plugins(bin_dir)
    assert [(p["kind"], p["name"], p["distribution"]) for p in listed if p["kind"] == "backend"] \
        == [("backend", "macvlan", "netfabric-example-macvlan")]

    doc = lab_cycle(bin_dir, lab_name, "macvlan")
    assert doc["converged"] is True, doc
    assert len(doc["pings"]) == 12 and set(doc["pings"].values()) == {0}, doc["pings"]
    hosts = {p["host"] for p in doc["pods"]}
    assert hosts == {"h1", "h2"}
