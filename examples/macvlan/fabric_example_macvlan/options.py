"""The backend's own config block (``backendConfig`` / ``--backend-opt``), checked up front.

A backend parses and validates its options itself: the agent passes the block through
untouched, so a typo must fail here, at ``fabric up``, with the field and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from fabric.api import check_options
from fabric.errors import ConfigError

__all__ = ["MODES", "MacvlanOptions"]

# Kernel macvlan modes that let two pods of one node talk to each other and to other
# nodes. "private" blocks same-node pods and "passthru" allows one pod per parent: refused.
MODES = ("bridge", "vepa")


@attrs.frozen
class MacvlanOptions:
    """``Mode``: bridge (default; same-node pods switch inside the kernel) or vepa
    (every frame goes out to the switch, which must hairpin it)."""

    mode: str = "bridge"

    @classmethod
    def parse(cls, block: Mapping[str, Any]) -> MacvlanOptions:
        check_options(block, {"Mode"}, "macvlan")
        mode = block.get("Mode", "bridge")
        if mode not in MODES:
            raise ConfigError(f"macvlan backend: Mode {mode!r} is not supported",
                              fix=f"use one of {', '.join(MODES)}", field="backendConfig.Mode")
        return cls(mode=mode)
