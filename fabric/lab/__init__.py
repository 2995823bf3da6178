"""Emulated hosts in network namespaces: ``with Lab(Topology("t1", "vxlan", hosts=3)) as lab``.

Names resolve lazily so `fabric` (which imports ``fabric.lab.cli``) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"Lab": "fabric.lab.lab", "Topology": "fabric.lab.topology",
          "LabError": "fabric.lab.netns", "teardown": "fabric.lab.cleanup",
          **{n: "fabric.lab.results" for n in (
              "HostInfo", "PodInfo", "ExecResult", "PingPair", "PingResult", "TcpResult",
              "IperfResult", "DownReport")}}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
