"""Lab-tier fixtures (helpers live in lab_util.py and weave_util.py next to this file)."""

from __future__ import annotations

import secrets

import pytest

from fabric.lab.topology import STATE_ROOT
from tests.lab.lab_util import lab_namespaces


@pytest.fixture
def lab_name() -> str:
    """A unique short lab name; the lab is taken down afterwards whatever happened."""
    name = f"t{secrets.token_hex(2)}"
    yield name
    from fabric.lab.cleanup import teardown

    teardown(name)
    assert lab_namespaces(name) == []
    assert not (STATE_ROOT / name).exists()
