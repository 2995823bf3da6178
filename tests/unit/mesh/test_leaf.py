"""Code health of the mesh library: leaf imports, one gossiper per channel."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fabric.errors import ConfigError
from fabric.mesh.router import TOPOLOGY

from .helpers import allocators, build


def test_mesh_imports_nothing_of_the_ipam() -> None:
    code = ("import sys, fabric.mesh, fabric.mesh.tcp, fabric.mesh.sim, fabric.mesh.status; "
            "print(sorted(m for m in sys.modules if m.startswith(('fabric.ipam', "
            "'fabric.agent', 'fabric.lab', 'fabric.weave'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_duplicate_channel_is_refused() -> None:
    _net, routers = build(1, edges=[])
    allocators(routers)
    with pytest.raises(ConfigError, match="already registered"):
        allocators(routers)  # a second ring on the same router
    with pytest.raises(ConfigError):
        routers[0].new_gossip(TOPOLOGY, routers[0].channels[TOPOLOGY].gossiper)
