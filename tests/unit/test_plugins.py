"""Plugin discovery and loading: listings, and one clear error for each failure."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from fabric.api import Backend
from fabric.errors import PluginError
from fabric.plugins import known_names, list_plugins, load_plugin


def test_builtin_and_backend_distributions_are_listed() -> None:
    plugins = {(p.kind, p.name): p for p in list_plugins()}
    assert plugins[("backend", "vxlan")].distribution == "netfabric-vxlan"
    assert plugins[("backend", "hostgw")].distribution == "netfabric-hostgw"
    assert plugins[("ipam", "subnet")].distribution == "netfabric"
    assert plugins[("policy", "none")].distribution == "netfabric"


def test_load_returns_backend_class() -> None:
    cls = load_plugin("backend", "vxlan")
    assert issubclass(cls, Backend) and cls.name == "vxlan"


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(PluginError) as err:
        load_plugin("backend", "no-such-backend")
    msg = str(err.value)
    assert "no-such-backend" in msg
    for name in known_names("backend"):
        assert name in msg
    assert "\n" not in msg


def test_unknown_kind() -> None:
    with pytest.raises(PluginError, match="unknown plugin kind"):
        load_plugin("frobnicator", "x")


def _fake_dist(root: Path, dist: str, entry: str, module: str, body: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fabric.backends]\n{entry} = {module}:Plugin\n")


@pytest.fixture
def extra_path(tmp_path: Path):
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for mod in [m for m in sys.modules if m.startswith("nftest_")]:
            del sys.modules[mod]


def test_plugin_that_fails_to_import_is_named(extra_path: Path) -> None:
    _fake_dist(extra_path, "broken_backend", "broken", "nftest_broken",
               "import nonexistent_module_for_test\n")
    with pytest.raises(PluginError) as err:
        load_plugin("backend", "broken")
    msg = str(err.value)
    assert "broken" in msg and "broken_backend" in msg and "nonexistent_module_for_test" in msg
    assert err.value.fix


def test_two_plugins_with_one_name_conflict(extra_path: Path) -> None:
    body = """
    from fabric_testplugins.fake import FakeBackend as Plugin
    """
    (extra_path / "a").mkdir()
    (extra_path / "b").mkdir()
    _fake_dist(extra_path / "a", "dup_one", "dupname", "nftest_dup1", body)
    _fake_dist(extra_path / "b", "dup_two", "dupname", "nftest_dup2", body)
    sys.path[1:1] = [str(extra_path / "a"), str(extra_path / "b")]
    try:
        with pytest.raises(PluginError) as err:
            load_plugin("backend", "dupname")
    finally:
        sys.path.remove(str(extra_path / "a"))
        sys.path.remove(str(extra_path / "b"))
    assert "dup_one" in str(err.value) and "dup_two" in str(err.value)


def test_entry_point_that_is_not_a_backend(extra_path: Path) -> None:
    _fake_dist(extra_path, "wrong_type", "wrongtype", "nftest_wrong", "Plugin = object\n")
    with pytest.raises(PluginError, match="not a fabric.api.Backend subclass"):
        load_plugin("backend", "wrongtype")
