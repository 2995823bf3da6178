"""PolicyEngine ``none``: every workload may talk to everything; no rules are created."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fabric.api import Endpoint, PolicyEngine

__all__ = ["AllowAllPolicy"]


class AllowAllPolicy(PolicyEngine):
    """Allow all traffic. Policies handed to it are kept (for list/explain), not enforced."""

    name: ClassVar[str] = "none"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._endpoints: dict[str, Endpoint] = {}
        self._policies: tuple[Any, ...] = ()

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self._endpoints[endpoint.workload.handle.key()] = endpoint

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._endpoints.pop(endpoint.workload.handle.key(), None)

    def set_policies(self, policies: Sequence[Any]) -> None:
        self._policies = tuple(policies)

    def status(self) -> dict[str, Any]:
        return {"engine": "none", "enforcing": False, "endpoints": len(self._endpoints),
                "policies": len(self._policies)}

    def teardown(self) -> None:
        self._endpoints.clear()
        self._policies = ()
