"""Userspace TUN/TAP <-> UDP dataplane engine (GSO/GRO, batching, optional AEAD).

Public surface: :class:`Engine` and its config :class:`EngineConfig`, the
:class:`PeerTable` / :class:`MacTable` the control plane updates while traffic
flows, and :class:`KeyPair` for the encrypted L2 path. Wire formats:
``fabric.dataplane.l3`` (flannel udp: one inner IPv4 packet per datagram) and
``fabric.dataplane.l2`` (Ethernet super-frames, optionally sealed).
"""

from fabric.dataplane.crypto import KeyPair
from fabric.dataplane.engine import Engine, EngineConfig
from fabric.dataplane.peers import MacTable, PeerAddr, PeerTable
from fabric.dataplane.tun import unpersist

__all__ = ["Engine", "EngineConfig", "KeyPair", "MacTable", "PeerAddr", "PeerTable", "unpersist"]
