"""Built wheels in fresh venvs: what a user gets from `pip install`, not the editable tree.

``build_wheels`` builds wheels with the test venv's setuptools (no build isolation: no
download of build tools per project, 10 s for all of them instead of 80 s).
``fresh_venv`` makes a venv without system site-packages and installs wheels there; their
dependencies come from the package index pip is configured with, as for a user.
``lab_cycle`` drives `fabric lab up/exec/down` of such a venv (its own `fabric`, its
entry points), returning the `lab up --json` document.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BACKENDS = sorted(p.parent for p in (REPO / "backends").glob("*/pyproject.toml"))
EXAMPLE_MACVLAN = REPO / "examples" / "macvlan"


def _run(argv: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def project_name(project: Path) -> str:
    return tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"]


def entry_points(project: Path, group: str) -> set[str]:
    data = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    return set(data.get("entry-points", {}).get(group, {}))


# Not part of any distribution; build/ would leak stale files (setuptools never prunes it).
_SKIP = {".venv", ".git", "build", "dist", "tests", "backends", "examples", "docs", "scripts",
         "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis"}


def _clean_copy(project: Path, dest: Path) -> Path:
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n in _SKIP or n.endswith(".egg-info")}

    shutil.copytree(project, dest, ignore=ignore)
    return dest


def build_wheels(projects: Iterable[Path], out: Path) -> dict[str, Path]:
    """Wheels of ``projects`` (built from clean copies of their folders) in ``out``."""
    projects = list(projects)
    src = out / "src"
    copies = [_clean_copy(p, src / f"{i}-{p.name}") for i, p in enumerate(projects)]
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(out), *map(str, copies)])
    wheels: dict[str, Path] = {}
    for project in projects:
        name = project_name(project)
        found = sorted(out.glob(f"{name.replace('-', '_')}-*.whl"))
        assert found, f"no wheel of {name} in {out}"
        wheels[name] = found[-1]
    return wheels


def fresh_venv(path: Path, wheels: Iterable[Path | str]) -> Path:
    """A new venv at ``path`` with ``wheels`` (or requirement strings such as
    ``/x/netfabric-0.1.0-py3-none-any.whl[bgp]``) installed; returns its bin directory."""
    _run([sys.executable, "-m", "venv", str(path)])
    pip_install(path / "bin", *map(str, wheels))
    return path / "bin"


def pip_install(bin_dir: Path, *args: str) -> None:
    _run([str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", *args])


def run_in(bin_dir: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a console script of that venv (PATH starts with it, as when it is activated)."""
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return _run([str(bin_dir / argv[0]), *argv[1:]], timeout=timeout, env=env)


def plugins(bin_dir: Path) -> list[dict[str, str]]:
    return json.loads(run_in(bin_dir, "fabric", "plugins", "--json").stdout)


def lab_cycle(bin_dir: Path, name: str, backend: str, hosts: int = 2) -> dict[str, Any]:
    """`fabric lab up` (2 pods per host), every pod pings every other pod through
    `fabric lab exec`, `fabric lab down`. Returns the `lab up --json` document plus
    ``pings``: {"h1p1->h2p1": returncode, ...}."""
    try:
        up = run_in(bin_dir, "fabric", "lab", "up", "--backend", backend, "--hosts", str(hosts),
                    "--pods-per-host", "2", "--name", name, "--json", timeout=240)
        doc = json.loads(up.stdout)  # stdout is the JSON document alone
        pings: dict[str, int] = {}
        for src in doc["pods"]:
            for dst in doc["pods"]:
                if src is dst:
                    continue
                ip = dst["address"].split("/")[0]
                env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
                res = subprocess.run([str(bin_dir / "fabric"), "lab", "exec", "--name", name,
                                      src["name"], "--", "ping", "-c1", "-W2", ip],
                                     capture_output=True, text=True, timeout=60, env=env)
                pings[f"{src['name']}->{dst['name']}"] = res.returncode
        doc["pings"] = pings
        return doc
    finally:
        subprocess.run([str(bin_dir / "fabric"), "lab", "down", "--name", name],
                       capture_output=True, text=True, timeout=120)
