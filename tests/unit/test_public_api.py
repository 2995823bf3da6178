"""The public surface and the packaging promises, checked without root.

``fabric.__all__`` is the one list of stable names: each resolves, has its own docstring
and appears in docs/library.md; ``import fabric`` stays cheap. The core distribution
declares no test plugin and no unused or heavy dependency; `fabric --version` and the
`bench` shorthand behave; `make clean` only uses CLI flags that exist.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fabric
from fabric.cli import _normalise_argv, build_parser

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_all_is_the_lazy_table_and_every_name_resolves() -> None:
    assert fabric.__all__ == ["__version__", *fabric._WHERE]
    assert len(set(fabric.__all__)) == len(fabric.__all__)
    for name in fabric.__all__:
        assert getattr(fabric, name) is not None, name
    with pytest.raises(AttributeError):
        fabric.not_a_public_name  # noqa: B018


def test_every_public_class_and_function_has_its_own_docstring() -> None:
    undocumented = []
    for name in fabric.__all__:
        obj = getattr(fabric, name)
        if inspect.isclass(obj):
            doc = obj.__dict__.get("__doc__")  # its own, not a base class's
        elif inspect.isfunction(obj):
            doc = obj.__doc__
        else:
            continue  # constants and type aliases: described in docs/library.md
        if not doc:
            undocumented.append(name)
    assert undocumented == []


def test_library_doc_lists_every_public_name() -> None:
    doc = (REPO / "docs" / "library.md").read_text()
    listed = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", doc))
    assert [n for n in fabric.__all__ if n not in listed] == []


def test_import_fabric_is_cheap() -> None:
    code = ("import sys, fabric; print(sorted(m for m in ('fabric.api', 'fabric.lab', "
            "'fabric.plugins', 'attrs', 'pyroute2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_one_version_source() -> None:
    assert PYPROJECT["dynamic"] == ["version"] and "version" not in PYPROJECT
    assert md.version("netfabric") == fabric.__version__
    out = subprocess.run([sys.executable, "-m", "fabric.cli", "--version"], capture_output=True,
                         text=True)
    assert (out.returncode, out.stdout.strip()) == (0, f"fabric {fabric.__version__}")


def test_core_distribution_has_no_test_plugins_and_lean_dependencies() -> None:
    groups = PYPROJECT["entry-points"]
    assert all("fake" not in eps and "testing" not in str(eps) for eps in groups.values())
    assert "fabric.backends" not in groups  # every backend is its own distribution
    deps = " ".join(PYPROJECT["dependencies"]).lower()
    assert "pynacl" not in deps and "numpy" not in deps
    extras = PYPROJECT["optional-dependencies"]
    assert any(d.startswith("numpy") for d in extras["fast"])
    backend_dists = {tomllib.loads(p.read_text())["project"]["name"]
                     for p in (REPO / "backends").glob("*/pyproject.toml")}
    assert backend_dists <= set(extras["all"])
    assert (REPO / "fabric" / "py.typed").exists() and (REPO / "LICENSE").exists()
    fakes = {ep.dist.name for g in ("fabric.backends", "fabric.ipam")
             for ep in md.entry_points(group=g) if ep.name == "fake" and ep.dist}
    assert fakes <= {"netfabric-testplugins"}  # installed for tests only, never by the core


@pytest.mark.parametrize("argv, expected", [
    (["bench", "--backend", "vxlan"], ["bench", "throughput", "--backend", "vxlan"]),
    (["--log-level", "debug", "bench", "--backend", "x"],
     ["--log-level", "debug", "bench", "throughput", "--backend", "x"]),
    (["bench", "--help"], ["bench", "--help"]),
    (["up", "--name", "bench", "--backend", "vxlan"], ["up", "--name", "bench", "--backend",
                                                       "vxlan"]),
    (["lab", "up", "--name", "bench", "--backend", "vxlan"],
     ["lab", "up", "--name", "bench", "--backend", "vxlan"]),
    (["lab", "down", "--name", "bench"], ["lab", "down", "--name", "bench"]),
])
def test_bench_shorthand_only_for_the_command_word(argv: list[str], expected: list[str]) -> None:
    assert _normalise_argv(argv) == expected


def test_a_lab_or_network_named_bench_parses() -> None:
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(["lab", "up", "--backend", "vxlan", "--name",
                                              "bench"]))
    assert (args.name, args.backend) == ("bench", ["vxlan"])
    args = parser.parse_args(_normalise_argv(["up", "--name", "bench", "--backend", "vxlan",
                                              "--network", "10.9.0.0/16"]))
    assert (args.name, args.backend) == ("bench", "vxlan")


def test_make_clean_uses_flags_that_exist() -> None:
    make = (REPO / "Makefile").read_text()
    recipe = make[make.index("\nclean:"):]
    calls = re.findall(r"fabric (lab [a-z]+(?: --?[a-z-]+(?: \$\$\w+)?)*)", recipe)
    assert calls, recipe
    parser = build_parser()
    for call in calls:
        parser.parse_args(call.replace("$$lab", "x").split())  # exits 2 on an unknown flag


def test_example_backend_imports_only_the_stable_contract() -> None:
    """examples/macvlan stands for a third-party backend: from netfabric it may use only
    fabric.api and fabric.errors (the contract docs/writing-a-backend.md teaches)."""
    import ast

    used: set[str] = set()
    for path in (REPO / "examples" / "macvlan" / "fabric_example_macvlan").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used.update(a.name for a in node.names)
    assert {m for m in used if m.split(".")[0] == "fabric"} <= {"fabric.api", "fabric.errors"}


def test_every_plugin_method_states_its_contract() -> None:
    """fabric/api.py: each method of the three seams says which thread calls it, whether it may
    block, whether it is idempotent and what raising does (issue 17; Neutron's driver_api)."""
    import inspect

    from fabric.api import IPAM, Backend, PolicyEngine

    for cls in (Backend, IPAM, PolicyEngine):
        for name, fn in vars(cls).items():
            if name.startswith("_") and name != "__init__" or not callable(getattr(fn, "fget",
                                                                                  fn)):
                continue
            doc = (inspect.getdoc(getattr(fn, "fget", fn)) or "").lower()
            assert "thread" in doc, f"{cls.__name__}.{name}: which thread calls it?"
