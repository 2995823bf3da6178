"""weave-fastdp: Weave Net's fast datapath — the kernel encapsulates, sleeve where it cannot.

Same control plane as weave-sleeve (``fabric.weave.WeaveBackend``: mesh, ring IPAM, bridge,
weaveDNS, operations). Data paths: ``fabric.weave.fastdp.FastDP`` (a VXLAN device on UDP
``FastdpPort`` 6784, an isolated port of the node bridge, flood entries per peer, MACs
learned by the kernel) and ``fabric.weave.sleeve.Sleeve`` for every peer whose fastdp path
is not established — decided per peer by heartbeats over the fastdp path itself, switched
within ``3 x HeartbeatInterval`` — and for every peer when a password is set (this kernel
has no ESP; status and the log say so).
"""

from __future__ import annotations

from typing import Any

from fabric.api import Capabilities, NetworkContext
from fabric.weave import Sleeve, WeaveBackend
from fabric.weave.fastdp import VXLAN_OVERHEAD, FastDP

__all__ = ["WeaveFastdpBackend"]


class WeaveFastdpBackend(WeaveBackend):
    name = "weave-fastdp"
    # pod traffic to fastdp peers never passes the agent: it outlives an agent restart
    capabilities = Capabilities(encryption=True, multicast=True, userspace=False)

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        self.sleeve = Sleeve(ctx, self.opts, self.control, self.bridge)
        self.fastdp = FastDP(ctx, self.opts, self.control, self.bridge, self.sleeve)

    def overlay_overhead(self) -> int:
        # Fixed at ADD for the pod's lifetime: any peer may fall back to sleeve later.
        return max(VXLAN_OVERHEAD, self.sleeve.overhead)

    def start_overlays(self) -> None:
        self.sleeve.start(self.mtu)
        self.fastdp.start(self.mtu)

    def connection_modes(self) -> dict[int, str]:
        return {**self.sleeve.modes(), **self.fastdp.modes()}

    def overlay_status(self) -> dict[str, Any]:
        if self.opts.password:
            reason = f"enabled (sleeve only): {self.fastdp.reason}"
        else:
            reason = "disabled (no PasswordFile)"
        return {"mode": "fastdp" if self.fastdp.enabled else "sleeve",
                "fastdp": self.fastdp.status(), "sleeve": self.sleeve.status(),
                "encryption_reason": reason}

    def stop_overlays(self) -> None:
        self.fastdp.stop()
        self.sleeve.stop()

    def teardown_overlays(self) -> None:
        self.fastdp.teardown()
        self.sleeve.teardown()
