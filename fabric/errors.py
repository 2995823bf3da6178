"""The project's exception hierarchy.

Third-party exceptions (etcd client, pyroute2, exabgp, nft) are translated at the
boundary into these with ``raise ... from exc`` so callers only catch ours.
Every error carries a message a user can act on; ``fix`` says what to do.
"""

from __future__ import annotations

__all__ = [
    "FabricError",
    "ConfigError",
    "PluginError",
    "StoreError",
    "StoreUnavailable",
    "StoreCompacted",
    "StoreConflict",
    "IPAMError",
    "PoolExhausted",
    "BackendError",
    "KernelFeatureMissing",
    "AgentUnavailable",
    "NotFound",
    "PolicyError",
]


class FabricError(Exception):
    """Base of every error netfabric raises on purpose."""

    def __init__(
        self, message: str, *, fix: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.field = field  # the input field at fault, when one is (e.g. "network")

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class ConfigError(FabricError):
    """Bad configuration or argument; names the field that is wrong."""


class PluginError(FabricError):
    """A plugin could not be found, imported or chosen unambiguously."""


class StoreError(FabricError):
    """The datastore failed."""


class StoreUnavailable(StoreError):
    """The datastore cannot be reached; retry later."""


class StoreCompacted(StoreError):
    """A watch asked for a revision that was compacted; re-list and watch again."""

    def __init__(self, message: str, *, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class StoreConflict(StoreError):
    """A compare-and-swap lost a race."""


class IPAMError(FabricError):
    """Address management failed."""


class PoolExhausted(IPAMError):
    """No free subnet or address is left."""


class BackendError(FabricError):
    """A backend could not program the data path."""


class KernelFeatureMissing(BackendError):
    """The running kernel lacks a feature a backend needs (IPIP, GENEVE, ...)."""

    def __init__(self, feature: str, detail: str = "") -> None:
        msg = f"the running kernel lacks {feature}"
        if detail:
            msg += f": {detail}"
        fix = f"load or build kernel support for {feature}, or pick another mode"
        super().__init__(msg, fix=fix)
        self.feature = feature


class AgentUnavailable(FabricError):
    """The node agent's control socket is not answering."""


class NotFound(FabricError):
    """A named object (network, workload, policy, host) does not exist."""


class PolicyError(FabricError):
    """A policy is invalid or could not be applied; nothing was half-applied."""
