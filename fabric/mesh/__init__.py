"""Gossip mesh library in the manner of weaveworks/mesh.

``fabric.mesh.router.Router`` is transport-independent; ``fabric.mesh.tcp.MeshNode``
runs one on real TCP sockets (with optional password encryption) and
``fabric.mesh.sim.SimNet`` runs many in one process on a simulated network.
Gossip channels (``fabric.mesh.gossip``) carry mergeable state; the peer topology
(``fabric.mesh.topology``) is itself one. It is a leaf library:
nothing here imports the IPAM ring (``fabric.ipam.ring_*``), which stands on it.
"""

from fabric.mesh.gossip import GossipChannel, GossipData, Gossiper
from fabric.mesh.names import fmt_name, new_name, parse_name
from fabric.mesh.router import Router, RouterConfig

__all__ = ["GossipChannel", "GossipData", "Gossiper", "Router", "RouterConfig",
           "fmt_name", "new_name", "parse_name"]
