"""Gossip API in the spirit of weaveworks/mesh: mergeable data and a receiver interface.

A :class:`Gossiper` (the receiver side) is registered on a router under a
channel name and gets back a :class:`GossipChannel` (the sender side)::

    channel = router.new_gossip("ipam", my_gossiper)
    channel.gossip(delta)            # relay a delta to a log-sized random neighbour subset
    channel.gossip_broadcast(data)   # reach every peer along broadcast trees
    channel.gossip_unicast(dst, b)   # reach one peer along unicast next hops

The router also sends each channel's full state (``Gossiper.gossip()``)
periodically and to every new neighbour, so lost deltas are repaired.
"""

from __future__ import annotations

import abc
from typing import Protocol

__all__ = ["GossipData", "Gossiper", "GossipChannel", "GossipSender"]


class GossipData(abc.ABC):
    """State that can be encoded and merged (a join-semilattice)."""

    @abc.abstractmethod
    def encode(self) -> bytes:
        """Serialise for the wire."""

    @abc.abstractmethod
    def merge(self, other: GossipData) -> GossipData:
        """Merge ``other`` into self and return self (the union)."""


class Gossiper(abc.ABC):
    """Receiver side of a channel; handlers run on the router's thread."""

    @abc.abstractmethod
    def gossip(self) -> GossipData | None:
        """The full state, for periodic gossip and new neighbours."""

    @abc.abstractmethod
    def on_gossip(self, sender: int, payload: bytes) -> GossipData | None:
        """Merge neighbour gossip; return what was new (relayed further), or None."""

    def on_gossip_broadcast(self, src: int, payload: bytes) -> GossipData | None:
        """Merge a broadcast from ``src``; return what was new."""
        return self.on_gossip(src, payload)

    def on_gossip_unicast(self, src: int, payload: bytes) -> None:
        """A message addressed to this peer."""


class GossipSender(Protocol):
    def _relay(self, channel: str, data: GossipData) -> None: ...
    def _broadcast(self, channel: str, payload: bytes) -> None: ...
    def _unicast(self, channel: str, dst: int, payload: bytes) -> bool: ...


class GossipChannel:
    """Sender side of a channel, bound to a router."""

    def __init__(self, router: GossipSender, name: str, gossiper: Gossiper) -> None:
        self.router = router
        self.name = name
        self.gossiper = gossiper

    def gossip(self, data: GossipData) -> None:
        self.router._relay(self.name, data)

    def gossip_broadcast(self, data: GossipData) -> None:
        self.router._broadcast(self.name, data.encode())

    def gossip_unicast(self, dst: int, payload: bytes) -> bool:
        """False when ``dst`` has no route now (the message is dropped and counted)."""
        return self.router._unicast(self.name, dst, payload)
