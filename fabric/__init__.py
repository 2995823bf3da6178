"""netfabric: a pluggable multi-backend container network fabric.

The stable public names are listed in ``__all__`` (and in docs/library.md); each
resolves lazily from the module that defines it, so ``import fabric`` stays cheap for
`fabric-cni`, which a runtime starts per pod. Every other module is internal and may
change between releases, except what a backend author imports from ``fabric.api``
and ``fabric.errors``.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # `typing` costs ~3 ms: fabric-cni, started per pod, imports this

# The one version source: pyproject.toml reads it (setuptools dynamic version).
__version__ = "0.1.0"

_API = ("Backend", "IPAM", "PolicyEngine", "Node", "Peer", "PeerEvent", "Handle", "Allocation",
        "Workload", "Route", "Endpoint", "Capabilities", "NetworkSpec", "NetworkContext",
        "PeersCallback", "ChunksCallback", "NODE_CONTAINER_ID")
_ERRORS = ("FabricError", "ConfigError", "PluginError", "StoreError", "StoreUnavailable",
           "StoreCompacted", "StoreConflict", "IPAMError", "PoolExhausted", "BackendError",
           "KernelFeatureMissing", "AgentUnavailable", "NotFound", "PolicyError")
_LAB = ("Lab", "Topology", "LabError", "teardown", "HostInfo", "PodInfo", "ExecResult",
        "PingPair", "PingResult", "TcpResult", "IperfResult", "DownReport")
_PLUGINS = ("PluginInfo", "list_plugins", "load_plugin", "known_names")

_WHERE: dict[str, str] = {
    **dict.fromkeys(_API, "fabric.api"),
    **dict.fromkeys(_ERRORS, "fabric.errors"),
    **dict.fromkeys(_LAB, "fabric.lab"),
    **dict.fromkeys(_PLUGINS, "fabric.plugins"),
}

# The stable public names (literal, for checkers; test_public_api keeps it equal to _WHERE)
__all__ = [
    "__version__", "Backend", "IPAM", "PolicyEngine", "Node", "Peer", "PeerEvent", "Handle",
    "Allocation", "Workload", "Route", "Endpoint", "Capabilities", "NetworkSpec", "NetworkContext",
    "PeersCallback", "ChunksCallback", "NODE_CONTAINER_ID", "FabricError", "ConfigError",
    "PluginError", "StoreError", "StoreUnavailable", "StoreCompacted", "StoreConflict",
    "IPAMError", "PoolExhausted", "BackendError", "KernelFeatureMissing", "AgentUnavailable",
    "NotFound", "PolicyError", "Lab", "Topology", "LabError", "teardown", "HostInfo", "PodInfo",
    "ExecResult", "PingPair", "PingResult", "TcpResult", "IperfResult", "DownReport", "PluginInfo",
    "list_plugins", "load_plugin", "known_names",
]

if TYPE_CHECKING:  # what checkers and IDEs see; at run time __getattr__ imports on first use
    from typing import Any

    from fabric.api import (
        IPAM,
        NODE_CONTAINER_ID,
        Allocation,
        Backend,
        Capabilities,
        ChunksCallback,
        Endpoint,
        Handle,
        NetworkContext,
        NetworkSpec,
        Node,
        Peer,
        PeerEvent,
        PeersCallback,
        PolicyEngine,
        Route,
        Workload,
    )
    from fabric.errors import (
        AgentUnavailable,
        BackendError,
        ConfigError,
        FabricError,
        IPAMError,
        KernelFeatureMissing,
        NotFound,
        PluginError,
        PolicyError,
        PoolExhausted,
        StoreCompacted,
        StoreConflict,
        StoreError,
        StoreUnavailable,
    )
    from fabric.lab.cleanup import teardown
    from fabric.lab.lab import Lab
    from fabric.lab.netns import LabError
    from fabric.lab.results import (
        DownReport,
        ExecResult,
        HostInfo,
        IperfResult,
        PingPair,
        PingResult,
        PodInfo,
        TcpResult,
    )
    from fabric.lab.topology import Topology
    from fabric.plugins import PluginInfo, known_names, list_plugins, load_plugin


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fabric' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
