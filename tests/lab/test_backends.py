"""One lab test body, run against every installed backend (except `fake`): see
tests/lab/every_backend.py for what it checks."""

from __future__ import annotations

import pytest

from tests.lab.every_backend import backend_in_lab
from tests.lab.lab_util import installed_backends, needs_root

pytestmark = [pytest.mark.root, pytest.mark.lab, needs_root]


@pytest.mark.parametrize("backend", installed_backends())
def test_backend_in_lab(backend: str, lab_name: str) -> None:
    backend_in_lab(backend, lab_name)
