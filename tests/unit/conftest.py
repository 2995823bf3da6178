"""Unit-test fixtures shared across files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric_testplugins.fake import reset_fake_cluster
from tests.unit.cni_common import Plugin


@pytest.fixture(autouse=True)
def _clean_fake_cluster():
    """Every unit test starts and ends with an empty in-memory fake cluster."""
    reset_fake_cluster()
    yield
    reset_fake_cluster()


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    state = tmp_path / "state"
    state.mkdir()
    return Plugin(state)
