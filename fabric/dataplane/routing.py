"""Weave-routed L2 forwarding table: peers by 6-byte name, learned MACs, unicast and flood routes.

The control plane (mesh glue) owns the topology and swaps it in copy-on-write: every
``set_*`` call builds a new immutable :class:`_Snapshot`, so the forwarding threads read one
consistent view per message without locks. MAC learning is data-path state: written by the
forwarding threads (plain dict stores, atomic under the GIL) and expired by the engine's timer.

Behaviour follows Weave Net's sleeve overlay: a frame's source MAC is learned against its
*origin* peer (the node whose bridge emitted it, carried in the header), never the neighbour
that relayed it; unknown unicast, broadcast and multicast are flooded along the broadcast
routes the mesh computes, so each peer gets one copy; a frame for another peer is relayed
towards it by next hop. The TTL guards loops while tables converge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Literal

from fabric.dataplane.l2 import FLOOD
from fabric.dataplane.peers import PeerAddr
from fabric.errors import ConfigError

__all__ = ["WeaveRoutes", "FLOOD", "name_bytes", "name_text"]

Target = tuple[PeerAddr, bytes]  # (next hop's address, dst name in the header)


def name_bytes(name: bytes | str) -> bytes:
    """A peer name as 6 bytes (weave peer names are MAC-like: ``aa:bb:cc:dd:ee:ff``)."""
    if isinstance(name, str):
        try:
            raw = bytes.fromhex(name.replace(":", ""))
        except ValueError:
            raw = b""
    else:
        raw = bytes(name)
    if len(raw) != 6 or raw == FLOOD:
        raise ConfigError(f"peer name {name!r} is not 6 bytes (aa:bb:cc:dd:ee:ff)",
                          fix="use the mesh's peer name", field="name")
    return raw


def name_text(name: bytes) -> str:
    return ":".join(f"{b:02x}" for b in name)


class _Snapshot:
    """One immutable view of the topology (built by the control plane, read by forwarding)."""

    __slots__ = ("neighbours", "by_source", "unicast", "next_hop", "flood", "targets",
                 "excluded", "mode", "no_deliver")

    def __init__(self, neighbours: dict[bytes, PeerAddr], unicast: dict[bytes, bytes],
                 flood: dict[bytes, tuple[bytes, ...]], targets: dict[bytes, tuple[bytes, ...]],
                 excluded: frozenset[bytes], mode: Literal["tree", "targets"],
                 no_deliver: frozenset[bytes] = frozenset()) -> None:
        self.neighbours = neighbours
        self.by_source = {p.ip: (name, p) for name, p in neighbours.items()}
        self.unicast = unicast
        self.excluded = excluded
        self.no_deliver = no_deliver
        self.mode = mode
        # next hop per destination: only via a neighbour, never to or via an excluded peer
        self.next_hop = {dst: neighbours[via] for dst, via in unicast.items()
                         if via in neighbours and dst not in excluded and via not in excluded}
        self.flood = flood
        self.targets = targets


class WeaveRoutes:
    """Routing table of one node of a weave-style L2 overlay (see the module docstring).

    ``local`` is this node's 6-byte peer name. Either flood rule may be chosen per table:
    :meth:`set_flood` (a broadcast tree: to whom this node sends a flood from each origin) or
    :meth:`set_flood_targets` (origin replication: one unicast copy per destination peer, for
    meshes where some peers are reached on another data path).
    """

    def __init__(self, local: bytes | str, *, mac_expiry: float = 600.0,
                 max_macs: int = 16384) -> None:
        if mac_expiry <= 0 or max_macs < 1:
            raise ConfigError("mac_expiry must be > 0 s and max_macs >= 1",
                              fix="weave's default expiry is 600 s")
        self.local = name_bytes(local)
        self.mac_expiry = mac_expiry
        self.max_macs = max_macs
        self._lock = threading.Lock()
        self._snap = _Snapshot({}, {}, {}, {}, frozenset(), "tree")
        # learned MACs: mac -> (origin name, last seen); local MACs: mac -> last seen
        self._macs: dict[bytes, tuple[bytes, float]] = {}
        self._local: dict[bytes, float] = {}
        self.version = 0

    # -- control plane (copy on write) --
    def _swap(self, **changes) -> None:
        old = self._snap
        fields = {"neighbours": old.neighbours, "unicast": old.unicast, "flood": old.flood,
                  "targets": old.targets, "excluded": old.excluded, "mode": old.mode,
                  "no_deliver": old.no_deliver}
        fields.update(changes)
        self._snap = _Snapshot(**fields)
        self.version += 1

    def set_neighbours(self, neighbours: Mapping[bytes, PeerAddr]) -> None:
        """Peers with a direct connection: datagrams go to and are accepted from them only."""
        table = {name_bytes(n): p for n, p in neighbours.items()}
        if self.local in table:
            raise ConfigError("this node cannot be its own neighbour", field="neighbours",
                              fix="leave the local peer out of the neighbour map")
        with self._lock:
            self._swap(neighbours=table)

    def set_unicast(self, routes: Mapping[bytes, bytes]) -> None:
        """Next hop per reachable peer (via == dst when direct); MACs of the others are dropped."""
        table = {name_bytes(d): name_bytes(v) for d, v in routes.items()}
        table.pop(self.local, None)
        with self._lock:
            self._swap(unicast=table)
            self._prune(set(table))

    def set_flood(self, tree: Mapping[bytes, Iterable[bytes]]) -> None:
        """Broadcast tree: origin -> the peers this node sends that origin's floods to."""
        table = {name_bytes(o): tuple(dict.fromkeys(name_bytes(c) for c in children))
                 for o, children in tree.items()}
        with self._lock:
            self._swap(flood=table, mode="tree")

    def set_flood_targets(self, targets: Mapping[bytes, Iterable[bytes]]) -> None:
        """Origin replication: origin -> every peer that gets its own unicast copy of a flood."""
        table = {name_bytes(o): tuple(dict.fromkeys(name_bytes(d) for d in dsts))
                 for o, dsts in targets.items()}
        with self._lock:
            self._swap(targets=table, mode="targets")

    def set_no_deliver(self, names: Iterable[bytes]) -> None:
        """Origins whose frames this node must not take from the sleeve (weave-fastdp: peers
        on the kernel path, so the bridge never learns their MACs behind the sleeve port).
        Relaying them to others is unaffected."""
        with self._lock:
            self._swap(no_deliver=frozenset(name_bytes(n) for n in names))

    def set_excluded(self, names: Iterable[bytes]) -> None:
        """Peers that never get sleeve copies (they are reached on the kernel fast path)."""
        with self._lock:
            self._swap(excluded=frozenset(name_bytes(n) for n in names))

    # -- reads --
    @property
    def flood_mode(self) -> str:
        return self._snap.mode

    @property
    def neighbours(self) -> dict[bytes, PeerAddr]:
        return dict(self._snap.neighbours)

    def by_source(self, ip: str) -> tuple[bytes, PeerAddr] | None:
        """(name, address) of the neighbour sending from ``ip``; None: not a neighbour."""
        return self._snap.by_source.get(ip)

    def next_hop(self, dst: bytes) -> PeerAddr | None:
        return self._snap.next_hop.get(dst)

    def __len__(self) -> int:
        return len(self._snap.neighbours)

    # -- forwarding decisions (hot path) --
    def tx_targets(self, dst_mac: bytes) -> tuple[Target, ...] | str:
        """Where a frame from the local bridge goes, or the drop reason.

        A known unicast MAC goes to its owner's next hop; anything else is flooded with
        origin = local along this table's flood rule.
        """
        snap = self._snap
        hit = self._macs.get(dst_mac)
        if hit is not None:
            owner = hit[0]
            via = snap.next_hop.get(owner)
            if via is not None:
                return ((via, owner),)
            return "excluded" if owner in snap.excluded else "no_route"
        if dst_mac in self._local:
            return "local_dst"  # the bridge sent us a frame for its own port
        return self._flood_out(snap, self.local, b"", self.local) or "no_peer"

    def _flood_out(self, snap: _Snapshot, origin: bytes, sender: bytes,
                   local: bytes) -> tuple[Target, ...]:
        if snap.mode == "tree":
            children = snap.flood.get(origin, ())
            nb, ex = snap.neighbours, snap.excluded
            return tuple((nb[c], FLOOD) for c in children
                         if c != sender and c != origin and c != local and c in nb
                         and c not in ex)
        if origin != local:  # origin replication: the origin sent everyone a copy already
            return ()
        hops = snap.next_hop
        return tuple((hops[d], d) for d in snap.targets.get(origin, ()) if d in hops)

    def rx_actions(self, sender: bytes, origin: bytes, dst: bytes,
                   ttl: int) -> tuple[bool, tuple[Target, ...], str]:
        """For a message from neighbour ``sender``: (deliver here, forward to, drop reason).

        The reason is set when something was not done: a message nobody takes, or copies not
        forwarded because the hop limit is reached.
        """
        local = self.local
        if origin == local:
            return False, (), "own_origin"  # our own frame came back: a loop
        snap = self._snap
        if dst == local:
            if origin in snap.no_deliver:
                return False, (), "kernel_path"
            return True, (), ""
        if dst == FLOOD:
            here = origin not in snap.no_deliver
            out = self._flood_out(snap, origin, sender, local)
            if out and ttl <= 1:
                return here, (), "ttl"
            return here, out, "" if here else "kernel_path"
        via = snap.next_hop.get(dst)
        if via is None:
            return False, (), "no_route"
        if via is snap.neighbours.get(sender):
            return False, (), "loop"  # tables still converging: never bounce a frame back
        if ttl <= 1:
            return False, (), "ttl"
        return False, ((via, dst),), ""

    # -- MAC learning (forwarding threads) --
    def learn(self, mac: bytes, origin: bytes, now: float | None = None) -> bool:
        """Record ``mac`` (a frame's source) as behind ``origin``; False: it is one of ours."""
        if mac[0] & 1:
            return True  # group addresses are never a source worth learning
        if mac in self._local:
            return False
        macs = self._macs
        hit = macs.get(mac)
        t = time.monotonic() if now is None else now
        if hit is None or hit[0] != origin or t - hit[1] > 1.0:  # refresh at most once a second
            if hit is None and len(macs) >= self.max_macs:
                self._make_room(t)
            macs[bytes(mac)] = (origin, t)
        return True

    def learn_local(self, mac: bytes, now: float | None = None) -> None:
        """A source MAC seen on the local bridge: ours from now on (a remote entry is dropped)."""
        if mac[0] & 1:
            return
        local = self._local
        t = time.monotonic() if now is None else now
        last = local.get(mac)
        if last is None or t - last > 1.0:
            if last is None:
                self._macs.pop(mac, None)
                if len(local) >= self.max_macs:
                    local.pop(next(iter(local)), None)
            local[bytes(mac)] = t

    def owner(self, mac: bytes) -> bytes | None:
        """The origin peer of a learned MAC, ``local`` for ours, None when unknown."""
        if mac in self._local:
            return self.local
        hit = self._macs.get(mac)
        return hit[0] if hit else None

    def _make_room(self, now: float) -> None:
        self.expire(now)
        macs = self._macs
        while len(macs) >= self.max_macs:  # still full: forget the least recently inserted
            macs.pop(next(iter(macs)), None)

    def expire(self, now: float | None = None) -> int:
        """Forget MACs not seen for ``mac_expiry`` seconds; returns how many went."""
        t = time.monotonic() if now is None else now
        gone = 0
        for table in (self._macs, self._local):
            for mac, entry in list(table.items()):
                seen = entry[1] if isinstance(entry, tuple) else entry
                if t - seen > self.mac_expiry and table.get(mac) == entry:
                    table.pop(mac, None)
                    gone += 1
        return gone

    def _prune(self, reachable: set[bytes]) -> None:
        for mac, (origin, seen) in list(self._macs.items()):
            if origin not in reachable and self._macs.get(mac) == (origin, seen):
                self._macs.pop(mac, None)

    def macs(self, now: float | None = None) -> list[dict]:
        """Learned MACs for status: mac, origin peer (or "local") and age in seconds."""
        t = time.monotonic() if now is None else now
        out = [{"mac": name_text(m), "origin": "local", "age": round(t - s, 1)}
               for m, s in list(self._local.items())]
        out += [{"mac": name_text(m), "origin": name_text(o), "age": round(t - s, 1)}
                for m, (o, s) in list(self._macs.items())]
        return out

    def status(self) -> dict:
        snap = self._snap
        return {
            "local": name_text(self.local),
            "neighbours": {name_text(n): f"{p.ip}:{p.port}" for n, p in snap.neighbours.items()},
            "unicast": {name_text(d): name_text(v) for d, v in snap.unicast.items()},
            "flood_mode": snap.mode,
            "excluded": sorted(name_text(n) for n in snap.excluded),
            "macs": {"remote": len(self._macs), "local": len(self._local),
                     "max": self.max_macs, "expiry": self.mac_expiry},
        }
