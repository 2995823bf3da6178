"""What each weave peer tells the others about its data path, gossiped on channel ``weave``.

One record per peer, written only by that peer, versioned (highest version wins):
its underlay address, sleeve and fastdp UDP ports, the sleeve engine's static X25519
public key, the fastdp VXLAN device MAC. Records come from other nodes: each is
validated before use (:meth:`PeerInfo.from_wire`) and a bad one is dropped and counted,
never merged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import attrs

from fabric.mesh.gossip import GossipData, Gossiper
from fabric.mesh.wire import FrameError

__all__ = ["PeerInfo", "PeerInfoSet", "PeerInfoGossiper", "CHANNEL"]

CHANNEL = "weave"
MAX_RECORDS = 4096
MAX_PAYLOAD = 1 << 20


class BadRecord(ValueError):
    pass


def _mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise BadRecord(f"{text!r} is not a MAC address")
    raw = bytes(int(p, 16) for p in parts)
    if raw[0] & 1 or raw == bytes(6):
        raise BadRecord(f"{text!r} is not a unicast MAC address")
    return text.lower()


@attrs.frozen
class PeerInfo:
    name: int
    version: int
    ip: IPv4Address
    data_port: int
    fastdp_port: int = 0
    public_key: bytes = b""
    vtep_mac: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"v": self.version, "ip": str(self.ip), "dp": self.data_port,
                "fp": self.fastdp_port, "key": self.public_key.hex(), "vtep": self.vtep_mac}

    @classmethod
    def from_wire(cls, name: int, rec: Any, pod_cidr: IPv4Network | None = None) -> PeerInfo:
        """Validate one untrusted record (raises :class:`BadRecord`)."""
        if not isinstance(rec, dict):
            raise BadRecord("record is not a mapping")
        try:
            version, ip = rec["v"], IPv4Address(rec["ip"])
            dp, fp = rec["dp"], rec.get("fp", 0)
            key = bytes.fromhex(rec.get("key", ""))
            vtep = rec.get("vtep", "")
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRecord(f"malformed record: {exc}") from exc
        if not isinstance(version, int) or version < 0:
            raise BadRecord("bad version")
        if not (ip.is_global or ip.is_private) or ip.is_multicast or ip.is_loopback \
                or ip.is_unspecified or ip.is_link_local or ip == IPv4Address("255.255.255.255"):
            raise BadRecord(f"{ip} is not a unicast underlay address")
        if pod_cidr is not None and ip in pod_cidr:
            raise BadRecord(f"{ip} lies inside the pod network {pod_cidr}")
        for port in (dp, fp):
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise BadRecord(f"bad port {port!r}")
        if not dp:
            raise BadRecord("no data port")
        if key and len(key) != 32:
            raise BadRecord("public key is not 32 bytes")
        if not isinstance(vtep, str):
            raise BadRecord("bad vtep")
        return cls(name, version, ip, dp, fp, key, _mac(vtep) if vtep else "")


class PeerInfoSet(GossipData):
    def __init__(self, records: dict[int, PeerInfo] | None = None) -> None:
        self.records: dict[int, PeerInfo] = dict(records or {})

    def encode(self) -> bytes:
        return json.dumps({f"{n:012x}": r.to_wire() for n, r in self.records.items()},
                          separators=(",", ":")).encode()

    def merge(self, other: GossipData) -> PeerInfoSet:
        assert isinstance(other, PeerInfoSet)
        for name, rec in other.records.items():
            cur = self.records.get(name)
            if cur is None or rec.version > cur.version:
                self.records[name] = rec
        return self


class PeerInfoGossiper(Gossiper):
    """Receiver of channel ``weave``. Runs on the mesh thread; ``on_change`` after a merge."""

    def __init__(self, me: int, pod_cidr: IPv4Network | None = None,
                 my_ip: IPv4Address | None = None) -> None:
        self.me = me
        self.pod_cidr = pod_cidr
        self.my_ip = my_ip  # another peer claiming our underlay address is refused
        self.state = PeerInfoSet()
        self.rejected: dict[str, int] = {}
        self.on_change: list[Callable[[], None]] = []

    def decode(self, payload: bytes) -> PeerInfoSet:
        if len(payload) > MAX_PAYLOAD:
            raise FrameError("too-big", "weave peer info payload too large")
        try:
            raw = json.loads(payload)
        except ValueError as exc:
            raise FrameError("garbage", "weave peer info is not JSON") from exc
        if not isinstance(raw, dict) or len(raw) > MAX_RECORDS:
            raise FrameError("garbage", "weave peer info is not a mapping of records")
        out = PeerInfoSet()
        for key, rec in raw.items():
            try:
                name = int(key, 16)
                if not 0 < name < 1 << 48:
                    raise BadRecord("bad peer name")
                info = PeerInfo.from_wire(name, rec, self.pod_cidr)
                if name != self.me and info.ip == self.my_ip:
                    raise BadRecord(f"{info.ip} is this node's own underlay address")
                out.records[name] = info
            except (BadRecord, ValueError, TypeError) as exc:
                why = type(exc).__name__ if not isinstance(exc, BadRecord) else str(exc)
                if why not in self.rejected and len(self.rejected) >= 64:
                    why = "other"  # reasons carry values: bound what a hostile peer can add
                self.rejected[why] = self.rejected.get(why, 0) + 1
        return out

    def publish(self, info: PeerInfo) -> PeerInfoSet:
        """Our own record (a new version); returns the delta to gossip."""
        self.state.records[self.me] = info
        self._changed()
        return PeerInfoSet({self.me: info})

    def gossip(self) -> GossipData | None:
        return PeerInfoSet(self.state.records) if self.state.records else None

    def on_gossip(self, sender: int, payload: bytes) -> GossipData | None:
        incoming = self.decode(payload)
        own = incoming.records.pop(self.me, None)
        mine = self.state.records.get(self.me)
        if own is not None and mine is not None and own.version > mine.version:
            # an older incarnation of us is remembered with a higher version: outbid it
            self.state.records[self.me] = attrs.evolve(mine, version=own.version + 1)
            incoming.records[self.me] = self.state.records[self.me]
        delta = PeerInfoSet({n: r for n, r in incoming.records.items()
                             if n == self.me or (cur := self.state.records.get(n)) is None
                             or r.version > cur.version})
        if not delta.records:
            return None
        self.state.merge(delta)
        self._changed()
        return delta

    def _changed(self) -> None:
        for fn in list(self.on_change):
            fn()

    def get(self, name: int) -> PeerInfo | None:
        return self.state.records.get(name)
