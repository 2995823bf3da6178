"""Gossip mesh library in the manner of weaveworks/mesh.

``fabric.mesh.router.Router`` is transport-independent; ``fabric.mesh.tcp.MeshNode``
runs one on real TCP sockets (with optional password encryption) and
``fabric.mesh.sim.SimNet`` runs many in one process on a simulated network.
Gossip channels (``fabric.mesh.gossip``) carry mergeable state; the peer topology
(``fabric.mesh.topology``) is itself one. The IPAM ring lives in
``fabric.ipam.ring_*`` on top of it; ``fabric.mesh.status`` renders both.
"""

from fabric.mesh.gossip import GossipChannel, GossipData, Gossiper
from fabric.mesh.names import fmt_name, new_name, parse_name
from fabric.mesh.router import Router, RouterConfig

__all__ = ["GossipChannel", "GossipData", "Gossiper", "Router", "RouterConfig",
           "fmt_name", "new_name", "parse_name"]
