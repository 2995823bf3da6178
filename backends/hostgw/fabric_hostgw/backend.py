"""host-gw backend: route ``peer-subnet via peer-PublicIP`` on the underlay, no encapsulation.

Needs every peer on the node's L2 segment (flannel's host-gw rule): a peer
reachable only through a router is refused with a message and shown in status.
One option: ``FastPath`` (default false), the eBPF forwarding fast path of
``fabric.net.fastpath`` on the pod veths and the underlay interface.
"""

from __future__ import annotations

from fabric.api import Capabilities, NetworkContext, Peer, check_options
from fabric.bridged import BridgeBackend, route_is_direct
from fabric.errors import BackendError
from fabric.net import replace_route

__all__ = ["HostGwBackend"]


class HostGwBackend(BridgeBackend):
    name = "hostgw"
    default_ipam = "subnet"
    capabilities = Capabilities(needs_l2=True)

    def __init__(self, ctx: NetworkContext) -> None:
        super().__init__(ctx)
        check_options(ctx.spec.backend_config, {"FastPath"}, "hostgw")

    @property
    def mtu(self) -> int:
        return self.ctx.node.mtu

    def program_peer(self, peer: Peer, subnet) -> None:
        if not route_is_direct(peer.public_ip):
            raise BackendError(
                f"peer {peer.public_ip} is not on this node's L2 segment "
                f"({self.ctx.node.iface}); host-gw needs all nodes on one segment",
                fix="use the vxlan backend (or vxlan with DirectRouting) across segments",
            )
        replace_route(subnet, gateway=peer.public_ip, dev=self.ctx.node.iface,
                      within=self.ctx.spec.cidr)
