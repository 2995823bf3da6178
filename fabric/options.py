"""Backend option checking (public API, re-exported by :mod:`fabric.api`): one place that
refuses options a backend does not know.

A backend parses its own ``backend_config`` block (the agent passes it through untouched);
this helper does the common first step, so a typo such as ``VNi`` fails at ``fabric up`` with
the same message shape in every backend instead of being silently ignored."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fabric.errors import ConfigError

__all__ = ["check_options"]


def check_options(cfg: Any, allowed: Iterable[str], backend: str) -> dict[str, Any]:
    """Return ``cfg`` as a dict after checking it holds only ``allowed`` keys (``Type``, the
    backend selector, is always allowed). ConfigError with ``field="backendConfig.<first
    unknown>"`` and the valid options as the fix; ``backend`` names the backend in the message."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{backend} backend: backendConfig must be a mapping, "
                          f"not {type(cfg).__name__}",
                          fix="give the options as key: value", field="backendConfig")
    valid = sorted(set(allowed) - {"Type"})
    unknown = sorted(str(k) for k in set(cfg) - set(valid) - {"Type"})
    if unknown:
        fix = (f"valid: {', '.join(valid)}" if valid
               else f"the {backend} backend takes no options besides Type")
        raise ConfigError(f"{backend} backend: unknown option(s) {', '.join(unknown)}",
                          fix=fix, field=f"backendConfig.{unknown[0]}")
    return dict(cfg)
