"""Functional-tier fixtures (helpers live in the ``*_util`` modules next to this file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """Peers, nodes or processes the test started: each one's ``stop()`` runs afterwards."""
    made: list[Any] = []
    yield made
    for p in made:
        p.stop()
