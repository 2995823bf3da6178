"""Unit-test fixtures shared across files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cni_common import Plugin


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    state = tmp_path / "state"
    state.mkdir()
    return Plugin(state)
