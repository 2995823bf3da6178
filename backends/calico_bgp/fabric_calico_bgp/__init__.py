"""netfabric ``calico-bgp`` backend: Calico's routed data path with exabgp BGP speakers.

Pods get a /32 on a routed veth (proxy ARP, default via 169.254.1.1), each node
blackholes its blocks (``blocks`` IPAM) and announces them over BGP with itself
as next hop; the agent installs what it learns. Encapsulation only where the
underlay cannot route pods (VXLAN Always/CrossSubnet; IPIP where the kernel has it).
"""

from fabric_calico_bgp.backend import CalicoBgpBackend
from fabric_calico_bgp.config import BgpConfig, parse_config
from fabric_calico_bgp.messages import MessageError, PeerState, RouteUpdate, parse_message

__all__ = [
    "CalicoBgpBackend",
    "BgpConfig",
    "parse_config",
    "parse_message",
    "MessageError",
    "PeerState",
    "RouteUpdate",
]
