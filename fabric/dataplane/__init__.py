"""Userspace TUN/TAP <-> UDP dataplane engine (GSO/GRO, batching, optional AEAD).

Public surface: :class:`Engine` and its config :class:`EngineConfig`, the
:class:`PeerTable` / :class:`MacTable` the control plane updates while traffic
flows, and :class:`KeyPair` for the encrypted L2 path. Wire formats:
``fabric.dataplane.l3`` (flannel udp: one inner IPv4 packet per datagram) and
``fabric.dataplane.l2`` (Ethernet super-frames, optionally sealed; classic, or routed
with origin/dst peer names for weave sleeve: :class:`WeaveRoutes`, ``routed=True``).
:class:`PathHealth` is the socket-free heartbeat state machine behind
``Engine.peer_health()``.
"""

from fabric.dataplane.crypto import KeyPair
from fabric.dataplane.engine import Engine, EngineConfig
from fabric.dataplane.heartbeat import PathHealth
from fabric.dataplane.peers import MacTable, PeerAddr, PeerTable
from fabric.dataplane.routing import FLOOD, WeaveRoutes, name_bytes, name_text
from fabric.dataplane.tun import unpersist

__all__ = ["Engine", "EngineConfig", "FLOOD", "KeyPair", "MacTable", "PathHealth", "PeerAddr",
           "PeerTable", "WeaveRoutes", "name_bytes", "name_text", "unpersist"]
