"""Built wheels, not the editable tree: the core wheel alone, then the core with every
backend's wheel, each in a fresh venv (no system site-packages, no test plugins).

The core alone: `fabric --version`, `fabric plugins` without `fake` and without numpy
(an extra), the typed marker and the licence in the wheel. Core + every backend,
pulled in by `netfabric[all]` from the built wheels: each backend's entry points listed
from its own distribution, and a 2-host vxlan lab (root) started by that venv's `fabric`
passes pings between all pods.
"""

from __future__ import annotations

import os
import secrets
import shutil
import zipfile
from pathlib import Path

import pytest

import fabric
from tests.wheelhouse import (
    BACKENDS,
    REPO,
    build_wheels,
    entry_points,
    fresh_venv,
    lab_cycle,
    pip_install,
    plugins,
    project_name,
    run_in,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_wheels([REPO, *BACKENDS], tmp_path_factory.mktemp("wheels"))


def test_core_wheel_alone(wheels: dict[str, Path], tmp_path: Path) -> None:
    core = wheels["netfabric"]
    names = zipfile.ZipFile(core).namelist()
    assert "fabric/py.typed" in names
    assert any(n.endswith(".dist-info/LICENSE") for n in names)
    assert not any(n.startswith(("fabric/testing", "fabric_testplugins")) for n in names)

    bin_dir = fresh_venv(tmp_path / "venv", [core])
    version = run_in(bin_dir, "fabric", "--version").stdout.split()
    assert version == ["fabric", fabric.__version__]
    listed = plugins(bin_dir)
    assert not [p for p in listed if p["name"] == "fake"], listed
    assert {p["name"] for p in listed if p["kind"] == "backend"} == set()  # each is its own dist
    assert {p["name"] for p in listed if p["kind"] == "ipam"} == {"subnet", "ring", "blocks"}
    assert all(p["distribution"] == "netfabric" for p in listed)
    # numpy is the `fast` extra; without it the data plane takes its pure-Python path
    probe = run_in(bin_dir, "python", "-c",
                   "import importlib.util as u, fabric.dataplane.gro as g, fabric;"
                   "print(u.find_spec('numpy') is None, g.available(), fabric.Lab.__name__,"
                   " u.find_spec('nacl') is None)")
    assert probe.stdout.split() == ["True", "False", "Lab", "True"]


@pytest.mark.root
@pytest.mark.lab
def test_every_backend_wheel_and_a_lab(wheels: dict[str, Path], tmp_path: Path) -> None:
    # the core with the extras that need an index, then `netfabric[all]` offline: every
    # backend must come from the wheels built here, pulled in by the `all` extra alone
    bin_dir = fresh_venv(tmp_path / "venv", [f"{wheels['netfabric']}[bgp,fast]"])
    pip_install(bin_dir, "--no-index", "--find-links", str(wheels["netfabric"].parent),
                "netfabric[all]")
    listed = plugins(bin_dir)
    assert not [p for p in listed if p["name"] == "fake"]
    for project in BACKENDS:
        mine = {p["name"] for p in listed if p["distribution"] == project_name(project)}
        assert mine == entry_points(project, "fabric.backends"), project

    if os.geteuid() != 0:
        pytest.skip("the lab part needs root (network namespaces)")
    for tool in ("etcd", "ping", "ip"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    doc = lab_cycle(bin_dir, f"w{secrets.token_hex(2)}", "vxlan")  # takes the lab down too
    assert doc["converged"] is True, doc
    assert len(doc["pings"]) == 12 and set(doc["pings"].values()) == {0}, doc["pings"]


@pytest.mark.root
@pytest.mark.lab
def test_userspace_backend_without_numpy(wheels: dict[str, Path], tmp_path: Path) -> None:
    """numpy is only the `fast` extra: flannel-udp's user-space data path runs without it."""
    if os.geteuid() != 0 or not shutil.which("etcd"):
        pytest.skip("needs root and etcd for a lab")
    bin_dir = fresh_venv(tmp_path / "venv", [wheels["netfabric"], wheels["netfabric-flannel-udp"]])
    probe = run_in(bin_dir, "python", "-c", "import importlib.util as u; "
                   "print(u.find_spec('numpy') is None)")
    assert probe.stdout.strip() == "True"
    doc = lab_cycle(bin_dir, f"w{secrets.token_hex(2)}", "flannel-udp")  # takes the lab down too
    assert doc["converged"] is True, doc
    assert set(doc["pings"].values()) == {0}, doc["pings"]
