"""weave-sleeve: Weave Net's sleeve mode — every peer through the user-space overlay.

The shared weave machinery (mesh, ring IPAM hand-over, bridge, weaveDNS, operations) is
``fabric.weave.WeaveBackend``; this backend adds one data path, the sleeve
(``fabric.weave.sleeve``): the bridge's frames through a TAP into UDP ``DataPort`` (6783),
relayed over intermediate peers when two have no direct connection, sealed per hop when a
``PasswordFile`` is set. Options: see ``fabric.weave.options``.
"""

from __future__ import annotations

from typing import Any

from fabric.api import NetworkContext
from fabric.weave import Sleeve, WeaveBackend

__all__ = ["WeaveSleeveBackend"]


class WeaveSleeveBackend(WeaveBackend):
    name = "weave-sleeve"

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.sleeve = Sleeve(ctx, self.opts, self.control, self.bridge)

    def overlay_overhead(self) -> int:
        return self.sleeve.overhead

    def start_overlays(self) -> None:
        self.sleeve.start(self.mtu)

    def connection_modes(self) -> dict[int, str]:
        return self.sleeve.modes()

    def overlay_status(self) -> dict[str, Any]:
        return {"mode": "sleeve", "sleeve": self.sleeve.status(),
                "encryption_reason": "enabled: mesh sealed, sleeve frames sealed per hop"
                if self.opts.password else "disabled (no PasswordFile)"}

    def stop_overlays(self) -> None:
        self.sleeve.stop()

    def teardown_overlays(self) -> None:
        self.sleeve.teardown()
